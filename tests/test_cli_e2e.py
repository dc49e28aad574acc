"""The README's promise, end to end through the real CLI: submit the smoke sweep, read results back."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def farm(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "farm.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO, env={**os.environ, **(env or {})})


def test_smoke_sweep_on_the_embedded_default(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'farm.db'}"
    proc = farm("submit", "jobs/smoke.yaml", "--db", db)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_id = re.search(r"run (\d{8}-\d{6}-[0-9a-f]{4})", proc.stdout).group(1)  # type: ignore[union-attr]
    assert f"run {run_id}: done" in proc.stdout
    out = farm("results", run_id, "--db", db, "--format", "json", "--raw")
    rows = json.loads(out.stdout)
    assert len(rows) == 4 * 3  # 4 jobs × 3 repetitions, every repetition stored
    assert {r["model"] for r in rows} == {"farm-tiny", "farm-mini"}
    assert all(r["decode_tps"] > 0 and r["prefill_tps"] > 0 and r["ttft_s"] > 0 for r in rows)
    assert all(r["prefill_energy_j"] is not None and r["power_modelled"] for r in rows)  # no sensor here: modelled
    summary = json.loads(farm("results", run_id, "--db", db, "--format", "json").stdout)
    assert len(summary) == 4 and all(s["reps"] == 3 for s in summary)
    csv = farm("results", run_id, "--db", db, "--format", "csv").stdout
    header = "job_id,device,backend,model,quant,test,threads,cpus,cpu_mask,power_mode,reps"
    assert csv.splitlines()[0].startswith(header)
    parquet = tmp_path / "r.parquet"
    assert farm("results", run_id, "--db", db, "--format", "parquet", "-o", str(parquet)).returncode == 0
    import pandas as pd

    assert len(pd.read_parquet(parquet)) == 4  # one row per job, as csv and json
    assert farm("results", run_id, "--db", db, "--format", "parquet", "--raw", "-o", str(parquet)).returncode == 0
    assert len(pd.read_parquet(parquet)) == 12
    runs = farm("runs", "--db", db).stdout
    assert run_id in runs and "smoke" in runs
    assert "done=4" in farm("status", run_id, "--db", db).stdout


def test_submit_to_postgres_and_cancel(tmp_path: Path, pg_url: str) -> None:
    sweep = tmp_path / "s.yaml"
    sweep.write_text((REPO / "jobs" / "smoke.yaml").read_text().replace("  - farm-mini\n", "")
                     .replace("repetitions: 3", "repetitions: 2"))
    proc = farm("submit", str(sweep), "--db", pg_url)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_id = re.search(r"run (\d{8}-\d{6}-[0-9a-f]{4})", proc.stdout).group(1)  # type: ignore[union-attr]
    rows = json.loads(farm("results", run_id, "--db", pg_url, "--format", "json", "--raw").stdout)
    assert len(rows) == 2 * 2
    assert farm("cancel", run_id, "--db", pg_url).returncode == 0  # an ended run: nothing to cancel, no error
    missing = farm("results", "nope", "--db", pg_url)
    assert missing.returncode == 2 and "no run 'nope'" in missing.stderr
