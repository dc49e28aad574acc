"""What a user reads after a run, through the real CLI: hints, a table that fits 80 columns, formats that
agree, a calibrated estimate, honest compare verdicts, and energy per token below resolution."""

from __future__ import annotations

import io
import json
import math
import os
import re
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent
# farm-tiny only: 4 jobs × 3 repetitions (3 is what farm compare cannot judge, see below)
SWEEP = """version: 1
name: screen
models: [farm-tiny]
quants: [q4_0, q8_0]
prompt_tokens: [32]
gen_tokens: [16]
threads: [1, 2]
repetitions: 3
warmup: 1
idle_s: 0.5
"""
BOX = re.compile(r"^[┏┃┡│└]")


def farm(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "farm.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str, Path]:
    tmp = tmp_path_factory.mktemp("screen")
    sweep = tmp / "screen.yaml"
    sweep.write_text(SWEEP)
    db = f"sqlite:///{tmp / 'farm.db'}"
    planned = farm("plan", str(sweep), "--db", db, "--json")
    assert planned.returncode == 0, planned.stdout + planned.stderr
    roofline = json.loads(planned.stdout)
    assert roofline["est_factor"] == {} and "roofline only" in roofline["estimate"]  # an empty store
    proc = farm("submit", str(sweep), "--db", db, env={"COLUMNS": "80"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_id = re.search(r"run (\d{8}-\d{6}-[0-9a-f]{4})", proc.stdout).group(1)  # type: ignore[union-attr]
    return db, run_id, proc.stdout, sweep, roofline["est_s"]


def test_submit_prints_next_steps_and_a_table_of_80_columns(run) -> None:  # type: ignore[no-untyped-def]
    db, run_id, out, _, _ = run
    table = [line for line in out.splitlines() if BOX.match(line)]
    assert table and max(len(line) for line in table) <= 80, "\n".join(table)
    assert sum(1 for line in table if line.startswith("│")) == 4  # one line per job
    assert "farm-tiny" in out and "tg t/s" in out  # the essentials survive the fitting
    hints = [line.strip() for line in out.splitlines() if line.strip().startswith("farm ")]
    assert [h.split()[1] for h in hints] == ["results", "report", "dashboard"]
    assert all(run_id in h for h in hints[:2]) and f"--html report-{run_id}.html" in hints[1]
    again = farm(*shlex.split(hints[0])[1:])  # the hint works as printed
    assert again.returncode == 0 and run_id in again.stdout
    wide = farm("results", run_id, "--db", db, env={"COLUMNS": "200"})
    assert "prefill t/s" in wide.stdout and "TTFT ms" in wide.stdout  # with room, nothing is left out


def test_every_format_has_one_row_per_job_unless_raw(run, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    db, run_id, _, _, _ = run
    counts = {}
    for raw in ([], ["--raw"]):
        rows_json = json.loads(farm("results", run_id, "--db", db, "--format", "json", *raw).stdout)
        rows_csv = pd.read_csv(io.StringIO(farm("results", run_id, "--db", db, "--format", "csv", *raw).stdout))
        pq = tmp_path / f"r{len(raw)}.parquet"
        assert farm("results", run_id, "--db", db, "--format", "parquet", "-o", str(pq), *raw).returncode == 0
        rows_pq = pd.read_parquet(pq)
        assert len(rows_json) == len(rows_csv) == len(rows_pq), raw
        assert list(rows_csv.columns) == list(rows_pq.columns)
        table = farm("results", run_id, "--db", db, *raw, env={"COLUMNS": "100"}).stdout
        assert sum(1 for line in table.splitlines() if line.startswith("│")) == len(rows_json)
        counts[bool(raw)] = len(rows_json)
    assert counts == {False: 4, True: 12}


def test_energy_per_token_carries_its_resolution(run) -> None:  # type: ignore[no-untyped-def]
    db, run_id, _, _, _ = run
    rows = json.loads(farm("results", run_id, "--db", db, "--format", "json").stdout)
    for r in rows:
        for phase in ("prefill", "decode"):
            mean, bound = r[f"{phase}_j_per_tok_mean"], r[f"{phase}_j_per_tok_bound_mean"]
            assert mean is not None and bound is not None and bound >= 0
            assert r[f"{phase}_j_per_tok_below_resolution"] == (abs(mean) <= bound)


def test_estimate_is_calibrated_from_stored_runs_of_the_device(run) -> None:  # type: ignore[no-untyped-def]
    db, run_id, _, sweep, roofline = run
    from farm.store import Store

    measured = sum((j.finished_at - j.started_at).total_seconds() for j in Store(db).job_rows(run_id))
    assert "calibrated from stored runs: local/reference ×" in farm("plan", str(sweep), "--db", db).stdout
    planned = json.loads(farm("plan", str(sweep), "--db", db, "--json").stdout)
    calibrated = planned["est_s"]
    assert set(planned["est_factor"]) == {"local/reference"}
    # closer to what the run took than the roofline was (on the log scale: a factor too long is as wrong
    # as a factor too short), and within half of it either way
    error, before = abs(math.log(calibrated / measured)), abs(math.log(roofline / measured))
    assert error < before and error < math.log(1.5), (roofline, calibrated, measured)


def test_compare_of_a_run_with_itself_warns_and_3_reps_are_inconclusive(run) -> None:  # type: ignore[no-untyped-def]
    db, run_id, _, _, _ = run
    proc = farm("compare", run_id, run_id, "--db", db)
    assert proc.returncode == 0, proc.stderr
    assert "compared with itself" in proc.stderr and "compared with itself" in proc.stdout
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| local")]
    # 3 against 3 repetitions: Mann-Whitney cannot reach p < 0.05 (its smallest p is 0.1), so no verdict
    # may read "no change"; the MDE says why
    assert rows and not any("no change" in line for line in rows)
    judged = [line for line in rows if "inconclusive" in line]
    assert judged and all("| ∞" in line for line in judged)
    assert "could not have seen a change below its MDE" in proc.stdout
    assert "base, head: median of each run's repetitions" in proc.stdout


def test_below_resolution_through_a_real_gauge(tmp_path: Path) -> None:
    """A fuel gauge (the lab's feeder, read by the real sampler) that shows idle power throughout: every
    phase's net energy is noise, so the table says "<bound" and the export keeps the raw value."""
    from farm.lab.powerfeed import AndroidGauge, PowerFeeder

    class Flat:  # idle draw with a ripple: what a phone does when the engine's work is below its noise
        def watts(self, t_s: float) -> float:
            return 2.5 + 0.02 * math.sin(2 * math.pi * 7.3 * t_s)

    root = tmp_path / "gauge"
    (tmp_path / "profiles").mkdir()
    (tmp_path / "profiles" / "gauge-host.yaml").write_text(
        (REPO / "tests" / "data" / "profiles" / "test-host.yaml").read_text().replace("name: test-host",
                                                                                      "name: gauge-host")
        + f"power:\n  source: android_battery\n  rate_hz: 50\n  options: {{root: {root}}}\n")
    (tmp_path / "devices.yaml").write_text(
        f"devices:\n  - name: gauge\n    profile: gauge-host\n    transport: {{kind: local}}\n"
        f"profile_dirs: [{tmp_path / 'profiles'}]\n")
    sweep = tmp_path / "s.yaml"
    sweep.write_text(SWEEP.replace("threads: [1, 2]", "threads: [1]").replace("quants: [q4_0, q8_0]", "quants: [q4_0]")
                     .replace("idle_s: 0.5", "idle_s: 1.0") + "devices: [gauge]\n")
    db = f"sqlite:///{tmp_path / 'farm.db'}"
    with PowerFeeder(root, Flat(), rate_hz=500, android=AndroidGauge(unit="uA", sign="negative-discharge")):
        proc = farm("submit", str(sweep), "--db", db, "--devices", str(tmp_path / "devices.yaml"),
                    env={"COLUMNS": "120"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_id = re.search(r"run (\d{8}-\d{6}-[0-9a-f]{4})", proc.stdout).group(1)  # type: ignore[union-attr]
    assert "below resolution" in proc.stdout and re.search(r"│ +<[0-9.e-]+ │", proc.stdout), proc.stdout
    raw = json.loads(farm("results", run_id, "--db", db, "--format", "json", "--raw").stdout)
    decode = [r for r in raw if r["decode_j_per_tok"] is not None]
    assert decode and all(r["decode_j_per_tok_below_resolution"] for r in decode)
    assert all(abs(r["decode_j_per_tok"]) <= r["decode_j_per_tok_bound"] for r in decode)
    assert any(r["decode_j_per_tok"] != 0 for r in decode)  # the raw value is kept, not zeroed
    html = tmp_path / "r.html"
    assert farm("report", run_id, "--db", db, "--html", str(html)).returncode == 0
    assert "below resolution" in html.read_text() and 'class="pt below"' in html.read_text()  # table, chart
    from farm.web.server import serve_in_thread  # the dashboard's energy panel: a grey "< bound" bar

    server, base = serve_in_thread(db)
    try:
        import urllib.request

        panel = json.load(urllib.request.urlopen(f"{base}/api/panel/energy?from=2000-01-01T00:00:00Z", timeout=30))
    finally:
        server.shutdown()
    assert 'class="pt below"' in panel["html"] and "below resolution" in panel["html"], panel


def test_resolution_bound_separates_a_real_draw_from_idle_noise() -> None:
    from farm.power.energy import Phase, idle_noise, phase_energy
    from farm.power.trace import Trace

    rng = np.random.default_rng(1)
    t = np.arange(0, 4_000_000_000, 20_000_000)  # 50 Hz for 4 s
    step = 0.05  # a sensor that reads in 50 mW steps
    w = np.round((2.0 + rng.normal(0, 0.03, len(t)) + np.where(t >= 3_000_000_000, 1.0, 0.0)) / step) * step
    run = Trace(t, w)
    idle = Trace(t[:50], w[:50])
    noise = idle_noise(idle, run)
    assert noise is not None and noise.step_w == pytest.approx(step)
    quiet = phase_energy(run, Phase("decode", 0, 1_000_000_000, 2_000_000_000, 100), idle.mean_w(), noise)
    busy = phase_energy(run, Phase("decode", 1, 3_000_000_000, 3_900_000_000, 100), idle.mean_w(), noise)
    assert quiet.below_resolution and abs(quiet.net_energy_j) <= quiet.resolution_j  # type: ignore[operator]
    assert busy.below_resolution is False and busy.net_energy_j == pytest.approx(0.9, rel=0.1)
    # the bound: 2 sd of a difference of two means over the phase, plus half a sensor step, × duration
    expected = 1.0 * (2 * noise.sd_w * math.sqrt(1 / noise.n_eff + 1 / quiet.n_samples) + step / 2)
    assert quiet.resolution_j == pytest.approx(expected, rel=0.05)
    assert quiet.j_per_token_bound == pytest.approx(quiet.resolution_j / 100)  # type: ignore[operator]


def test_agx_orin_power_is_the_sum_of_its_rails_on_a_lab_board(tmp_path: Path) -> None:
    """A virtual AGX Orin (real sshd, INA3221 hwmon files fed by the lab): `farm submit` measures the
    module as VDD_GPU_SOC + VDD_CPU_CV + VIN_SYS_5V0, and the lab's board power comes back whole."""
    from farm.lab.lab import Lab, tools_missing
    from farm.lab.sandbox import INA_RAILS
    from tests.support import need

    missing = tools_missing()
    need(not missing, f"farm lab ({', '.join(missing)})")
    rails = {label: mv * ma / 1e6 for label, mv, ma in INA_RAILS["jetson-agx-orin"]["1-0040"]}
    idle_sum = sum(rails.values())  # 7.8 W; VIN_SYS_5V0 alone is 3.1 W
    sweep = tmp_path / "s.yaml"
    sweep.write_text(SWEEP.replace("threads: [1, 2]", "threads: [1]").replace("quants: [q4_0, q8_0]", "quants: [q4_0]")
                     .replace("repetitions: 3", "repetitions: 2") + "devices: [board1]\n"
                     # this test is about summed rails; the gate's 10 s window per job at shipped defaults
                     # runs on every profile in test_lab_profiles
                     "thermal_gate: false\n")  # see the comment above
    db = f"sqlite:///{tmp_path / 'farm.db'}"
    # Its own ports: labs of other test sessions on this host hold the default range from 55551 up.
    first_port = 58000 + (os.getpid() % 1000) * 4
    # its root as the lab fixture makes it: sshd reads the key as the board's user, who cannot enter pytest's
    # 0700 tmp tree
    root = Path(tempfile.mkdtemp(prefix="farm-lab-"))
    with Lab(root, phones=0, boards=1, board_profiles=("jetson-agx-orin",), first_port=first_port) as lab:
        proc = farm("submit", str(sweep), "--db", db, "--devices", str(lab.inventory_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    from farm.store import Store

    run_id = re.search(r"run (\d{8}-\d{6}-[0-9a-f]{4})", proc.stdout).group(1)  # type: ignore[union-attr]
    (job,) = Store(db).job_rows(run_id)
    power = job.power
    assert job.status == "done" and power, (job.status, job.error, proc.stdout)
    assert power["source"] == "jetson_ina3221" and power["details"]["rail"] == "VDD_GPU_SOC+VDD_CPU_CV+VIN_SYS_5V0"
    # the idle baseline is the module's (the three rails), not the 5 V rail's 40% of it
    assert power["idle_w"] == pytest.approx(idle_sum, rel=0.15), (power["idle_w"], rails)
    means = power["details"]["rail_mean_w"]
    assert set(rails) <= set(means)
    decode = [p for p in power["phases"] if p["name"] == "decode"]
    # each phase's average is the sum of the rails' (the lab writes rails as shares of its board power)
    assert all(p["avg_w"] > power["idle_w"] * 0.9 for p in decode)
    rows = json.loads(farm("results", run_id, "--db", db, "--format", "json", "--raw").stdout)
    assert all(r["decode_energy_j"] is not None for r in rows)


def test_llama_bench_build_cache_lives_under_farm_home(tmp_path: Path) -> None:
    """README: FARM_HOME keeps every cache under DIR; the llama.cpp builds (~3.5 min each) included."""
    home = tmp_path / "home"
    proc = subprocess.run([sys.executable, "-m", "farm.backends.llamacpp_build", "--where"], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, "FARM_HOME": str(home)}, timeout=60)
    assert proc.returncode == 0, proc.stderr
    where = Path(proc.stdout.strip())
    assert where == home / "cache" / "llamacpp" and where.is_dir()
