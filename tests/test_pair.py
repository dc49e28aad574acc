"""farm-pair: two engine builds in lock step, one timed phase each, and the reference backend's view of it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from farm.backends.reference import ReferenceBackend
from farm.engine import build
from farm.errors import JobError
from farm.jobs import Job, ModelRef
from farm.transports.base import CommandResult
from farm.zoo.writer import write_gguf
from tests.engine_ref import tiny_arch

P, G, REPS, WARMUP = 8, 6, 3, 1


@pytest.fixture(scope="module")
def pair() -> Path:
    return build(program="farm-pair").path


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gguf(tiny_arch("llama"), tmp_path_factory.mktemp("pair") / "tiny-q8_0.gguf", "q8_0", seed=3)


def bench_argv(engine: Path, model: Path, *extra: str, n_gen: int = G) -> list[str]:
    return [str(engine), "bench", "-m", str(model), "-p", str(P), "-n", str(n_gen), "-r", str(REPS),
            "-w", str(WARMUP), "--lockstep", "3,4", *extra]


def run_pair(pair: Path, a: list[str], b: list[str], *opts: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(pair), *opts, "--", *a, "--", *b], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("first", ["A", "B"])
def test_turns_alternate_abba_one_phase_at_a_time(pair: Path, engine: Path, model: Path, first: str) -> None:
    res = run_pair(pair, bench_argv(engine, model), bench_argv(engine, model), "--first", first)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    phases = (REPS + WARMUP) * (1 + G)  # every repetition's prefill and each decode step
    assert out["interleave"] == "step" and out["turns"] == [phases, phases]
    a, b = out["A"]["repetitions"], out["B"]["repetitions"]
    assert out["A"]["lockstep"] is True and len(a) == len(b) == REPS + WARMUP
    for r, (ra, rb) in enumerate(zip(a, b, strict=True)):
        # Turn pairs go A B | B A | ...: repetition r's prefills are turn pair r·(1+G), so who goes first
        # alternates with r (1 + G = 7 is odd), and the two prefills never overlap.
        a_first = (r * (1 + G)) % 2 == (0 if first == "A" else 1)
        early, late = (ra, rb) if a_first else (rb, ra)
        assert early["prefill_end_ns"] <= late["prefill_start_ns"]
        # The decodes interleave: each side's decode spans the other's, and its time is only its steps.
        assert ra["decode_start_ns"] < rb["decode_end_ns"] and rb["decode_start_ns"] < ra["decode_end_ns"]
        for x in (ra, rb):
            assert x["decode_ns"] == sum(x["decode_token_ns"]) < x["decode_end_ns"] - x["decode_start_ns"]


def test_a_failing_side_is_named_and_stops_the_other(pair: Path, engine: Path, model: Path, tmp_path: Path) -> None:
    res = run_pair(pair, bench_argv(engine, model), bench_argv(engine, tmp_path / "missing.gguf"))
    assert res.returncode == 2 and res.stdout == ""
    assert f"farm-pair: B ({engine}) exited 2" in res.stderr and "cannot open" in res.stderr
    with pytest.raises(JobError, match=r"^B: farm-engine exited 2"):
        ReferenceBackend(lockstep_with={}).parse(CommandResult("pair", 2, res.stdout, res.stderr, 0.1), _job())

    res = run_pair(pair, [str(tmp_path / "no-engine")], bench_argv(engine, model))
    assert res.returncode == 127 and "farm-pair: A (" in res.stderr and "cannot run" in res.stderr


def test_unequal_sides_and_bad_usage_are_refused(pair: Path, engine: Path, model: Path) -> None:
    res = run_pair(pair, bench_argv(engine, model), bench_argv(engine, model, n_gen=G + 1))
    assert res.returncode == 3 and "not the same measurement" in res.stderr and res.stdout == ""
    for argv in ([], ["--first", "C", "--", "x", "--", "y"], ["--", str(engine)], ["--", "--", str(engine)]):
        bad = subprocess.run([str(pair), *argv], capture_output=True, text=True, timeout=30)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and bad.stderr.startswith("farm-pair: "), argv


def _job() -> Job:
    return Job(job_id="r-0-000AB", run_id="r", index=0, device="local", profile="host-auto", backend="reference",
               model=ModelRef(card="farm-tiny"), quant="q8_0", n_prompt=P, n_gen=G, threads=1, repetitions=REPS,
               warmup=WARMUP)


def test_reference_backend_runs_both_builds_and_labels_each_repetition(pair: Path, engine: Path,
                                                                       model: Path) -> None:
    backend = ReferenceBackend(lockstep_with={}, first="B")
    argv = backend.command(_job(), {"pair": str(pair), "engine": str(engine), "engine_b": str(engine),
                                    "model": str(model)})
    assert argv[:4] == [str(pair), "--first", "B", "--"] and argv.count("--lockstep") == 2
    res = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = backend.parse(CommandResult(" ".join(argv), 0, res.stdout, res.stderr, 1.0), _job())
    reps = out.repetitions
    assert [(r.rep, r.variant) for r in reps] == [(i, "AB"[i % 2]) for i in range(2 * REPS)]
    assert all(r.decode_tps and r.decode_step_tps and r.prefill_tps for r in reps)
    # Phase spans overlap in lock step: none is given, so no power sample is attributed to one side.
    assert all(r.decode_start_ns is None and r.prefill_start_ns is None for r in reps)
    assert out.raw["interleave"] == "step" and out.raw["turns"][0] == out.raw["turns"][1]
