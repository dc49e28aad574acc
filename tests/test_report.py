"""`farm report RUN --html`: one self-contained file with plots, tables and provenance."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd

from farm.report import render_report
from farm.web.seed import SYNTHETIC_NOTE, commit_hash
from tests.web_support import SEED_DEVICES, Seeded, seeded_sqlite  # noqa: F401

REPO = Path(__file__).resolve().parent.parent


def farm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "farm.cli.main", *args], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env={**os.environ, "COLUMNS": "200"})


def test_report_command_writes_a_self_contained_page(seeded_sqlite: Seeded, tmp_path: Path) -> None:  # noqa: F811
    run_id = seeded_sqlite.run_ids[3]
    out = tmp_path / "report.html"
    proc = farm("report", run_id[:22], "--db", seeded_sqlite.url, "--html", str(out))  # a unique prefix will do
    assert proc.returncode == 0, proc.stdout + proc.stderr
    html = out.read_text()
    assert not re.search(r"<script|<link|<img[^>]+src=\"http|url\(http|@import", html), "must not load anything"
    assert html.count("<svg") >= 6 and html.count('class="pt') >= 60 * 4  # 60 jobs on each bar chart
    assert "Pareto" in html and "front" in html
    for device in SEED_DEVICES:
        assert device in html
    # provenance: the run's engine commit, and the warnings a reader must not miss
    assert commit_hash(3) in html and SYNTHETIC_NOTE.split(" (")[0] in html
    assert "labelled-synthetic figures" in html and "modelled" in html
    assert "± " in html  # mean ± sd over repetitions


def test_report_lists_failed_jobs_and_unknown_runs_fail_cleanly(seeded_sqlite: Seeded,  # noqa: F811
                                                                tmp_path: Path) -> None:
    html = render_report(seeded_sqlite.store, "synthetic-failures")
    assert "Failed jobs" in html and "device went offline during staging" in html
    proc = farm("report", "no-such-run", "--db", seeded_sqlite.url, "--html", str(tmp_path / "x.html"))
    assert proc.returncode == 2 and "no run 'no-such-run'" in proc.stderr
    assert not (tmp_path / "x.html").exists()


def test_results_parquet_for_notebooks(seeded_sqlite: Seeded, tmp_path: Path) -> None:  # noqa: F811
    path = tmp_path / "run.parquet"
    proc = farm("results", seeded_sqlite.run_ids[0], "--db", seeded_sqlite.url, "--format", "parquet", "--raw",
                "-o", str(path))  # every repetition; without --raw one row per job, as csv and json
    assert proc.returncode == 0, proc.stderr
    df = pd.read_parquet(path)
    assert len(df) == 60 * 5 and {"decode_tps", "prefill_j_per_tok", "engine_commit", "rep"} <= set(df.columns)
