"""Labelled-synthetic store contents for dashboard tests, demos and the store benchmark.

Nothing here is a measurement. Figures come from a roofline-style model of each device profile
(decode bound by memory bandwidth, prefill by compute) with noise, a slow drift per engine commit
and one injected decode regression, so every dashboard panel has something to show. Rows go
through the store's real write path (``Store.create_run`` + ``Store.save_result`` with
``JobResult``s); every run is named ``synthetic-…``, carries ``meta.synthetic = true``, and every
result says ``provenance.synthetic = true`` and ``power.source = "synthetic"``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from farm.jobs import Job, JobResult, ModelRef, Repetition, job_id_for
from farm.zoo.arch import BYTES_PER_WEIGHT

SYNTHETIC_NOTE = "labelled-synthetic figures from farm.web.seed (a model of the device profiles), not measurements"
# device name -> (profile, GFLOP/s, GB/s, idle W, load W); after the profiles in device_profiles/
DEVICES = {
    "synthetic-pixel-8": ("pixel-8", 60.0, 30.0, 0.6, 5.5),
    "synthetic-galaxy-s24": ("galaxy-s24", 70.0, 35.0, 0.6, 6.0),
    "synthetic-orin-nano": ("jetson-orin-nano", 40.0, 50.0, 3.0, 9.0),
    "synthetic-rpi5": ("raspberry-pi-5", 25.0, 10.0, 2.5, 6.5),
    "synthetic-x86": ("x86-host", 200.0, 40.0, 15.0, 65.0),
}
MODELS = {"smollm2-360m": 362e6, "qwen2.5-0.5b": 494e6, "llama-3.2-1b": 1236e6, "qwen2.5-1.5b": 1544e6}
QUANTS = ["q4_0", "q8_0", "f16"]
SHAPES = [(512, 128)]


def commit_hash(i: int) -> str:
    return hashlib.sha1(f"synthetic-commit-{i}".encode()).hexdigest()


@dataclass
class SeedSpec:
    """How much to seed. Defaults make a small store (≈600 rows) in about a second."""

    runs: int = 6
    devices: list[str] = field(default_factory=lambda: list(DEVICES))
    models: list[str] = field(default_factory=lambda: list(MODELS))
    quants: list[str] = field(default_factory=lambda: list(QUANTS))
    shapes: list[tuple[int, int]] = field(default_factory=lambda: list(SHAPES))
    threads: list[int] = field(default_factory=lambda: [4])
    repetitions: int = 5
    regression_run: int = 3  # this run's commit slows decode on the first device by 15 %
    end: datetime = field(default_factory=lambda: datetime.now(UTC))
    every: timedelta = timedelta(hours=6)  # time between consecutive runs
    runs_per_commit: int = 1  # consecutive runs sharing an engine commit (nightly surveys between merges)
    seed: int = 7


def _figures(rng: random.Random, device: str, model: str, quant: str, n_prompt: int, n_gen: int,
             threads: int, slowdown: float) -> dict[str, Any]:
    _profile, gflops, gbs, idle_w, load_w = DEVICES[device]
    params = MODELS[model]
    weight_bytes = params * BYTES_PER_WEIGHT[quant]
    scale = min(1.0, 0.35 + 0.65 * threads / 4)  # fewer threads than big cores leave compute idle
    prefill_tps = gflops * 1e9 * 0.35 * scale / (2 * params) * rng.gauss(1, 0.03)
    decode_tps = gbs * 1e9 * 0.7 / weight_bytes * slowdown * rng.gauss(1, 0.025)
    prefill_s, decode_s = n_prompt / prefill_tps if n_prompt else None, n_gen / decode_tps if n_gen else None
    active_w = (load_w - idle_w) * rng.gauss(1, 0.04)
    rep: dict[str, Any] = {"n_prompt": n_prompt, "n_gen": n_gen, "prefill_s": prefill_s, "decode_s": decode_s,
                           "ttft_s": (prefill_s or 0) + (decode_s / n_gen if decode_s else 0) + 0.004,
                           "peak_rss_bytes": int(weight_bytes + 64 * 2**20 + (n_prompt + n_gen) * 2**17)}
    for phase, secs, toks in (("prefill", prefill_s, n_prompt), ("decode", decode_s, n_gen)):
        if secs:
            rep[f"{phase}_energy_j"] = active_w * secs
            rep[f"{phase}_j_per_tok"] = active_w * secs / toks
            rep[f"{phase}_avg_w"] = active_w + idle_w
    return rep


def _job(run_id: str, index: int, device: str, model: str, quant: str, n_prompt: int, n_gen: int,
         threads: int, reps: int) -> Job:
    cell = {"device": device, "model": model, "quant": quant, "pp": n_prompt, "tg": n_gen, "t": threads}
    return Job(job_id=job_id_for(run_id, cell), run_id=run_id, index=index, device=device,
               profile=DEVICES[device][0], backend="reference", model=ModelRef(card=model), quant=quant,
               n_prompt=n_prompt, n_gen=n_gen, threads=threads, repetitions=reps, warmup=1,
               tags={"synthetic": "true"})


def synthetic_runs(spec: SeedSpec) -> Iterator[tuple[str, list[Job], list[JobResult]]]:
    """(run name, jobs, results) per run, oldest first; run ids are filled in by the caller."""
    rng = random.Random(spec.seed)
    for r in range(spec.runs):
        commit = commit_hash(r // spec.runs_per_commit)
        finished = spec.end - spec.every * (spec.runs - 1 - r)
        run_id = f"synthetic-{finished:%Y%m%d-%H%M%S}-{r:04d}"
        jobs, results = [], []
        cells = [(d, m, q, pp, tg, t) for d in spec.devices for m in spec.models for q in spec.quants
                 for pp, tg in spec.shapes for t in spec.threads]
        for i, (d, m, q, pp, tg, t) in enumerate(cells):
            job = _job(run_id, i, d, m, q, pp, tg, t, spec.repetitions)
            c = r // spec.runs_per_commit
            drift = 1 + 0.01 * c  # commits slowly get faster ...
            slow = 0.85 if (c >= spec.regression_run and d == spec.devices[0]) else 1.0  # ... but one regresses
            throttled = rng.random() < (0.15 if "rpi5" in d else 0.02)
            at = finished - timedelta(seconds=(len(cells) - i) * 2)
            reps = [Repetition(rep=k, **_figures(rng, d, m, q, pp, tg, t, drift * slow * (0.97 if throttled else 1)))
                    for k in range(spec.repetitions)]
            jobs.append(job)
            results.append(JobResult(
                job_id=job.job_id, run_id=run_id, device=d, status="done", agent="synthetic",
                started_at=at - timedelta(seconds=1), finished_at=at, repetitions=reps,
                provenance={"engine_commit": commit, "synthetic": True, "note": SYNTHETIC_NOTE},
                thermal={"throttled": throttled}, power={"source": "synthetic", "modelled": True,
                                                         "charging": False}))
        yield run_id, jobs, results


def seed_store(store: Any, spec: SeedSpec | None = None) -> list[str]:
    """Write synthetic runs into `store` through its public write path; returns the run ids."""
    spec = spec or SeedSpec()
    run_ids = []
    for run_id, jobs, results in synthetic_runs(spec):
        store.create_run(f"synthetic-{run_id[-4:]}", jobs, run_id=run_id, kind="sweep", executor="synthetic",
                         meta={"synthetic": True, "note": SYNTHETIC_NOTE})
        save_many = getattr(store, "save_results", None)  # the bulk path, where the store has one
        if save_many is not None:
            save_many(results, jobs)
        else:
            for result, job in zip(results, jobs, strict=True):
                store.save_result(result, job)
        store.finish_run_if_complete(run_id)
        for d in {j.device for j in jobs}:
            store.upsert_device(d, DEVICES[d][0], "synthetic", agent="synthetic",
                                health={"synthetic": True, "battery_pct": 80})
        run_ids.append(run_id)
    return run_ids


if __name__ == "__main__":  # python -m farm.web.seed [DB_URL]: a demo store for `farm dashboard`
    import sys

    from farm.store import Store

    ids = seed_store(Store(sys.argv[1] if len(sys.argv) > 1 else None))
    print(f"seeded {len(ids)} synthetic runs: {ids[0]} … {ids[-1]}")
