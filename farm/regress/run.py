"""A regression verdict as a function: build two revisions, run them ABBA, judge; and the A/A noise run.

``run_regression(...) -> Verdict`` and ``run_noise(...) -> NoiseTable`` are callable from Python apart
from the CLI (as asv's ``Continuous.run``): they plan, build, store and run the schedule and read the
verdict back. Nothing here prints; ``on_message`` gets the lines a person follows the run by, and
``progress`` every job event. ``farm regress`` / ``farm noise`` only parse options, print the result
and map it to an exit code.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from farm.analysis import compare
from farm.errors import ConfigError, JobError
from farm.regress.results import analyse, failed_jobs, load_noise, record_builds, save_noise
from farm.regress.schedule import INTERLEAVED, Side, ab_jobs, execute, prebuild, step_interleave_supported
from farm.store import Store

Message = Callable[[str], None]
Progress = Callable[[Any], None]  # farm.executors.base.ProgressEvent


@dataclass
class Verdict:
    """What `farm regress` decided, with what it needs to say why."""

    run_id: str
    sweep_name: str
    base: dict[str, Any]  # the A side as stored: rev, commit, subject
    head: dict[str, Any]  # the B side
    pairs: int
    interleave: str  # "step" | "process"
    threshold: float
    alpha: float
    report: compare.Report
    failed: dict[str, list[str]] = field(default_factory=dict)  # errors of failed jobs per variant
    builds: dict[str, dict[str, Any]] | None = None  # provenance of each variant's engine

    @property
    def head_broke(self) -> bool:
        """The head fails where the base runs: a regression whatever the numbers say."""
        return bool(self.failed.get("B")) and not self.failed.get("A")

    @property
    def regressed(self) -> bool:
        return bool(self.report.regressions) or self.head_broke


@dataclass
class NoiseTable:
    """An A/A run's noise per (device, cell, metric): sd of pair log-ratios and the MDE it implies."""

    run_id: str
    rev: str
    interleave: str
    rows: list[dict[str, Any]]


def side(name: str, engine: str | Path | None, rev: str, backend: str, subdir: str | None,
         flags: Sequence[str]) -> Side:
    """One side of a comparison: `rev` of the engine repository `engine` (None: the sweep's own build)."""
    from farm.engine_builds import checkout

    if engine is None:  # the sweep's own build (the bundled engine / the pinned llama.cpp)
        return Side(name, {"flags": list(flags)} if flags else {}, {"rev": "bundled"})
    src = checkout(engine, rev, backend, subdir)
    return Side(name, src.backend_options(list(flags)), {"rev": rev, "commit": src.commit, "subject": src.subject})


def _plan(sweep_path: str, devices_path: str | None, run_id: str):  # -> (Sweep, Inventory, Plan, backend)
    from farm.devices import load_inventory
    from farm.plan import make_plan
    from farm.spec import load_sweep

    sweep = load_sweep(sweep_path)
    inventory = load_inventory(devices_path)
    plan = make_plan(sweep, inventory, run_id)
    if not plan.jobs:
        raise ConfigError(f"{sweep_path}: the sweep plans no job")
    backends = sorted({j.backend for j in plan.jobs})
    if len(backends) != 1:
        raise ConfigError(f"{sweep_path}: an engine comparison needs exactly one backend, got {', '.join(backends)}")
    return sweep, inventory, plan, backends[0]


def _run_ab(kind: str, sweep_path: str, devices_path: str | None, db_url: str | None,
            sides_for: Callable[[str], tuple[Side, Side]], block: int, interleave: str, meta: dict[str, Any],
            on_message: Message, progress: Progress | None):  # -> (store, run_id, sweep)
    from farm.store import new_run_id

    run_id = new_run_id()
    sweep, inventory, plan, backend = _plan(sweep_path, devices_path, run_id)
    sides = sides_for(backend)
    can_step = step_interleave_supported(backend, sides)
    if interleave == "step" and not can_step:
        raise ConfigError(f"--interleave step: backend {backend} cannot run these two builds in lock step "
                          "(an engine without --lockstep, or another backend); use --interleave process")
    if interleave == "auto":
        interleave = "step" if can_step else "process"
    pairs = math.ceil(sweep.repetitions / block)
    jobs = ab_jobs(plan.jobs, sides, pairs=pairs, block=block, interleave=interleave)
    on_message(f"run {run_id}: building {len({s.options.get('engine_commit') for s in sides})} engine build(s)")
    provenance = prebuild(jobs, plan.profiles, on_build=lambda what: on_message(f"  build {what}"))
    store = Store(db_url)
    store.create_run(sweep.name, jobs, run_id=run_id, kind=kind, sweep_yaml=Path(sweep_path).read_text(),
                     sweep_digest=sweep.digest(), priority=sweep.priority,
                     meta={**meta, "pairs": pairs, "block": block, "interleave": interleave,
                           "sides": {s.name: s.describe for s in sides},
                           "builds": provenance})
    record_builds(store, backend, provenance)
    on_message(f"run {run_id}: {len(jobs)} jobs ({pairs} ABBA pairs × {len(plan.jobs)} cell(s), {block} rep/side, "
               f"{INTERLEAVED[interleave]})")
    execute(store, inventory, run_id, jobs, progress=progress)
    return store, run_id, sweep


def _quiet(_: str) -> None:
    pass


def run_regression(engine: str | Path, base: str, head: str, *, sweep_path: str = "jobs/regression.yaml",
                   engine_subdir: str | None = None, flags: Sequence[str] = (), block: int = 1,
                   interleave: str = "auto", threshold: float = 0.03, alpha: float = 0.05,
                   db_url: str | None = None, devices_path: str | None = None,
                   on_message: Message = _quiet, progress: Progress | None = None) -> Verdict:
    """Build `base` (A) and `head` (B) of the engine repository `engine`, run them ABBA on each device of the
    sweep, and judge every metric against max(`threshold`, MDE) at `alpha`.

    Raises ConfigError for bad input (before anything runs) and JobError when no repetition is comparable."""
    def sides(backend: str) -> tuple[Side, Side]:
        return (side("A", engine, base, backend, engine_subdir, flags),
                side("B", engine, head, backend, engine_subdir, flags))

    store, run_id, sweep = _run_ab("regress", sweep_path, devices_path, db_url, sides, block, interleave,
                                   {"engine": str(Path(engine).resolve()), "base": base, "head": head,
                                    "threshold": threshold, "alpha": alpha}, on_message, progress)
    run = store.get_run(run_id)
    devices = {j.device for j in store.jobs(run_id)}
    interleave = run.meta["interleave"]
    report = analyse(store, run_id, threshold=threshold, alpha=alpha,
                     noise=load_noise(store, devices, interleave))
    failed = failed_jobs(store, run_id)
    if not report.results and not failed:
        raise JobError(f"run {run_id}: no comparable repetitions")
    return Verdict(run_id=run_id, sweep_name=sweep.name, base=run.meta["sides"]["A"], head=run.meta["sides"]["B"],
                   pairs=run.meta["pairs"], interleave=interleave, threshold=threshold, alpha=alpha, report=report,
                   failed=failed, builds=run.meta.get("builds"))


def run_noise(engine: str | Path | None = None, rev: str = "HEAD", *, sweep_path: str = "jobs/regression.yaml",
              engine_subdir: str | None = None, block: int = 1, interleave: str = "auto", alpha: float = 0.05,
              db_url: str | None = None, devices_path: str | None = None,
              on_message: Message = _quiet, progress: Progress | None = None) -> NoiseTable:
    """Run one build against itself (A/A) on each device; store its noise where `run_regression` finds it."""
    def sides(backend: str) -> tuple[Side, Side]:
        one = side("A", engine, rev, backend, engine_subdir, ())
        return one, Side("B", one.options, one.describe)

    store, run_id, _ = _run_ab("noise", sweep_path, devices_path, db_url, sides, block, interleave,
                               {"engine": None if engine is None else str(engine), "rev": rev, "alpha": alpha},
                               on_message, progress)
    report = analyse(store, run_id, threshold=0.0, alpha=alpha)
    table = compare.noise_table(report)
    save_noise(store, run_id, table)
    return NoiseTable(run_id=run_id, rev=rev, interleave=store.get_run(run_id).meta["interleave"], rows=table)
