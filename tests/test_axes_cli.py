"""The `cpus` and `power_mode` axes on this host, through the CLI (the lab tests: test_lab_axes).

The engine runs pinned with taskset on the local transport; the stored rows carry the affinity its
threads had (read back from /proc), the results table and `farm compare` keep the cells apart, bad
selectors are refused with file:line before anything runs, and a power mode this host's profile cannot
set is dropped with the reason.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

FARM = [sys.executable, "-c", "from farm.cli.main import main; main()"]
SWEEP = """version: 1
name: pin
models: [farm-tiny]
quants: [q4_0]
prompt_tokens: [16]
gen_tokens: [16]
cpus: ["0", "0x2"]
repetitions: 3
warmup: 0
power: false  # compare judges throughput here; energy through the axes: test_lab_axes
"""


def farm(tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_HOME=str(tmp / "home"), COLUMNS="200")
    return subprocess.run([*FARM, *args], capture_output=True, text=True, timeout=300, cwd=tmp, env=env)


def run_id_of(out: str) -> str:
    line = next(li for li in out.splitlines() if li.startswith("run ") and "jobs on" in li)
    return line.split()[1].rstrip(":")


@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="pins to cpu0 and cpu1")
def test_pinned_runs_store_the_affinity_and_compare_by_cores(tmp_path: Path) -> None:
    sweep = tmp_path / "pin.yaml"
    sweep.write_text(SWEEP)
    runs = []
    for _ in range(2):
        res = farm(tmp_path, "submit", str(sweep))
        assert res.returncode == 0, res.stdout + res.stderr
        runs.append(run_id_of(res.stdout))
    with sqlite3.connect(tmp_path / "home" / "data" / "farm.db") as c:
        got = set(c.execute("select cpus, cpu_mask, threads from results"))
    assert got == {("0", "0x1", 1), ("0x2", "0x2", 1)}  # threads unset: the chosen cores' count
    table = farm(tmp_path, "results", runs[0])
    assert "0 0x1" in table.stdout and "0x2 0x2" in table.stdout, table.stdout
    cmp = farm(tmp_path, "compare", *runs)
    assert cmp.returncode == 0, cmp.stderr
    assert "pp16+tg16 t1 cpus=0 |" in cmp.stdout and "pp16+tg16 t1 cpus=0x2 |" in cmp.stdout, cmp.stdout


def test_bad_axes_are_refused_and_unsettable_modes_dropped(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(SWEEP.replace('cpus: ["0", "0x2"]', 'cpus: [big, huge]'))
    res = farm(tmp_path, "plan", str(bad))
    assert res.returncode == 2 and "bad.yaml:7" in res.stderr and "'huge'" in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
    modes = tmp_path / "modes.yaml"
    modes.write_text(SWEEP.replace('cpus: ["0", "0x2"]', 'power_mode: [default, "nvpmodel:0"]'))
    res = farm(tmp_path, "plan", str(modes))
    assert res.returncode == 0, res.stderr
    assert "power_mode=nvpmodel:0: host-auto has no nvpmodel" in res.stdout, res.stdout
    assert "1 jobs, 1 dropped" in res.stdout
