"""`farm devices`: what the inventory holds and how each device is; `check` quarantines the sick."""

from __future__ import annotations

import click
from rich.table import Table

from farm.cli._common import console, db_option, devices_option, open_store, styled


def _health_all(devices_path: str | None, names: tuple[str, ...]):  # -> list[(entry, profile, Health)]
    from concurrent.futures import ThreadPoolExecutor

    from farm.agent.devices import DevicePool
    from farm.agent.health import Check, Health, check_device
    from farm.devices import load_inventory
    from farm.errors import FarmError

    inventory = load_inventory(devices_path)
    pool = DevicePool(inventory)
    entries = [d for d in inventory.devices if not names or d.name in names]

    def one(entry):  # type: ignore[no-untyped-def]
        profile = pool.profile(entry.name)
        try:
            return entry, profile, check_device(entry, profile, pool.transport(entry.name))
        except FarmError as exc:  # e.g. the transport cannot even be opened
            return entry, profile, Health(entry.name, [Check("reachable", False, str(exc))])

    try:
        with ThreadPoolExecutor(max_workers=8) as ex:  # a shelf of phones is checked in parallel
            return list(ex.map(one, entries))
    finally:
        pool.close()


@click.group("devices", invoke_without_command=True)
@db_option
@devices_option
@click.pass_context
def command(ctx: click.Context, db_url: str | None, devices_path: str | None) -> None:
    """List devices: online/offline, fingerprint, battery, temperature, quarantine."""
    ctx.ensure_object(dict)
    ctx.obj.update(db_url=db_url, devices_path=devices_path)
    if ctx.invoked_subcommand is not None:
        return
    store = open_store(db_url)
    stored = {d.name: d for d in store.devices()}
    table = Table()
    for col in ("device", "profile", "transport", "state", "model", "abi", "battery", "temp °C", "note"):
        table.add_column(col)
    for entry, _profile, health in _health_all(devices_path, ()):
        reachable = health.checks[0].ok
        fp = health.info.get("fingerprint", {})
        if reachable:
            store.upsert_device(entry.name, entry.profile, entry.transport.kind, fingerprint=fp, health=health.info)
        row = stored.get(entry.name)
        state = "quarantined" if row is not None and row.status == "quarantined" else (
            "online" if reachable else "offline")
        note = (row.quarantine_reason or "") if state == "quarantined" else ("" if reachable else health.reason)
        batt = health.info.get("battery_pct")
        temp = health.info.get("temp_c")
        table.add_row(entry.name, entry.profile, entry.transport.kind, state, str(fp.get("model", "")),
                      str(fp.get("abi", "")), "-" if batt is None else f"{batt}%",
                      "-" if temp is None else f"{temp:.1f}", note[:80])
    console.print(table)


@command.command("check")
@click.argument("names", nargs=-1)
@click.pass_context
def check_cmd(ctx: click.Context, names: tuple[str, ...]) -> None:
    """Run health checks (reachable, storage, battery, temperature); quarantine failing devices."""
    store = open_store(ctx.obj["db_url"])
    failed = 0
    for entry, _profile, health in _health_all(ctx.obj["devices_path"], names):
        store.upsert_device(entry.name, entry.profile, entry.transport.kind,
                            fingerprint=health.info.get("fingerprint"), health=health.info)
        for c in health.checks:
            mark = "[green]ok[/]" if c.ok else "[red]FAIL[/]"
            console.print(styled("{name:<16} {check:<12} " + mark + "  {detail}", name=entry.name, check=c.name,
                                 detail=c.detail))
        if not health.ok:
            failed += 1
            store.set_device_status(entry.name, "quarantined", health.reason)
            console.print(styled("{name:<16} [bold red]quarantined[/]: {reason}", name=entry.name,
                                 reason=health.reason))
    if failed:
        ctx.exit(1)


@command.command("release")
@click.argument("name")
@click.pass_context
def release_cmd(ctx: click.Context, name: str) -> None:
    """Take a device out of quarantine."""
    open_store(ctx.obj["db_url"]).set_device_status(name, "online")
    console.print(f"{name}: online")
