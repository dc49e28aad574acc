"""`farm devices` / `check` / `release`, and dispatch honouring quarantine."""

from __future__ import annotations

import os
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
