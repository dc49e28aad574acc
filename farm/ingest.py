"""Outputs run by hand, loaded into the store so they join results, compare and dashboards (``farm ingest``).

Every file is parsed first, by the named backend's own parser (the one its jobs use): llama-bench JSON,
JSONL, CSV or markdown; MNN's llm_bench table; ExecuTorch's PyTorchObserver lines; mllm's per-run lines;
ONNX Runtime GenAI's model_benchmark report; MLC's /stats line or benchmark CSV. A file that does not
parse stops the import with the reason before anything is written. Then one run (kind ``ingest``) gets one
done job per test found, its repetitions stored through the Store like any agent's result, with the file's
sha256, the engine's own definitions and figures as provenance. A test an engine reported without a
per-phase split (MNN ≤ 3.6.1's blended pp+tg rate) is listed as skipped, with the reason.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from farm.backends.base import Measured
from farm.errors import ConfigError, JobError
from farm.jobs import Job, JobResult, ModelRef, job_id_for


@dataclass
class Ingested:
    run_id: str
    jobs: int = 0
    rows: int = 0
    skipped: list[str] = field(default_factory=list)


def parse_file(backend: str, path: Path, cell: tuple[int, int] | None = None) -> list[Measured]:
    """Every test in one output file, by `backend`'s parser; ConfigError naming the file when it does not parse."""
    from farm.backends import BACKENDS
    from farm.backends.prebuilt import PrebuiltBackend

    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from None
    cls = BACKENDS.get(backend)
    try:
        if backend == "llamacpp":
            from farm.backends.llamacpp import measured

            tests = measured(text)
        elif isinstance(cls, type) and issubclass(cls, PrebuiltBackend):
            tests = cls.parse_text(text, cell)
        else:
            raise ConfigError(f"backend {backend!r} has no output parser for ingest (llamacpp, mnn, executorch, "
                              f"mllm, ortgenai, mlc have)")
    except JobError as exc:
        raise ConfigError(f"{path}: not {backend} output: {exc}") from None
    if not tests:
        raise ConfigError(f"{path}: no {backend} result in it")
    return tests


def ingest(store: Any, backend: str, files: list[Path], *, device: str, model: str, quant: str = "unknown",
           profile: str = "manual", threads: int | None = None, cell: tuple[int, int] | None = None) -> Ingested:
    """Parse every file, then store them as one run; nothing is stored unless every file parses."""
    from farm.store.store import new_run_id

    parsed = [(path, parse_file(backend, path, cell)) for path in files]
    run_id = new_run_id()
    out = Ingested(run_id)
    jobs: list[Job] = []
    results: list[JobResult] = []
    for path, tests in parsed:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        for i, t in enumerate(tests):
            if not t.repetitions:
                out.skipped.append(f"{path.name} {t.test}: {t.reported.get('note', 'no repetition')}")
                continue
            key = {"file": digest, "index": i, "test": t.test}
            job = Job(job_id=job_id_for(run_id, key), run_id=run_id, index=len(jobs), device=device, profile=profile,
                      backend=backend, model=ModelRef(card=model), quant=quant, n_prompt=t.n_prompt, n_gen=t.n_gen,
                      n_depth=t.n_depth, threads=t.threads or threads or 0, repetitions=len(t.repetitions), warmup=0,
                      power=False, thermal_gate=False)
            jobs.append(job)
            results.append(JobResult(
                job_id=job.job_id, run_id=run_id, device=device, status="done", agent="ingest",
                repetitions=t.repetitions,
                provenance={"ingested_from": str(path), "file_sha256": digest, "summary_only": t.summary_only,
                            "reported": t.reported, "quant": quant, "threads": job.threads}))
    if not jobs:
        raise ConfigError(f"no test with a per-phase result in {', '.join(map(str, files))}: "
                          + "; ".join(out.skipped))
    store.create_run(f"ingest-{backend}", jobs, run_id=run_id, kind="ingest",
                     meta={"files": [str(p) for p in files], "backend": backend})
    store.save_results(results, jobs)
    store.finish_run_if_complete(run_id)
    out.jobs, out.rows = len(jobs), sum(len(r.repetitions) for r in results)
    return out
