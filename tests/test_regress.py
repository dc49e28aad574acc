"""farm regress / noise / compare on real commits of the reference engine, run on this host.

The engine repository is a temporary git repo: A = farm/engine/src, B = A + a calibrated busy loop in
the decode path costing ~15% of decode t/s (bench/regression_power.py documents it and measures the
detection rate of a 5% slowdown), A2 = A + a comment.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.regression_power import make_engine_repo, spin_iterations
from farm.engine_builds import checkout, resolve_commit
from farm.errors import ConfigError
from farm.jobs import Job, ModelRef
from farm.regress import Side, ab_jobs

SLOWDOWN = 0.15
SWEEP = """version: 1
name: regress-test
models: [farm-mini]
quants: [q4_0]
prompt_tokens: [32]
gen_tokens: [32]
threads: [1]
repetitions: {reps}
warmup: 1
thermal_gate: false  # ABBA pairs run back to back by design; a 10 s cool-down window per job would
idle_s: 0            # make each test minutes long (the shipped defaults run in test_lab_profiles)
"""


def _job(i: int, device: str = "local") -> Job:
    return Job(job_id=f"r-{i}", run_id="r", index=i, device=device, profile="host-auto", backend="reference",
               model=ModelRef(card="farm-tiny"), quant="q4_0", n_prompt=8, n_gen=8, threads=1, repetitions=10,
               warmup=1)


def test_schedule_is_abba_per_device_with_one_rep_per_job() -> None:
    sides = (Side("A", {"engine_commit": "a"}, {}), Side("B", {"engine_commit": "b"}, {}))
    jobs = ab_jobs([_job(0), _job(1, "phone"), _job(2)], sides, pairs=4)
    local = [j for j in jobs if j.device == "local"]
    assert "".join(j.tags["variant"] for j in local) == "ABBAABBA" * 2
    assert [j.index for j in jobs] == sorted(j.index for j in jobs) and len({j.job_id for j in jobs}) == 24
    assert all(j.repetitions == 1 for j in jobs)
    assert {j.backend_options["engine_commit"] for j in jobs if j.tags["variant"] == "B"} == {"b"}
    assert [j.tags["pair"] for j in local[:4]] == ["0", "0", "1", "1"]
    with pytest.raises(ConfigError):
        ab_jobs([_job(0)], sides, pairs=1)


def test_step_schedule_is_one_lock_step_job_per_pair_with_alternating_first_turn() -> None:
    sides = (Side("A", {"engine_commit": "a"}, {}), Side("B", {"engine_commit": "b"}, {}))
    jobs = ab_jobs([_job(0), _job(1, "phone")], sides, pairs=4, block=2, interleave="step")
    assert len(jobs) == 8 and all(j.tags["variant"] == "AB" and j.tags["interleave"] == "step" for j in jobs)
    local = [j for j in jobs if j.device == "local"]
    assert [j.backend_options["first"] for j in local] == ["A", "B", "A", "B"]
    assert all(j.backend_options["engine_commit"] == "a" and j.repetitions == 2 for j in jobs)
    assert all(j.backend_options["lockstep_with"] == {"engine_commit": "b"} for j in jobs)
    assert [j.tags["pair"] for j in local] == ["0", "1", "2", "3"]
    with pytest.raises(ConfigError, match="interleave"):
        ab_jobs([_job(0)], sides, pairs=2, interleave="thread")


@pytest.fixture(scope="module")
def engine_repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    from farm.zoo.files import resolve_model

    model = resolve_model("farm-mini", "q4_0", 0)
    # Decode t/s ~15% lower: a verdict this test can hold on a busy CI runner. Detecting 5% with ≤ 10
    # repetitions per side is a rate, measured over many trials by bench/regression_power.py.
    spin, _ = spin_iterations(Path(model.path), 32, 32, SLOWDOWN, runs=3)
    repo = tmp_path_factory.mktemp("engine") / "repo"
    return repo, make_engine_repo(repo, spin)


def test_checkout_archives_each_commit_once(engine_repo: tuple[Path, dict[str, str]]) -> None:
    repo, shas = engine_repo
    assert resolve_commit(repo, "HEAD") == shas["A2"] and resolve_commit(repo, "HEAD~2") == shas["A"]
    a = checkout(repo, shas["A"][:8])
    assert a.commit == shas["A"] and (a.source_dir / "forward.c").exists() and a.source_dir.name == "src"
    assert "farm-regress-eval" in (checkout(repo, shas["B"]).source_dir / "forward.c").read_text()
    assert checkout(repo, "HEAD~2").tree == a.tree  # cached by commit
    assert a.backend_options(["-DX"]) == {"source_dir": str(a.source_dir), "engine_commit": shas["A"],
                                          "flags": ["-DX"]}
    with pytest.raises(ConfigError, match="no commit"):
        checkout(repo, "no-such-branch")
    with pytest.raises(ConfigError, match="not a git repository"):
        checkout(repo / "src", "HEAD")


def _farm(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "farm.cli.main", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=900)


def test_regress_flags_the_slow_head_and_passes_the_unchanged_one(engine_repo, tmp_path: Path) -> None:
    repo, shas = engine_repo
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(SWEEP.format(reps=10))
    db = f"sqlite:///{tmp_path / 'farm.db'}"
    common = ["--engine", str(repo), "--sweep", str(sweep), "--db", db]

    # The noise floor first: regress then shows the A/A MDE next to each verdict.
    noise = _farm("noise", "--engine", str(repo), "--rev", shas["A"], "--sweep", str(sweep), "--db", db,
                  cwd=tmp_path)
    assert noise.returncode == 0, noise.stderr
    assert "decode_tps" in noise.stdout and "MDE" in noise.stdout

    # One process per side: the mode that attributes energy (and the only one for engines without --lockstep).
    same = _farm("regress", *common, "--base", shas["A"], "--head", shas["A2"], "--json", "same.json",
                 "--interleave", "process", cwd=tmp_path)
    assert same.returncode == 0, same.stdout + same.stderr
    assert same.stdout.startswith("### ✅ farm regress: no regression") and "interleaved per process" in same.stdout
    assert json.loads((tmp_path / "same.json").read_text())["interleave"] == "process"

    # Both builds in lock step, a timed phase each (the default for an engine that knows --lockstep).
    slow = _farm("regress", *common, "--base", shas["A"], "--head", shas["B"], "--json", "slow.json", cwd=tmp_path)
    report = json.loads((tmp_path / "slow.json").read_text())
    assert report["interleave"] == "step" and "energy/token not judged" in slow.stdout
    # the shown base and head and the change are one statistic, and the comment says which
    assert "base, head and change: base: A's 20%-trimmed geometric mean" in slow.stdout
    shown = [r for r in report["results"] if r.get("base")]
    assert shown and all(r["head"] == pytest.approx(r["base"] * r["ratio"]) for r in shown)
    dec = next(r for r in report["results"] if r["metric"] == "decode_tps")
    assert dec["verdict"] != "improvement", slow.stdout
    assert report["head"]["commit"] == shas["B"] and report["base"]["commit"] == shas["A"]
    assert report["builds"]["A"]["engine_commit"] == shas["A"] and report["builds"]["B"]["engine_commit"] == shas["B"]
    # Provenance on every stored repetition; and compare works on any two stored runs.
    from farm.store import Store

    store = Store(db)
    df = store.results_frame(report["run_id"])
    assert set(df.groupby("variant")["engine_commit"].unique().map(tuple)) == {(shas["A"],), (shas["B"],)}
    runs = [r.id for r in store.runs() if r.kind == "regress"]
    cmp = _farm("compare", f"{runs[-1]}:B", f"{runs[0]}:B", "--db", db, cwd=tmp_path)  # head A2 → head B
    assert cmp.returncode == 0, cmp.stderr
    assert _farm("compare", f"{runs[0]}:C", runs[-1], "--db", db, cwd=tmp_path).returncode == 2
    assert "unpaired" in cmp.stdout and "| decode t/s (t/s) |" in cmp.stdout
    assert "base, head: median of each run's repetitions; change: ratio of the medians" in cmp.stdout

    # Decode speed is judged by two measures of one family (whole-decode t/s and the p10 of per-step times);
    # the verdict may come from either, whichever resolves the change on this host.
    decode = [r for r in report["results"] if r["metric"] in ("decode_tps", "decode_step_tps")]
    assert {r["metric"] for r in decode} == {"decode_tps", "decode_step_tps"}
    if min(r["mde"] for r in decode) >= 0.10 and slow.returncode == 0:
        # farm refused to call a change its own noise cannot resolve: the right answer on a host that
        # other jobs are loading (the figure is in the message). A CI runner short of that must detect it.
        pytest.xfail(f"host too noisy to resolve {SLOWDOWN:.0%}: decode MDE "
                     + ", ".join(f"{r['metric']} {r['mde']:.1%}" for r in decode))
    assert slow.returncode == 1, slow.stdout + slow.stderr
    assert re.match(r"### ❌ farm regress: decode t/s(, fast steps \(p10\))? on local", slow.stdout), slow.stdout
    flagged = [r for r in decode if r["verdict"] == "regression"]
    assert flagged and all(-0.30 < r["change"] < -0.06 for r in flagged), decode
    assert "(A/A)" in slow.stdout or "(this run)" in slow.stdout
    prefill = next(r for r in report["results"] if r["metric"] == "prefill_tps")
    assert prefill["verdict"] != "regression"  # the spin is in the decode path only


def test_regress_rejects_bad_input(engine_repo, tmp_path: Path) -> None:
    repo, shas = engine_repo
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(SWEEP.format(reps=10))
    res = _farm("regress", "--engine", str(repo), "--base", "nope", "--head", shas["B"], "--sweep", str(sweep),
                "--db", f"sqlite:///{tmp_path / 'x.db'}", cwd=tmp_path)
    assert res.returncode == 2 and "no commit 'nope'" in res.stderr


def test_paired_report_from_a_frame_and_its_markdown() -> None:
    import numpy as np
    import pandas as pd

    from farm.analysis import compare

    rng = np.random.default_rng(0)
    rows = []
    for pair in range(10):
        drift = 1 + 0.05 * pair  # the host slows down over the run: ABBA pairs cancel it
        for variant, k in (("A", 1.0), ("B", 0.94)):
            rows.append({"device": "pixel", "backend": "reference", "model": "m", "quant": "q4_0",
                         "test": "pp8+tg8", "threads": 4, "pair": pair, "rep": 0, "variant": variant,
                         "exit_status": 0, "decode_tps": 100 * k / drift * rng.lognormal(0, 0.005),
                         "prefill_tps": 500 / drift * rng.lognormal(0, 0.005), "ttft_s": None,
                         "peak_rss_bytes": 2**27, "decode_j_per_tok": None, "prefill_j_per_tok": None})
    df = pd.DataFrame(rows)
    rep = compare.compare_paired(df, threshold=0.03, alpha=0.05, noise={
        ("pixel", "reference", "m", "q4_0", "pp8+tg8", 4, "all", "default", "decode_tps"): 0.05})
    by = {r.metric.column: r for r in rep.results}
    assert by["decode_tps"].verdict.label == "regression" and by["decode_tps"].mde_source == "A/A"
    assert by["prefill_tps"].verdict.label == "no change" and by["peak_rss_bytes"].comparison.ratio == 1
    assert "ttft_s" not in by  # not measured: no row rather than a made-up one
    md = compare.markdown(rep, "t", [])
    assert "| pixel | reference m q4_0 pp8+tg8 t4 | decode t/s (t/s) |" in md and "❌ regression" in md
    # B missing for a metric that A measured: reported as no data, not silently dropped
    df.loc[df["variant"] == "B", "prefill_tps"] = None
    by = {r.metric.column: r for r in compare.compare_paired(df, threshold=0.03, alpha=0.05).results}
    assert by["prefill_tps"].comparison is None and "fewer than 2" in by["prefill_tps"].note


def test_run_regression_is_a_function_returning_the_verdict(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The verdict without the CLI (as asv's Continuous.run): a head whose engine fails every benchmark
    where the base runs is a regression; nothing is printed, the progress lines go to `on_message`."""
    from farm.regress import Verdict, run_regression
    from farm.store import Store

    repo = tmp_path / "repo"
    shas = make_engine_repo(repo, 1)
    main_c = repo / "src" / "main.c"
    text = main_c.read_text()
    bench_call = 'if (!strcmp(argv[1], "bench")) return cmd_bench(&o);'
    assert bench_call in text
    main_c.write_text(text.replace(bench_call, 'if (!strcmp(argv[1], "bench")) { fputs("head broke\\n", stderr); '
                                               "return 9; }"))
    subprocess.run(["git", "-C", str(repo), "commit", "-q", "-am", "C: bench exits 9"], check=True)
    broken = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(SWEEP.format(reps=2).replace("farm-mini", "farm-tiny"))
    db = f"sqlite:///{tmp_path / 'farm.db'}"
    messages: list[str] = []

    verdict = run_regression(repo, shas["A"], broken, sweep_path=str(sweep), interleave="process", db_url=db,
                             on_message=messages.append)
    assert isinstance(verdict, Verdict)
    assert verdict.base["commit"] == shas["A"] and verdict.head["commit"] == broken
    assert verdict.pairs == 2 and verdict.interleave == "process" and verdict.sweep_name == "regress-test"
    assert set(verdict.failed) == {"B"} and len(verdict.failed["B"]) == 2  # one failed job per pair
    assert "exited 9" in verdict.failed["B"][0] or "head broke" in verdict.failed["B"][0], verdict.failed
    assert verdict.head_broke and verdict.regressed
    assert messages[0] == f"run {verdict.run_id}: building 2 engine build(s)"
    assert messages[-1].startswith(f"run {verdict.run_id}: 4 jobs (2 ABBA pairs × 1 cell(s), 1 rep/side")
    assert capsys.readouterr().out == ""
    run = Store(db).get_run(verdict.run_id)
    assert run.kind == "regress" and run.meta["builds"]["B"]["engine_commit"] == broken

    same = run_regression(repo, shas["A"], shas["A2"], sweep_path=str(sweep), interleave="process", db_url=db)
    assert same.failed == {} and not same.head_broke and same.report.results
    assert same.regressed == bool(same.report.regressions)
