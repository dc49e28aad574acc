"""The in-process executor: the embedded default. No server; one worker thread per device.

Each device is an exclusive lease held by its thread. A job that hits an infrastructure error
moves to another device of the same profile among the run's devices (or retries on its own
device after a reconnect), up to MAX_ATTEMPTS; a failing benchmark is stored as data at once.
"""

from __future__ import annotations

import queue
import threading

from farm.agent.devices import DevicePool
from farm.agent.runner import run_job
from farm.errors import InfraError, error_class_of
from farm.executors.base import MAX_ATTEMPTS, Executor, ProgressCallback, ProgressEvent, retry_target
from farm.jobs import Job, JobResult


class LocalExecutor(Executor):
    name = "local"
    blocking = True

    def submit(self, run_id: str, jobs: list[Job], progress: ProgressCallback | None = None) -> None:
        pool = DevicePool(self.inventory)
        devices = sorted({j.device for j in jobs})
        queues: dict[str, queue.Queue[tuple[Job, int, set[str]] | None]] = {d: queue.Queue() for d in devices}
        pending = len(jobs)
        cond = threading.Condition()
        lease_s = 3600.0

        def emit(job: Job, status: str, detail: str = "") -> None:
            if progress is not None:
                progress(ProgressEvent(job, status, detail))

        def finished() -> None:
            nonlocal pending
            with cond:
                pending -= 1
                cond.notify_all()

        def worker(device: str) -> None:
            q = queues[device]
            while True:
                item = q.get()
                if item is None:
                    return
                job, attempt, tried = item
                if self.store.is_cancelled(run_id) or not self.store.claim(job.job_id, "local", lease_s):
                    finished()
                    continue
                moved = job.model_copy(update={"device": device})
                emit(moved, "started")
                try:
                    result = run_job(moved, pool.entry(device), pool.profile(device), pool.transport(device),
                                     attempt=attempt, agent="local",
                                     on_stage=lambda s, j=moved: emit(j, f"stage:{s}"))
                except Exception as exc:  # a bug must not hang the run: store it as a failed job
                    if not isinstance(exc, InfraError):
                        result = JobResult(job_id=job.job_id, run_id=run_id, device=device, status="failed",
                                           error_class="bug", error=f"{type(exc).__name__}: {exc}",
                                           attempt=attempt, agent="local")
                        self.store.save_result(result, moved)
                        emit(moved, "failed", result.error or "")
                        finished()
                        continue
                    pool.drop(device)
                    self.store.record_device_failure(device, str(exc))
                    tried = tried | {device}
                    target = retry_target(job, self.inventory, tried, self.store.quarantined(), set(devices))
                    if attempt < MAX_ATTEMPTS and target is not None:
                        self.store.requeue(job.job_id, f"infra on {device}: {exc}")
                        emit(moved, "retry", f"{exc} → {target}")
                        queues[target].put((job, attempt + 1, tried))
                        continue
                    result = JobResult(job_id=job.job_id, run_id=run_id, device=device, status="failed",
                                       error_class=error_class_of(exc), error=str(exc), attempt=attempt,
                                       agent="local")
                self.store.save_result(result, moved)
                emit(moved, result.status, result.error or "")
                finished()

        threads = [threading.Thread(target=worker, args=(d,), name=f"farm-{d}", daemon=True) for d in devices]
        for t in threads:
            t.start()
        for job in jobs:
            queues[job.device].put((job, 1, set()))
        with cond:
            cond.wait_for(lambda: pending <= 0)
        for d in devices:
            queues[d].put(None)
        for t in threads:
            t.join()
        pool.close()
        self.store.finish_run_if_complete(run_id)
