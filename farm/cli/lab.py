"""`farm lab up|down`: the virtual device lab (phones over the real adb server, boards over real sshd)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import click

from farm.paths import cache_dir


def _default_dir() -> Path:
    return cache_dir("lab")


@click.group("lab")
def command() -> None:
    """Virtual phones and boards for trying farm without hardware."""


@command.command("up")
@click.option("--phones", default=2, show_default=True, help="Virtual phones (Pixel 8, Galaxy S24, ...).")
@click.option("--boards", default=1, show_default=True,
              help="Virtual boards and hosts over ssh (Jetson Orin Nano, Pi 5, Jetson AGX Orin, x86 host).")
@click.option("--all-profiles", is_flag=True,
              help="One virtual device for each shipped profile in device_profiles/ (overrides --phones/--boards).")
@click.option("--dir", "root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Lab directory (sandboxes, keys, devices.yaml). Default: the farm cache.")
def up(phones: int, boards: int, all_profiles: bool, root: Path | None) -> None:
    """Start the lab and stay in the foreground until Ctrl-C."""
    from farm.lab import Lab

    root = root or _default_dir()
    with Lab.every_profile(root) if all_profiles else Lab(root, phones=phones, boards=boards) as lab:
        for dev in lab.devices():
            where = dev.transport.get("serial") or f"{dev.transport.get('user')}@127.0.0.1:{dev.port}"
            click.echo(f"{dev.name:8} lab-{dev.base_profile:18} {dev.transport['kind']:4} {where}")
        if lab.adb_port:
            click.echo(f"adb server: adb -P {lab.adb_port} devices   (HOME={root / 'adb-home'})")
        click.echo(f"inventory: {lab.inventory_path}")
        click.echo(f"try: FARM_DEVICES={lab.inventory_path} farm submit jobs/smoke.yaml    (Ctrl-C stops)")
        stop = []
        signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
        try:
            while not stop:
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
    click.echo("lab stopped")


@command.command("down")
@click.option("--dir", "root", type=click.Path(file_okay=False, path_type=Path), default=None)
def down(root: Path | None) -> None:
    """Stop a lab started by `farm lab up` in another shell (by pid, from its lab.json)."""
    from farm.lab.lab import stop_lab

    n = stop_lab(root or _default_dir())
    click.echo(f"stopped {n} lab processes" if n else "no lab running there")
