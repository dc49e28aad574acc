"""The in-process executor's agent: this process runs the run's jobs, one worker thread per device.

The workers run each job through :func:`farm.agent.lifecycle.execute`, the code Celery and Ray
agents run: claim with a lease and heartbeat, the device lease, the retry rule, the spool. They
pull queued jobs of the run from the store, so a job the retry rule moved to another device is
picked up by that device's worker, and `farm resume` continues a run from what the store holds.

The process holds the run (``runs.holder``). Ctrl-C or SIGTERM stops what the jobs started on the
devices, puts running jobs back in the queue without counting the attempt, marks the run
``interrupted`` and raises :class:`Interrupted`. If the process dies instead (SIGKILL), the next
farm command finds the holder gone and does the same (:func:`farm.dispatch.reaper.reap_abandoned`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

from farm.agent import scope
from farm.agent.lifecycle import execute, register_device, wait_for
from farm.agent.runner import workdir_for
from farm.agent.runtime import Runtime
from farm.devices import Inventory
from farm.dispatch.reaper import in_process_name, reap_abandoned
from farm.errors import ConfigError, FarmError, InfraError
from farm.jobs import Job
from farm.paths import data_dir
from farm.store import Store

log = logging.getLogger("farm.agent")

IDLE_POLL_S = 0.5  # a worker with nothing queued looks again this often (a retry may move a job to it)
STOP_GRACE_S = 30.0  # after Ctrl-C, how long workers get to hand their jobs back
PATIENCE_S = 30.0  # a store outage longer than this ends the run with exit 3 (results stay in the spool)

Progress = Callable[[Job, str, str], None]  # (job, status, detail)


class Interrupted(FarmError):
    """The run was stopped by Ctrl-C or SIGTERM; it is marked interrupted and can be resumed."""

    error_class = "interrupted"
    exit_code = 130


def spool_dir_for(store: Store):  # -> Path
    """One spool per store: results an in-process run could not save wait there for the next run."""
    url = store.engine.url.render_as_string(hide_password=True)
    return data_dir() / "spool" / f"local-{hashlib.sha256(url.encode()).hexdigest()[:12]}"


class InProcessAgent:
    """Runs the queued jobs of one run on this process's devices, until none is left."""

    def __init__(self, store: Store, inventory: Inventory, run_id: str, progress: Progress | None = None,
                 *, lease_s: float = 60.0, heartbeat_s: float = 5.0) -> None:
        self.store, self.run_id, self.progress = store, run_id, progress
        self.holder = in_process_name()
        self.rt = Runtime(self.holder, inventory, spool_dir_for(store), store=store, lease_s=lease_s,
                          heartbeat_s=heartbeat_s, patience_s=PATIENCE_S)
        self.tried: dict[str, list[str]] = {}
        self.errors: list[BaseException] = []
        self._busy: dict[str, Job] = {}  # device → the job its worker runs
        self._lock = threading.Lock()

    def emit(self, job: Job, status: str, detail: str = "") -> None:
        if self.progress is not None:
            with contextlib.suppress(Exception):  # a display problem must not stop a measurement
                self.progress(job, status, detail)

    def run(self, devices: list[str]) -> None:
        """Run until the run has no job left; raises Interrupted (Ctrl-C/SIGTERM) or InfraError (store gone)."""
        reap_abandoned(self.store)
        self.rt.spool.flush(self.store)  # results an earlier run could not save
        if not self.store.hold_run(self.run_id, self.holder):
            raise ConfigError(f"run {self.run_id} is being run by another process, or is finished")
        for device in devices:  # as an agent does at start: fingerprint, health, workdir
            register_device(self.rt, device)
        threads = [threading.Thread(target=self._worker, args=(d, set(devices)), name=f"farm-{d}", daemon=True)
                   for d in devices]
        previous = signal.getsignal(signal.SIGTERM)
        in_main = threading.current_thread() is threading.main_thread()
        if in_main:
            signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            for t in threads:
                t.start()
            # Poll instead of Thread.join: a join interrupted by Ctrl-C can wedge (CPython bpo-45274).
            wait_for(lambda: not any(t.is_alive() for t in threads), timeout=float("inf"), poll=0.2)
        except KeyboardInterrupt:
            self._stop(threads)
            raise Interrupted(f"run {self.run_id} interrupted; continue it with: farm resume {self.run_id}") from None
        finally:
            if in_main:
                signal.signal(signal.SIGTERM, previous)
            self.rt.leases.stop()
            self.rt.pool.close()
        if self.errors:
            self._stop(threads)
            err = self.errors[0]
            raise err if isinstance(err, FarmError) else InfraError(f"{type(err).__name__}: {err}")
        self.store.release_run(self.run_id, self.holder)
        self.store.finish_run_if_complete(self.run_id)

    def _stop(self, threads: list[threading.Thread]) -> None:
        """Stop the jobs on the devices, let the workers hand them back, mark the run interrupted."""
        self.rt.stopping.set()
        with self._lock:
            busy = dict(self._busy)
        for device in busy:
            with contextlib.suppress(Exception):  # best effort: the next job's prepare kills leftovers too
                scope.stop_job(self.rt.pool.transport(device),
                               workdir_for(self.rt.pool.entry(device), self.rt.pool.profile(device)))
        wait_for(lambda: not any(t.is_alive() for t in threads), timeout=STOP_GRACE_S, poll=0.1)
        with contextlib.suppress(InfraError):
            self.store.interrupt_run(self.run_id, self.holder, "interrupted")

    def _worker(self, device: str, allowed: set[str]) -> None:
        try:
            self._loop(device, allowed)
        except BaseException as exc:
            if not self.rt.stopping.is_set():
                log.error("device %s: worker stopped: %s", device, exc)
                self.errors.append(exc)
                self.rt.stopping.set()

    def _loop(self, device: str, allowed: set[str]) -> None:
        rt = self.rt
        while not rt.stopping.is_set():
            nxt = rt.wait_store(lambda: self.store.next_queued(self.run_id, device), "next job")
            if nxt is None:
                if rt.wait_store(lambda: self.store.jobs_left(self.run_id), "jobs left") == 0:
                    return
                rt.stopping.wait(IDLE_POLL_S)
                continue
            job, attempts = nxt
            with self._lock:
                self._busy[device] = job
            self.emit(job, "started")
            try:
                out = execute(rt, job, attempts + 1, self.tried.get(job.job_id), allowed=allowed,
                              on_stage=lambda s, j=job: self.emit(j, s if s.startswith("waiting") else f"stage:{s}"))
            finally:
                with self._lock:
                    self._busy.pop(device, None)
            self.tried[job.job_id] = out.tried
            if out.status in ("done", "failed"):
                self.emit(job, out.status, out.detail)
            elif out.status == "retry":
                self.emit(job, "retry", f"{out.detail} → {out.job.device}")


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
