"""The path a new user takes, on one virtual device for EACH shipped profile, with the shipped defaults.

pixel-8 and galaxy-s24 are virtual phones behind the lab's real adb server; jetson-orin-nano,
raspberry-pi-5, jetson-agx-orin and x86-host are reached over real sshd. Every device has thermal
zones (steady below its profile's cool-down threshold, as a device at rest) and real power sensors
fed by the lab's load model (fuel gauges, INA3221 rails, the Pi's PMIC, RAPL energy counters).

The lab is started as a user starts it (`farm lab up --all-profiles`). Nothing is turned off: the
sweep states no thermal_gate, power, idle_s, timeout or poll, so the cool-down gate runs at its
default poll and window, power is sampled, the idle baseline is measured. Through the CLI: `farm
devices`, `farm devices check`, `farm submit`; every job must finish `done`, exit 0, with energy
per token from a real (not modelled) sensor.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from farm.devices import load_inventory, load_profile
from farm.spec import loads_sweep
from tests.lab_fixtures import need_lab_tools

REPO = Path(__file__).resolve().parent.parent
SHIPPED = sorted(p.stem for p in (REPO / "device_profiles").glob("*.yaml"))

# Only the sweep's size is chosen here (the smallest model, one repetition, so the suite stays fast
# on 2 cores); every knob that decides whether a job can finish is left at its default.
# Phase lengths: an energy figure needs a phase several sensor periods long (RAPL at 20 Hz, the
# lab's load model averages CPU over 0.1 s). The arm devices run the engine under qemu (~20 tok/s:
# pp16/tg8 already last 0.4-0.8 s); the x86 host runs it natively ~25x faster, where pp16 takes
# 23 ms and its "energy" would be an interpolation (it came out negative). So the x86 host gets
# pp512/tg256 (~0.8 s / 0.4 s) and the emulated devices pp16/tg8.
EMULATED = ["tag:pixel-8", "tag:galaxy-s24", "tag:jetson-orin-nano", "tag:jetson-agx-orin", "tag:raspberry-pi-5"]
SWEEP = f"""
version: 1
name: every-profile
models: [farm-tiny]
quants: [q4_0]
backends: [reference]
devices: ["tag:lab"]
prompt_tokens: [16, 512]
gen_tokens: [8, 256]
threads: [1]
repetitions: 1
exclude:
  - {{device: "tag:x86-host", prompt_tokens: 16}}
  - {{device: "tag:x86-host", gen_tokens: 8}}
  - {{device: {EMULATED}, prompt_tokens: 512}}
  - {{device: {EMULATED}, gen_tokens: 256}}
"""


@dataclass
class RunningLab:
    root: Path
    inventory: Path
    devices: dict[str, str]  # lab device name -> shipped profile it stands for
    phones: list[str]


def farm(*args: str, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "farm.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, "COLUMNS": "250", **env})


@pytest.fixture(scope="module")
def lab() -> Iterator[RunningLab]:
    """`farm lab up --all-profiles`, as a user starts it, in the background until the tests end."""
    need_lab_tools()
    root = Path(tempfile.mkdtemp(prefix="farm-lab-profiles-"))
    out = (root.parent / f"{root.name}.out").open("w+")
    proc = subprocess.Popen([sys.executable, "-m", "farm.cli.main", "lab", "up", "--all-profiles", "--dir", str(root)],
                            stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while "inventory:" not in Path(out.name).read_text():
            assert proc.poll() is None and time.monotonic() < deadline, Path(out.name).read_text()
            time.sleep(0.5)
        inv = load_inventory(root / "devices.yaml")
        lab_entries = [d for d in inv.devices if "lab" in d.tags]
        yield RunningLab(root, root / "devices.yaml", {d.name: d.profile.removeprefix("lab-") for d in lab_entries},
                         [d.name for d in lab_entries if d.transport.kind == "adb"])
    finally:
        proc.send_signal(signal.SIGTERM)  # the lab stops its devices and adb server by pid
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            subprocess.run([sys.executable, "-m", "farm.cli.main", "lab", "down", "--dir", str(root)], cwd=REPO,
                           timeout=60)
            proc.kill()
            proc.wait()
        out.close()


def test_the_lab_has_one_device_per_shipped_profile(lab: RunningLab) -> None:
    assert sorted(lab.devices.values()) == SHIPPED
    inv = load_inventory(lab.inventory)
    for entry in inv.devices:
        if entry.name == "local":
            continue
        profile = load_profile(entry.profile, inv.profile_dirs)
        base = load_profile(lab.devices[entry.name])
        # the gate is the shipped one: same threshold, window, timeout (the lab only adapts cores/cpufreq)
        assert profile.thermal.model_dump(exclude={"cpufreq", "cpufreq_max"}) == \
            base.thermal.model_dump(exclude={"cpufreq", "cpufreq_max"})
        assert profile.thermal.zones and profile.power == base.power


def test_spec_defaults_are_the_user_defaults() -> None:
    """The sweep below leaves every gate knob at its default, and the default is 'on'."""
    sweep = loads_sweep(SWEEP)
    assert sweep.thermal_gate is True and sweep.power is True and sweep.timeouts.thermal_wait_s is None
    assert sweep.idle_s > 0


def test_default_path_on_every_shipped_profile(lab: RunningLab, tmp_path: Path) -> None:
    env = {"FARM_DEVICES": str(lab.inventory), "FARM_DB_URL": f"sqlite:///{tmp_path / 'farm.db'}"}
    names = sorted(lab.devices)

    listing = farm("devices", env=env, timeout=120)
    assert listing.returncode == 0, listing.stdout + listing.stderr
    for name in names:
        row = next(line for line in listing.stdout.splitlines() if f" {name} " in f" {line} ")
        assert "online" in row, row
        assert re.search(r"\b3\d\.\d\b", row), f"no temperature shown for {name}: {row}"

    check = farm("devices", "check", env=env, timeout=120)
    assert check.returncode == 0, check.stdout + check.stderr
    for name in names:
        lines = [line for line in check.stdout.splitlines() if line.startswith(name + " ")]
        assert {line.split()[1] for line in lines} >= {"reachable", "abi", "storage", "temperature"}, lines
        assert all(" ok " in line for line in lines), lines
    for phone in lab.phones:
        assert any(line.split()[1] == "battery" for line in check.stdout.splitlines()
                   if line.startswith(phone + " ")), check.stdout

    sweep = tmp_path / "every-profile.yaml"
    sweep.write_text(SWEEP)
    t0 = time.monotonic()
    proc = farm("submit", str(sweep), env=env)
    wall = time.monotonic() - t0
    print(f"\nsweep over {len(names)} virtual devices with the shipped defaults: {wall:.1f} s")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_id = re.search(r"run (\d{8}-\d{6}-[0-9a-f]{4})", proc.stdout).group(1)  # type: ignore[union-attr]
    assert f"run {run_id}: done" in proc.stdout
    assert f"done={len(names)}" in farm("status", run_id, env=env, timeout=60).stdout
    rows = json.loads(farm("results", run_id, "--format", "json", "--raw", env=env, timeout=60).stdout)
    assert sorted(r["device"] for r in rows) == names
    for r in rows:
        assert r["decode_tps"] > 0 and r["prefill_tps"] > 0, r
        assert r["decode_j_per_tok"] is not None and r["prefill_j_per_tok"] is not None, r
        assert not r["power_modelled"], r  # measured through the device's own sensor
        if lab.devices[r["device"]] != "x86-host":
            # the emulated engine keeps a core busy for seconds: energy well above the idle baseline.
            # Not asserted on the x86 host: there the engine's net energy (a share of a contended core
            # for < 1 s) is within the noise of the 1 s idle baseline on a loaded 2-core machine, and
            # came out negative once in five runs; telling that apart is the energy-resolution bound.
            assert r["decode_j_per_tok"] > 0 and r["prefill_j_per_tok"] > 0, r
