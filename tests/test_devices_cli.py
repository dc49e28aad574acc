"""`farm devices` / `check` / `release`, and dispatch honouring quarantine."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import yaml

from tests.test_local_executor import PROFILES, closed_port

REPO = Path(__file__).resolve().parent.parent


def farm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "farm.cli.main", *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env=dict(os.environ))


def test_check_quarantines_an_unreachable_device_and_submit_skips_it(tmp_path: Path) -> None:
    inv = tmp_path / "devices.yaml"
    inv.write_text(yaml.safe_dump({"profile_dirs": [str(PROFILES)], "devices": [
        {"name": "ok-host", "profile": "test-host", "workdir": str(tmp_path / "w")},
        {"name": "gone", "profile": "test-host", "transport": {
            "kind": "ssh", "host": "127.0.0.1", "port": closed_port(), "connect_timeout": 2,
            "known_hosts": str(tmp_path / "kh")}}]}))
    db = f"sqlite:///{tmp_path / 'farm.db'}"
    listing = farm("devices", "--db", db, "--devices", str(inv))
    assert listing.returncode == 0, listing.stderr
    assert "ok-host" in listing.stdout and "offline" in listing.stdout
    check = farm("devices", "--db", db, "--devices", str(inv), "check")
    assert check.returncode == 1
    assert "gone" in check.stdout and "quarantined" in check.stdout
    assert "ok-host          storage      ok" in check.stdout
    sweep = tmp_path / "s.yaml"
    sweep.write_text("version: 1\nname: q\nmodels: [farm-tiny]\nquants: [q4_0]\ndevices: [gone, ok-host]\n"
                     "prompt_tokens: [8]\ngen_tokens: [4]\nrepetitions: 1\nwarmup: 0\npower: false\n")
    sub = farm("submit", str(sweep), "--db", db, "--devices", str(inv))
    assert sub.returncode == 0, sub.stdout + sub.stderr
    assert "1 jobs on 1 device(s), 1 dropped" in sub.stdout
    assert farm("devices", "--db", db, "--devices", str(inv), "release", "gone").returncode == 0
    assert "quarantined" not in farm("devices", "--db", db, "--devices", str(inv)).stdout


def _profile(path: Path, name: str, **fields: object) -> None:
    base = {"name": name, "kind": "board", "abi": platform.machine(), "engine_target": "host", "ram_gib": 4,
            "cpus": {"count": 1}, "workdir": "/tmp/never-used", "power": {"source": "none"}}
    path.mkdir(parents=True, exist_ok=True)
    (path / f"{name}.yaml").write_text(yaml.safe_dump({**base, **fields}))


def test_devices_and_check_on_devices_with_thermal_zones_a_profile_battery_and_a_wrong_abi(tmp_path: Path) -> None:
    """`farm devices` used to crash (TypeError: 'float' object is not callable) on any device with a
    thermal zone; the battery was read from a fixed path, not the profile's supply; a device whose
    instruction set is not its profile's was not noticed."""
    zone = tmp_path / "sys" / "thermal_zone0" / "temp"
    zone.parent.mkdir(parents=True)
    zone.write_text("36500\n")
    supply = tmp_path / "sys" / "power_supply" / "bms"  # not .../battery
    supply.mkdir(parents=True)
    (supply / "capacity").write_text("77\n")
    profiles = tmp_path / "profiles"
    thermal = {"zones": [str(zone)], "start_temp_c": 40}
    _profile(profiles, "fake-phone", kind="phone", thermal=thermal,
             power={"source": "android_battery", "options": {"supply": str(supply)}})
    wrong = "x86_64" if platform.machine() == "aarch64" else "aarch64"
    _profile(profiles, "other-isa", abi=wrong, engine_target="aarch64-linux-static", thermal=thermal)
    inv = tmp_path / "devices.yaml"
    inv.write_text(yaml.safe_dump({"profile_dirs": [str(profiles)], "devices": [
        {"name": "zoned", "profile": "fake-phone", "workdir": str(tmp_path / "w1")},
        {"name": "misfit", "profile": "other-isa", "workdir": str(tmp_path / "w2")}]}))
    db = f"sqlite:///{tmp_path / 'farm.db'}"
    listing = farm("devices", "--db", db, "--devices", str(inv))
    assert listing.returncode == 0, listing.stderr
    row = next(line for line in listing.stdout.splitlines() if " zoned " in line)
    assert "online" in row and "77%" in row and "36.5" in row, row
    check = farm("devices", "--db", db, "--devices", str(inv), "check")
    assert check.returncode == 1, check.stdout + check.stderr
    out = " ".join(check.stdout.split())
    assert "zoned battery ok 77%" in out and "zoned temperature ok 36.5 °C" in out and "zoned abi ok" in out
    assert f"misfit abi FAIL device reports abi '{platform.machine()}' but its profile other-isa says '{wrong}'" in out
    assert "misfit quarantined" in out and "zoned quarantined" not in out


def test_a_job_is_refused_on_a_device_whose_abi_is_not_its_profiles(tmp_path: Path) -> None:
    import pytest

    from farm.agent.runner import run_job
    from farm.devices import load_inventory, load_profile
    from farm.errors import InfraError
    from farm.plan import make_plan
    from farm.spec import loads_sweep
    from farm.transports.local import LocalTransport

    wrong = "x86_64" if platform.machine() == "aarch64" else "aarch64"
    _profile(tmp_path / "profiles", "other-isa", abi=wrong, engine_target="aarch64-linux-static")
    inv_file = tmp_path / "devices.yaml"
    inv_file.write_text(yaml.safe_dump({"profile_dirs": ["profiles"], "devices": [
        {"name": "misfit", "profile": "other-isa", "workdir": str(tmp_path / "w")}]}))
    inv = load_inventory(inv_file)
    sweep = loads_sweep("version: 1\nname: a\nmodels: [farm-tiny]\nquants: [q4_0]\ndevices: [misfit]\n"
                        "prompt_tokens: [8]\ngen_tokens: [4]\nrepetitions: 1\n")
    job = make_plan(sweep, inv, "r").jobs[0]
    entry = next(d for d in inv.devices if d.name == "misfit")
    with pytest.raises(InfraError, match=rf"misfit: device reports abi '{platform.machine()}' but its profile"):
        run_job(job, entry, load_profile("other-isa", inv.profile_dirs), LocalTransport())
    assert not (tmp_path / "w").exists()  # refused before anything was staged


def test_two_entries_sharing_one_workdir_are_refused_at_load(tmp_path: Path) -> None:
    inv = tmp_path / "devices.yaml"
    inv.write_text(f"profile_dirs: [{PROFILES}]\ndevices:\n"
                   f"  - {{name: a, profile: test-host, workdir: {tmp_path}/w}}\n"
                   f"  - {{name: b, profile: test-host, workdir: {tmp_path}/w/}}\n")
    proc = farm("devices", "--db", f"sqlite:///{tmp_path / 'farm.db'}", "--devices", str(inv))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == (f"error: {inv}:4: devices[1] 'b' uses workdir {tmp_path}/w/ on the same local "
                                   "device as 'a': give each entry its own workdir"), proc.stderr
    sweep = tmp_path / "s.yaml"
    sweep.write_text("version: 1\nname: q\nmodels: [farm-tiny]\nquants: [q4_0]\ndevices: [a, b]\n"
                     "prompt_tokens: [8]\ngen_tokens: [4]\nrepetitions: 1\n")
    sub = farm("submit", str(sweep), "--db", f"sqlite:///{tmp_path / 'farm.db'}", "--devices", str(inv))
    assert sub.returncode == 2 and f"{inv}:4: devices[1] 'b' uses workdir" in sub.stderr, sub.stdout + sub.stderr
    assert not (tmp_path / "w").exists()  # nothing ran
