"""Running a stored run to its end, for `farm submit` and `farm resume`: a value, not a print.

The CLI parses, calls :func:`run_jobs` (or :func:`resume`) and prints the :class:`RunOutcome`;
its exit code is the run's: 0 every job done, 1 a job failed (the benchmark failed: engine exit,
unparseable output), 3 infrastructure (a device, the store or the broker failed the job),
130 interrupted (Ctrl-C/SIGTERM; `farm resume RUN` finishes it without repeating finished jobs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from farm.devices import Inventory, load_inventory
from farm.errors import ConfigError, FarmError
from farm.executors import EXECUTORS
from farm.executors.base import ProgressEvent
from farm.jobs import Job
from farm.store import Store

EXIT_DONE, EXIT_JOB_FAILED, EXIT_BAD_INPUT, EXIT_INFRA, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


@dataclass
class RunOutcome:
    run_id: str
    status: str  # done | failed | cancelled | interrupted | queued/running (dispatched, not awaited)
    exit_code: int
    failures: dict[str, int]  # failed jobs per error class
    error: str = ""  # why the run stopped early (interrupted, store gone)


def outcome(store: Store, run_id: str, error: str = "", interrupted: bool = False) -> RunOutcome:
    """The run's state as an outcome: its exit code from what its jobs ended as."""
    status = store.finish_run_if_complete(run_id) or store.get_run(run_id).status
    failures = store.failure_classes(run_id)
    if interrupted or status == "interrupted":
        code = EXIT_INTERRUPTED
    elif any(cls not in ("infra", "cancelled") for cls in failures):
        code = EXIT_JOB_FAILED  # the benchmark itself failed: what an engine CI must see
    elif failures.get("infra") or error:
        code = EXIT_INFRA
    elif status == "cancelled":
        code = EXIT_JOB_FAILED
    else:
        code = EXIT_DONE
    return RunOutcome(run_id, status, code, failures, error)


def run_jobs(store: Store, inventory: Inventory, run_id: str, executor_name: str, jobs: list[Job], *,
             wait: bool = True, progress: Callable[[ProgressEvent], None] | None = None,
             watch: Callable[[Store, str], object] | None = None) -> RunOutcome:
    """Dispatch `jobs` of the stored run `run_id`; with the in-process executor (or `wait`), until it ends."""
    executor = EXECUTORS.get(executor_name)(store, inventory)
    try:
        executor.submit(run_id, jobs, progress=progress) if executor.blocking else executor.submit(run_id, jobs)
    except FarmError as exc:
        if exc.exit_code == EXIT_INTERRUPTED:
            return outcome(store, run_id, str(exc), interrupted=True)
        if exc.exit_code != EXIT_INFRA:
            raise
        return RunOutcome(run_id, "interrupted", EXIT_INFRA, {}, str(exc))  # the store itself may be gone
    if not executor.blocking:
        if not wait:
            run = store.get_run(run_id)
            return RunOutcome(run_id, run.status, EXIT_DONE, {})
        if watch is not None:
            watch(store, run_id)
    return outcome(store, run_id)


def resume(store: Store, run_id: str, devices_path: str | None = None, *,
           progress: Callable[[ProgressEvent], None] | None = None, wait: bool = True,
           watch: Callable[[Store, str], object] | None = None) -> RunOutcome:
    """Finish an interrupted run: its queued jobs run; finished jobs (and their repetitions) stay as stored."""
    run = store.get_run(run_id)
    if run.status in ("done", "failed", "cancelled"):
        raise ConfigError(f"run {run.id} is {run.status}: nothing to resume")
    if run.holder is not None:
        raise ConfigError(f"run {run.id} is being run by {run.holder}")
    jobs = store.jobs(run.id, status=["queued"])
    if not jobs:
        return outcome(store, run.id)
    inventory = load_inventory(devices_path or (run.meta or {}).get("devices_path"))
    known = {d.name for d in inventory.devices}
    missing = sorted({j.device for j in jobs} - known)
    if missing:
        raise ConfigError(f"run {run.id}: device(s) {', '.join(missing)} not in the inventory; pass --devices")
    return run_jobs(store, inventory, run.id, run.executor, jobs, wait=wait, progress=progress, watch=watch)
