"""What a process that runs jobs holds: its name, store, devices, spool, and the leases it beats.

An agent process (Celery device worker, Ray worker) builds its :class:`Runtime` from agent.yaml; the
in-process executor builds one from the inventory and the store it was given. Either way the same
:func:`farm.agent.lifecycle.execute` runs each job with it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

from farm.agent.config import CONFIG_ENV, AgentConfig, load_agent_config
from farm.agent.devices import DevicePool
from farm.agent.spool import Spool
from farm.devices import Inventory
from farm.errors import InfraError
from farm.store import Store

log = logging.getLogger("farm.agent")
T = TypeVar("T")


class Runtime:
    """Config, store, devices and spool of a process that runs jobs.

    `patience_s`: how long a store outage may pause this process before it gives up (None: wait for
    ever, as a long-running agent does; the in-process executor gives up and exits 3).
    """

    def __init__(self, name: str, inventory: Inventory, spool_dir: Path, *, store_url: str | None = None,
                 store: Store | None = None, lease_s: float = 60.0, heartbeat_s: float = 5.0,
                 patience_s: float | None = None) -> None:
        self.name, self.inventory = name, inventory
        self.store_url, self._store = store_url, store
        self.lease_s, self.heartbeat_s, self.patience_s = lease_s, heartbeat_s, patience_s
        self.pool = DevicePool(inventory)
        self.spool = Spool(spool_dir)
        self.devices = {d.name: d for d in inventory.devices}
        self.stopping = threading.Event()
        self.failed_devices: set[str] = set()
        self.leases = Leases(self)

    @classmethod
    def from_config(cls, cfg: AgentConfig) -> Runtime:
        return cls(cfg.name, cfg.inventory(), cfg.spool_path(), store_url=cfg.store_url, lease_s=cfg.lease_s,
                   heartbeat_s=cfg.heartbeat_s)

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.store_url)  # raises InfraError while the store is down
        return self._store

    def wait_store(self, fn: Callable[[], T], what: str) -> T:
        """Call `fn` until the store answers: a store outage pauses jobs, it does not fail them."""
        delay, waited = 0.2, 0.0
        while True:
            try:
                return fn()
            except InfraError as exc:
                if self.stopping.is_set() or (self.patience_s is not None and waited >= self.patience_s):
                    raise
                log.warning("%s: store unreachable, retrying in %.1fs: %s", what, delay, exc)
                time.sleep(delay)
                waited += delay
                delay = min(delay * 2, 5.0)

    def after_fork(self) -> None:
        """A forked device worker must not share the parent's database connections."""
        if self._store is not None:
            self._store.engine.dispose(close=False)
            self._store = None


_runtime: Runtime | None = None


def runtime(cfg: AgentConfig | None = None) -> Runtime:
    """This agent process's Runtime (Celery device workers and Ray workers find the config via the env)."""
    global _runtime
    if _runtime is None:
        _runtime = Runtime.from_config(cfg or load_agent_config(os.environ.get(CONFIG_ENV)))
    return _runtime


def reset_runtime(rt: Runtime | None) -> None:
    global _runtime
    _runtime = rt


class Leases:
    """Heartbeats the leases of the jobs this process runs, so reapers leave them alone.

    One thread per process, started with the first job, beats every held lease each
    ``heartbeat_s`` (one statement per job). A lease found gone — the run was cancelled, or a
    reaper judged this process dead — calls the job's `abort` (which kills what the job started
    on its device): nobody else thinks the job runs here any more, so it must stop. :meth:`hold`
    returns only once no beat for the job is under way, so a result saved afterwards is never
    followed by a beat that would find its lease gone.
    """

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._held: dict[str, Callable[[], None] | None] = {}
        self._lost: set[str] = set()
        self._lock = threading.Lock()  # held while a beat runs: releasing a job waits for it
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def stop(self) -> None:
        """End the heartbeat thread (a process that runs no more jobs with this runtime)."""
        self._stop.set()

    @contextlib.contextmanager
    def hold(self, job_id: str, abort: Callable[[], None] | None = None) -> Iterator[None]:
        with self._lock:
            self._held[job_id] = abort
            self._lost.discard(job_id)
            if not self._stop.is_set() and (self._thread is None or not self._thread.is_alive()):
                self._thread = threading.Thread(target=self._run, name="farm-leases", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._held.pop(job_id, None)

    def lost(self, job_id: str) -> bool:
        """Was the job's lease found gone while it ran?"""
        with self._lock:
            return job_id in self._lost

    def _run(self) -> None:
        rt = self.rt
        while not self._stop.wait(rt.heartbeat_s):  # a daemon thread: never ends under a running job
            with self._lock:
                held = sorted(self._held)
            for job_id in held:
                with self._lock:  # one job at a time: a job that ends waits for its own beat at most
                    if job_id not in self._held or job_id in self._lost:
                        continue
                    try:
                        alive = rt.store.heartbeat(job_id, rt.name, rt.lease_s)
                    except InfraError as exc:
                        log.warning("job %s: heartbeat failed: %s", job_id, exc)
                        continue
                    if alive:
                        continue
                    self._lost.add(job_id)
                    abort = self._held[job_id]
                log.warning("job %s: lease lost (cancelled or reaped); stopping it", job_id)
                if abort is not None:
                    try:
                        abort()
                    except Exception as exc:  # the device may be gone too: the next job's prepare kills leftovers
                        log.warning("job %s: could not stop it on the device: %s", job_id, exc)
