"""The `cpus` and `power_mode` axes through `farm submit` on the virtual lab.

- cpus × depth on the virtual phones (lab-pixel-8, lab-galaxy-s24: big.LITTLE in their sandbox sysfs,
  mapped onto this host's cores by farm.lab.lab.lab_cpus): every stored row carries the selector, the
  affinity read back from the engine's threads (the kernel's, via /proc), the depth, and energy per phase.
- power_mode on the virtual Jetson (lab-jetson-orin-nano, nvpmodel/jetson_clocks stand-ins keeping their
  state in the sandbox): the mode is set for the job (seen in the sandbox while the engine runs), stored
  with the result, restored after the job; after `farm submit` is SIGKILLed mid-job, the next `farm resume`
  restores it before its first job.

Tiny model, one repetition: the axes are judged here, not the figures.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab_fixtures import need_lab_tools

FARM = [sys.executable, "-c", "from farm.cli.main import main; main()"]


@pytest.fixture(scope="module")
def axes_lab() -> Iterator[object]:
    need_lab_tools()
    from farm.lab import Lab

    with Lab(Path(tempfile.mkdtemp(prefix="farm-axeslab-")), phones=2, boards=1,
             board_profiles=("jetson-orin-nano",)) as running:
        yield running


def farm(tmp: Path, lab, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run([*FARM, *args], capture_output=True, text=True, timeout=timeout, cwd=tmp, env=env(tmp, lab))


def env(tmp: Path, lab) -> dict[str, str]:  # type: ignore[no-untyped-def]
    e = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    e.update(FARM_HOME=str(tmp / "home"), FARM_DEVICES=str(lab.inventory_path), COLUMNS="200")
    return e


def rows(tmp: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(tmp / "home" / "data" / "farm.db") as c:
        return c.execute(sql).fetchall()


def test_cpus_by_depth_on_the_virtual_phones(axes_lab, tmp_path: Path) -> None:
    lab = axes_lab
    sweep = tmp_path / "cores.yaml"
    sweep.write_text("""version: 1
name: cores
models: [farm-tiny]
quants: [q4_0]
devices: [phone1, phone2]
prompt_tokens: [16]
gen_tokens: [16]
depth: [0, 512]
cpus: [big, little]
repetitions: 1
warmup: 0
thermal_gate: false  # the axes are judged here; the gate with the shipped defaults: test_lab_profiles
""")
    plan = farm(tmp_path, lab, "plan", str(sweep))
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "cpus=big[1]" in plan.stdout and "cpus=little[0]" in plan.stdout, plan.stdout
    res = farm(tmp_path, lab, "submit", str(sweep))
    assert res.returncode == 0, res.stdout + res.stderr
    got = rows(tmp_path, "select device, cpus, cpu_mask, n_depth, threads, prefill_j_per_tok, decode_j_per_tok "
                         "from results order by device, cpus, n_depth")
    print("\ndevice  cpus    mask  depth  t  prefill mJ/tok  decode mJ/tok")
    for r in got:
        print(f"{r[0]:<7} {r[1]:<7} {r[2]:<5} {r[3]:>5}  {r[4]}  {r[5] * 1e3:14.3f} {r[6] * 1e3:14.3f}")
    assert len(got) == 2 * 2 * 2
    masks = {"big": "0x2", "little": "0x1"}  # the lab's topology: cpu0 little, cpu1 the fastest (lab_cpus)
    for device, cpus, mask, _depth, threads, e_pre, e_dec in got:
        assert mask == masks[cpus], (device, cpus, mask)  # the kernel's affinity of the engine's threads
        assert threads == 1  # unset: the chosen cores' count
        assert e_pre is not None and e_dec is not None  # energy still per phase
    assert {(r[0], r[1], r[3]) for r in got} == {(d, c, n) for d in ("phone1", "phone2") for c in masks
                                                 for n in (0, 512)}
    for (prov,) in rows(tmp_path, "select provenance from jobs"):
        seen = json.loads(prov)["affinity"]
        assert seen["uniform"] and seen["threads_seen"] >= 1 and seen["cpus_allowed"] == seen["asked"], seen
    table = farm(tmp_path, lab, "results", run_id_of(res.stdout))
    assert "big 0x2" in table.stdout and "little 0x1" in table.stdout and "@d512" in table.stdout, table.stdout


def test_cpus_that_name_no_cores_are_dropped_with_the_reason(axes_lab, tmp_path: Path) -> None:
    sweep = tmp_path / "s.yaml"
    sweep.write_text("""version: 1
name: nocores
models: [farm-tiny]
quants: [q4_0]
devices: [board1]
prompt_tokens: [16]
gen_tokens: [16]
cpus: [little, "0-7", all]
power_mode: ["governor:performance", "nvpmodel:9"]
exclude: [{power_mode: "governor:performance", cpus: all}]
""")
    plan = farm(tmp_path, axes_lab, "plan", str(sweep))
    assert plan.returncode == 0, plan.stderr
    assert "lab-jetson-orin-nano has no little cores (one core type)" in plan.stdout, plan.stdout
    assert "cpu2 is outside the 2 cores" in plan.stdout
    assert "cpus=all power_mode=nvpmodel:9: lab-jetson-orin-nano has no nvpmodel mode '9'" in plan.stdout
    assert "cpus=all power_mode=governor:performance: excluded by a rule" in plan.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text(sweep.read_text().replace('"nvpmodel:9"', '"turbo"'))
    res = farm(tmp_path, axes_lab, "plan", str(bad))
    assert res.returncode == 2 and "bad.yaml:9" in res.stderr and "turbo" in res.stderr, res.stderr


POWER = """version: 1
name: {name}
models: [{model}]
quants: [q4_0]
devices: [board1]
prompt_tokens: [16]
gen_tokens: [16]
power_mode: ["nvpmodel:3+clocks"]
repetitions: {reps}
warmup: 0
thermal_gate: false  # the power mode is judged here; the gate with the shipped defaults: test_lab_profiles
"""


def nv_state(lab) -> tuple[str, str]:  # type: ignore[no-untyped-def]
    """(nvpmodel id, cpu0 scaling_min_freq) as the virtual Jetson keeps them."""
    status = (lab.root / "board1" / "etc" / "nvpmodel.status").read_text().strip()
    return status, lab.sandbox_file("board1", "/sys/devices/system/cpu/cpu0/cpufreq/scaling_min_freq"
                                    ).read_text().strip()


def test_power_mode_set_for_the_job_stored_and_restored(axes_lab, tmp_path: Path) -> None:
    lab = axes_lab
    before = nv_state(lab)
    assert before == ("0", "729600")
    sweep = tmp_path / "pm.yaml"
    sweep.write_text(POWER.format(name="pm", model="farm-tiny", reps=1))
    res = farm(tmp_path, lab, "submit", str(sweep))
    assert res.returncode == 0, res.stdout + res.stderr
    stored = rows(tmp_path, "select power_mode from results")
    assert stored == [("nvpmodel:3+clocks",)]
    mode = json.loads(rows(tmp_path, "select provenance from jobs")[0][0])["power_mode"]
    assert mode["read_back"] == {"nvpmodel": 3, "nvpmodel_name": "7W", "jetson_clocks": True}
    assert mode["previous"]["nvpmodel"] == 0
    assert nv_state(lab) == before  # restored after the job
    assert not lab.sandbox_file("board1", "/var/tmp/farm/run/power_mode.restore").exists()


def run_id_of(out: str) -> str:
    line = next(li for li in out.splitlines() if li.startswith("run ") and "jobs on" in li)
    return line.split()[1].rstrip(":")


def test_power_mode_restored_after_a_killed_submit(axes_lab, tmp_path: Path) -> None:
    lab = axes_lab
    before = nv_state(lab)
    sweep = tmp_path / "killed.yaml"
    sweep.write_text(POWER.format(name="killed", model="farm-mini", reps=6))  # long enough to be caught mid-job
    proc = subprocess.Popen([*FARM, "submit", str(sweep)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=tmp_path, env=env(tmp_path, lab))
    engine_pid = lab.sandbox_file("board1", "/var/tmp/farm/run/engine.pid")
    deadline = time.monotonic() + 300
    while not engine_pid.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "the engine never started"
        time.sleep(0.05)
    assert nv_state(lab) == ("3", "1510400")  # 7W, clocks pinned: the job's mode is on while the engine runs
    proc.send_signal(signal.SIGKILL)
    out, _ = proc.communicate(timeout=30)
    assert nv_state(lab) == ("3", "1510400")  # nobody restored it: the agent was killed
    assert lab.sandbox_file("board1", "/var/tmp/farm/run/power_mode.restore").exists()
    res = farm(tmp_path, lab, "resume", run_id_of(out))
    assert res.returncode == 0, res.stdout + res.stderr
    assert nv_state(lab) == before
    assert not lab.sandbox_file("board1", "/var/tmp/farm/run/power_mode.restore").exists()


def test_governor_and_pinned_freq_on_the_board_restored_and_dropped_on_a_phone_without_root(
        axes_lab, tmp_path: Path) -> None:
    lab = axes_lab
    governor = lab.sandbox_file("board1", "/sys/devices/system/cpu/cpu1/cpufreq/scaling_governor")
    assert governor.read_text().strip() == "schedutil"
    sweep = tmp_path / "gov.yaml"
    sweep.write_text("""version: 1
name: gov
models: [farm-tiny]
quants: [q4_0]
devices: [board1, phone1]
prompt_tokens: [16]
gen_tokens: [16]
power_mode: ["governor:performance", "freq:1200000"]
repetitions: 1
warmup: 0
thermal_gate: false  # the power mode is judged here; the gate with the shipped defaults: test_lab_profiles
""")
    res = farm(tmp_path, lab, "submit", str(sweep))
    assert res.returncode == 0, res.stdout + res.stderr
    assert sorted(rows(tmp_path, "select device, power_mode from results")) == [
        ("board1", "freq:1200000"), ("board1", "governor:performance")]
    modes = {m["mode"]: m for (p,) in rows(tmp_path, "select provenance from jobs")
             if (m := json.loads(p).get("power_mode"))}
    gov, freq = modes["governor:performance"], modes["freq:1200000"]
    assert {s["governor"] for s in gov["read_back"]["cpufreq"].values()} == {"performance"}  # read back
    assert {s["governor"] for s in gov["previous"]["cpufreq"].values()} == {"schedutil"}
    assert {(s["min"], s["max"]) for s in freq["read_back"]["cpufreq"].values()} == {("1200000", "1200000")}
    assert governor.read_text().strip() == "schedutil"  # restored
    cpu1 = governor.parent
    assert ((cpu1 / "scaling_min_freq").read_text().strip(), (cpu1 / "scaling_max_freq").read_text().strip()) == (
        "729600", (cpu1 / "cpuinfo_max_freq").read_text().strip())
    plan = farm(tmp_path, lab, "plan", str(sweep))
    assert "lab-pixel-8 cannot set cpufreq governor (needs root" in plan.stdout, plan.stdout
