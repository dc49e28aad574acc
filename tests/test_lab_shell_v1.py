"""A phone without the `shell_v2` feature (Android < 7): farm falls back to adb's v1 `shell:` service.

The virtual phone's adbd is told to advertise no shell_v2, so the real adb server and farm's adb
transport take the v1 path (stdout and stderr merged, the exit status read from a marker line).
Its profile has no thermal files: the cool-down gate has nothing to read but the device clock, and
that one-command script used to start with `;` (a sh syntax error), failing every job.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from farm.agent.thermal import read_state
from farm.devices import load_inventory, load_profile
from farm.lab.adbd import FEATURES
from farm.transports import open_transport
from tests.lab_fixtures import need_lab_tools

REPO = Path(__file__).resolve().parent.parent
NO_V2 = ",".join(f for f in FEATURES.split(",") if f != "shell_v2")


@pytest.fixture(scope="module")
def lab() -> Iterator[object]:
    need_lab_tools()
    from farm.lab import Lab

    root = Path(tempfile.mkdtemp(prefix="farm-lab-v1-"))
    with Lab(root, phones=1, boards=0, phone_profiles=("pixel-8",), phone_features={"phone1": NO_V2}) as running:
        # the same phone, described by a profile without thermal files (many vendor profiles are)
        data = yaml.safe_load((running.profile_dir / "lab-pixel-8.yaml").read_text())
        data["name"] = "lab-pixel-8-nozones"
        data["thermal"].update(zones=[], cpufreq=[], cpufreq_max=[])
        (running.profile_dir / "lab-pixel-8-nozones.yaml").write_text(yaml.safe_dump(data))
        inv = yaml.safe_load(running.inventory_path.read_text())
        inv["devices"][0]["profile"] = "lab-pixel-8-nozones"
        running.inventory_path.write_text(yaml.safe_dump(inv))
        yield running


def test_the_phone_has_no_shell_v2(lab) -> None:
    t = open_transport("adb", **{k: v for k, v in lab.device("phone1").transport.items() if k != "kind"})
    try:
        assert "shell_v2" not in t.features() and "stat_v2" in t.features()
        v1 = t.shell("echo out; echo err >&2; exit 7")  # v1: stderr merged, status from a marker line
        assert v1.exit_code == 7 and v1.stdout.split() == ["out", "err"], v1
        bad = t.shell("; true")  # a script error is the script's status (2), not a phone gone away
        assert bad.exit_code == 2 and "Syntax error" in bad.stdout, bad
        entry = load_inventory(lab.inventory_path).devices[1]
        profile = load_profile(entry.profile, [str(lab.profile_dir)])
        assert not profile.thermal.zones
        state = read_state(t, profile)  # was: "; [ -x ... ]" -> sh: Syntax error: ";" unexpected
        assert state.temps_c == {} and state.t_mono_ns is None  # no sampler staged yet: no device clock
    finally:
        t.close()


def test_a_sweep_with_the_defaults_finishes_on_a_shell_v1_phone(lab, tmp_path: Path) -> None:
    sweep = tmp_path / "v1.yaml"
    sweep.write_text("version: 1\nname: v1\nmodels: [farm-tiny]\nquants: [q4_0]\ndevices: [phone1]\n"
                     "prompt_tokens: [16]\ngen_tokens: [8]\nthreads: [1]\nrepetitions: 1\n")  # defaults otherwise
    env = {**os.environ, "FARM_DEVICES": str(lab.inventory_path), "FARM_DB_URL": f"sqlite:///{tmp_path / 'f.db'}"}
    check = subprocess.run([sys.executable, "-m", "farm.cli.main", "devices", "check", "phone1"], env=env,
                           capture_output=True, text=True, timeout=120, cwd=REPO)
    assert check.returncode == 0, check.stdout + check.stderr
    proc = subprocess.run([sys.executable, "-m", "farm.cli.main", "submit", str(sweep)], env=env,
                          capture_output=True, text=True, timeout=900, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"run \S+: done", proc.stdout), proc.stdout


def test_a_phone_reporting_another_abi_is_refused_by_devices_check(lab, tmp_path: Path) -> None:
    """ro.product.cpu.abi is what the phone says it runs; a phone flashed with a 32-bit build (or a
    wrong profile in the inventory) must not be handed the profile's arm64 engine."""
    props = lab.device("phone1").root / "etc" / "props"
    original = props.read_text()
    props.write_text(original.replace("ro.product.cpu.abi=arm64-v8a", "ro.product.cpu.abi=armeabi-v7a"))
    env = {**os.environ, "FARM_DEVICES": str(lab.inventory_path), "FARM_DB_URL": f"sqlite:///{tmp_path / 'f.db'}",
           "COLUMNS": "250"}
    try:
        check = subprocess.run([sys.executable, "-m", "farm.cli.main", "devices", "check", "phone1"], env=env,
                               capture_output=True, text=True, timeout=120, cwd=REPO)
    finally:
        props.write_text(original)
    assert check.returncode == 1, check.stdout + check.stderr
    out = " ".join(check.stdout.split())
    assert ("phone1 abi FAIL device reports abi 'armeabi-v7a' but its profile lab-pixel-8-nozones says "
            "'arm64-v8a'") in out, out
    assert "phone1 quarantined" in out
