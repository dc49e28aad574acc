"""The A/B schedule of an engine regression: ABBA pairs per device, the builds made before it, its run.

Schedule. Every planned cell (model × quant × test × threads on a device) becomes ``pairs`` pairs of
jobs, ordered A B | B A | A B | ... on that device: each A runs next to a B, inside the same thermal and
load window, and the alternation cancels a linear drift and any first/second-position effect. A job is
one engine process with its warm-up and ``block`` timed repetitions (default 1). One repetition per
process is deliberate: memory layout, page placement and frequency decisions differ per process, so
repetitions inside one process are correlated and would understate the noise; a new process per
sample lets the noise estimate see every source that differs between two CI runs.

Step interleaving (``interleave="step"``, the default where the engine supports it). A job runs both
builds at once under ``farm-pair``, which hands out turns of one timed phase (a prefill, one decode
step) in the order A B | B A | ...: the two builds see the same host milliseconds apart instead of a
process apart (~0.1-1 s). On a shared host whose speed changes at the scale of a repetition this is the
difference between a 15% and a ~1% pair-to-pair spread. Each job is one pair (``block`` repetitions
per side); its rows carry the variant, numbered rep = 2·i + side. Energy is not attributed in this
mode (both builds share every power sample): judge energy with ``interleave="process"``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from farm.devices import DeviceProfile, Inventory
from farm.errors import ConfigError
from farm.jobs import Job
from farm.store import Store


@dataclass(frozen=True)
class Side:
    """One side of a comparison: a label, the backend options that select its build, and provenance."""

    name: str  # "A" (base) | "B" (head)
    options: dict[str, Any]
    describe: dict[str, Any]


INTERLEAVES = ("step", "process")
# How each interleaving is named to people (progress, verdict headers, noise tables).
INTERLEAVED = {"step": "interleaved per timed phase (lock step)", "process": "interleaved per process"}


def ab_jobs(base: list[Job], sides: tuple[Side, Side], pairs: int, block: int = 1,
            interleave: str = "process") -> list[Job]:
    """Expand planned cells into the ABBA schedule: per device, `pairs` pairs per cell, `block` reps per job
    and side; `interleave` "process" makes a job per side, "step" one lock-step job per pair."""
    if pairs < 2:
        raise ConfigError("an A/B comparison needs at least 2 pairs (repetitions per side ≥ 2)")
    if interleave not in INTERLEAVES:
        raise ConfigError(f"interleave must be one of {', '.join(INTERLEAVES)}, got {interleave!r}")
    out: list[Job] = []
    for cell in sorted(base, key=lambda j: j.index):
        for p in range(pairs):
            order = sides if p % 2 == 0 else (sides[1], sides[0])
            tags = {**cell.tags, "pair": str(p), "cell": cell.job_id, "interleave": interleave}
            if interleave == "step":  # one job, both builds; who takes the first turn alternates too
                out.append(cell.model_copy(update={
                    "job_id": f"{cell.job_id}-{p:03d}AB", "repetitions": block,
                    "backend_options": {**cell.backend_options, **sides[0].options,
                                        "lockstep_with": {**cell.backend_options, **sides[1].options},
                                        "first": order[0].name},
                    "tags": {**tags, "variant": "AB"}}))
                continue
            for side in order:
                out.append(cell.model_copy(update={
                    "job_id": f"{cell.job_id}-{p:03d}{side.name}",
                    "backend_options": {**cell.backend_options, **side.options},
                    "repetitions": block,
                    "tags": {**tags, "variant": side.name},
                }))
    # Devices run in parallel, each in Job.index order: a stable sort by device keeps each one's ABBA.
    ordered = sorted(out, key=lambda j: j.device)
    return [j.model_copy(update={"index": i}) for i, j in enumerate(ordered)]


def step_interleave_supported(backend: str, sides: tuple[Side, Side]) -> bool:
    """Whether `backend` can run these two builds in lock step (see the module docstring)."""
    from farm.backends import get_backend

    return get_backend(backend, **sides[0].options).can_interleave_steps(sides[1].options)


def prebuild(jobs: list[Job], profiles: dict[str, DeviceProfile],
             on_build: Callable[[str], None] | None = None) -> dict[str, dict[str, Any]]:
    """Build every variant's engine for every target before the first timed job (a llama.cpp build takes
    minutes and would heat the host in the middle of the schedule). Returns provenance per variant."""
    from farm.backends import get_backend

    done: dict[tuple, dict[str, Any]] = {}
    per_variant: dict[str, dict[str, Any]] = {}
    for job in jobs:
        profile = profiles[job.profile]
        key = (job.tags.get("variant"), job.backend, profile.engine_target, repr(sorted(job.backend_options.items())))
        if key in done:
            continue
        if on_build is not None:
            on_build(f"{job.tags.get('variant')}: {job.backend} for {profile.engine_target}")
        backend = get_backend(job.backend, **job.backend_options)
        ok, why = backend.accepts(job, profile)
        if not ok:
            raise ConfigError(f"backend {job.backend} cannot run {job.test} on {profile.name}: {why}")
        prov = backend.prepare(job, profile).provenance
        done[key] = prov
        for variant, p in (prov.get("variants") or {str(job.tags.get("variant")): prov}).items():
            per_variant.setdefault(variant, {
                k: p.get(k) for k in ("engine", "engine_commit", "engine_build", "build_flags", "target", "compiler")})
    return per_variant


def execute(store: Store, inventory: Inventory, run_id: str, jobs: list[Job],
            progress: Callable[[Any], None] | None = None) -> None:
    """Run the schedule on the in-process executor (one thread per device, jobs in Job.index order)."""
    from farm.executors.local import LocalExecutor

    for name in sorted({j.device for j in jobs}):
        entry = next(d for d in inventory.devices if d.name == name)
        store.upsert_device(name, entry.profile, entry.transport.kind)
    LocalExecutor(store, inventory).submit(run_id, jobs, progress=progress)
