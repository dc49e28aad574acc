"""The long-running agent: owns a host's devices, registers them, runs their jobs, spools results.

``farm agent start --config agents/agent.yaml`` runs :class:`Agent`: it registers every device
(profile, fingerprint) in the store and heartbeats them, starts the executor's consumers (one
Celery worker per device, or a Ray node advertising one resource per device), flushes the spool,
and reaps jobs of silent agents. :func:`execute` is what a consumer calls for one job, whichever
executor delivered it: claim in the store (the device is an exclusive lease), heartbeat the lease,
run, store the result (or spool it while the store is unreachable).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from sqlalchemy import update

from farm.agent.config import CONFIG_ENV, AgentConfig, load_agent_config
from farm.agent.devices import DevicePool
from farm.agent.runner import run_job, workdir_for
from farm.agent.spool import Spool
from farm.errors import InfraError
from farm.executors._dispatch import after_infra_error, device_rows, retarget, route
from farm.jobs import Job, JobResult
from farm.store import Store
from farm.store.models import Device
from farm.transports.local import LocalTransport

log = logging.getLogger("farm.agent")
T = TypeVar("T")


class Runtime:
    """What an agent process (or one of its device workers) holds: config, store, devices, spool."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.inventory = cfg.inventory()
        self.pool = DevicePool(self.inventory)
        self.spool = Spool(cfg.spool_path())
        self.devices = {d.name: d for d in self.inventory.devices}
        self.stopping = threading.Event()
        self._store: Store | None = None
        self._failed_devices: set[str] = set()
        self.leases = Leases(self)

    @property
    def store(self) -> Store:
        if self._store is None:
            self._store = Store(self.cfg.store_url)  # raises InfraError while the store is down
        return self._store

    def wait_store(self, fn: Callable[[], T], what: str) -> T:
        """Call `fn` until the store answers: a store outage pauses the agent, it does not fail jobs."""
        delay = 0.2
        while True:
            try:
                return fn()
            except InfraError as exc:
                if self.stopping.is_set():
                    raise
                log.warning("%s: store unreachable, retrying in %.1fs: %s", what, delay, exc)
                time.sleep(delay)
                delay = min(delay * 2, 5.0)

    def after_fork(self) -> None:
        """A forked device worker must not share the parent's database connections."""
        if self._store is not None:
            self._store.engine.dispose(close=False)
            self._store = None


_runtime: Runtime | None = None


def runtime(cfg: AgentConfig | None = None) -> Runtime:
    """This process's Runtime (Celery device workers and Ray workers find the config via the env)."""
    global _runtime
    if _runtime is None:
        _runtime = Runtime(cfg or load_agent_config(os.environ.get(CONFIG_ENV)))
    return _runtime


def reset_runtime(rt: Runtime | None) -> None:
    global _runtime
    _runtime = rt


@dataclass
class Outcome:
    """What happened to one delivery of a job. ``retry``: send `job` (already moved) again."""

    status: str  # done | failed | skipped | retry
    job: Job
    attempt: int = 1
    tried: list[str] = field(default_factory=list)
    detail: str = ""


class Leases:
    """Heartbeats the leases of the jobs this process runs, so reapers leave them alone.

    One thread per process, started with the first job, beats every held lease each
    ``heartbeat_s`` (one statement per job, as the store's heartbeat is per job): a job's lease is
    renewed at most ``heartbeat_s`` apart, as with a thread per job, without starting and joining a
    thread for every job. :meth:`hold` returns only once no beat for the job is under way, so a
    result saved afterwards is never followed by a beat that would find its lease gone.
    """

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self._held: set[str] = set()
        self._lock = threading.Lock()  # held while a beat runs: releasing a job waits for it
        self._thread: threading.Thread | None = None

    @contextlib.contextmanager
    def hold(self, job_id: str) -> Iterator[None]:
        with self._lock:
            self._held.add(job_id)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="farm-leases", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._held.discard(job_id)

    def _run(self) -> None:
        cfg = self.rt.cfg
        while True:  # a daemon thread: it ends with the process, never under a running job
            time.sleep(cfg.heartbeat_s)
            with self._lock:
                held = sorted(self._held)
            for job_id in held:
                with self._lock:  # one job at a time: a job that ends waits for its own beat at most
                    if job_id not in self._held:
                        continue
                    try:
                        if not self.rt.store.heartbeat(job_id, cfg.name, cfg.lease_s):
                            log.warning("job %s: lease lost (reaped or cancelled); its result is still kept", job_id)
                    except InfraError as exc:
                        log.warning("job %s: heartbeat failed: %s", job_id, exc)


def _probe(rt: Runtime, device: str) -> None:
    """Is the device still there? A vanished device is an infrastructure error, not a failed benchmark."""
    entry = rt.pool.entry(device)
    workdir = workdir_for(entry, rt.pool.profile(device))
    transport = rt.pool.transport(device)
    if isinstance(transport, LocalTransport):  # this host is the device: ask the kernel, not a forked shell
        present = os.path.isdir(workdir)
    else:
        present = transport.run(["test", "-d", workdir], timeout=30).exit_code == 0
    if not present:
        raise InfraError(f"device {device}: workdir {workdir} is gone (device unplugged or unmounted?)")


def execute(rt: Runtime, job: Job, attempt: int = 1, tried: list[str] | None = None) -> Outcome:
    """Run one delivered job on its device, exactly once per claim; the caller acks afterwards."""
    tried = list(tried or [])
    device, agent, cfg = job.device, rt.cfg.name, rt.cfg
    if device not in rt.devices:
        return Outcome("skipped", job, attempt, tried, f"{device} is not attached to agent {agent}")
    # One round trip claims the job and reads whether its device was quarantined meanwhile.
    token = uuid.uuid4().hex  # this delivery's claim: a retry after a dropped connection recognises its own
    status = rt.wait_store(lambda: rt.store.claim_on(job.job_id, agent, cfg.lease_s, device=device, token=token),
                           "claim")
    if status is None:  # done, cancelled, moved, or another delivery runs it
        return Outcome("skipped", job, attempt, tried, "not claimable")
    result: JobResult | None = None
    with rt.leases.hold(job.job_id):
        if status == "quarantined":
            target = rt.wait_store(lambda: route(job, device_rows(rt.store), avoid={device}).device, "route")
            if target is not None:
                rt.wait_store(lambda: rt.store.requeue(job.job_id, f"{device} quarantined"), "requeue")
                moved = rt.wait_store(lambda: retarget(rt.store, job, target), "retarget")
                return Outcome("retry", moved, attempt, tried, f"{device} quarantined")
            result = JobResult(job_id=job.job_id, run_id=job.run_id, device=device, status="failed",
                               error_class="infra", error=f"device {device} is quarantined", attempt=attempt,
                               agent=agent)
        else:
            try:
                _probe(rt, device)
                result = run_job(job, rt.pool.entry(device), rt.pool.profile(device), rt.pool.transport(device),
                                 attempt=attempt, agent=agent)
            except InfraError as exc:
                rt.pool.drop(device)
                rt._failed_devices.add(device)
                error = str(exc)
                log.warning("job %s on %s: infrastructure error: %s", job.job_id, device, error)
                decision = rt.wait_store(lambda: after_infra_error(rt.store, job, device, attempt, error,
                                                                   tried, agent), "retry policy")
                if decision.result is None:
                    assert decision.retry_on is not None
                    moved = job.model_copy(update={"device": decision.retry_on})
                    return Outcome("retry", moved, decision.attempt, decision.tried, str(exc))
                result = decision.result
            except Exception as exc:  # a bug must not wedge the device: store it as a failed job
                log.exception("job %s: bug", job.job_id)
                result = JobResult(job_id=job.job_id, run_id=job.run_id, device=device, status="failed",
                                   error_class="bug", error=f"{type(exc).__name__}: {exc}", attempt=attempt,
                                   agent=agent)
    _keep(rt, result, job)
    if result.status == "done" and device in rt._failed_devices:
        _reset_failures(rt, device)
    return Outcome(result.status, job, attempt, tried, result.error or "")


def _keep(rt: Runtime, result: JobResult, job: Job) -> None:
    """Make the result durable before the executor acknowledges the delivery: in the store when it
    answers (one transaction), else in the spool, which flushes it once the store is back."""
    try:
        rt.store.keep_result(result, job)
        return
    except Exception as exc:  # the spool keeps it, whatever went wrong, and retries
        log.warning("job %s: result not stored yet (%s); spooling it", job.job_id, exc)
    path = rt.spool.put(result, job)
    rt.spool.deliver(rt.store, path, (result, job))


def _reset_failures(rt: Runtime, device: str) -> None:
    """Quarantine counts failures in a row: a success clears them."""
    with contextlib.suppress(InfraError), rt.store.session() as s:
        s.execute(update(Device).where(Device.name == device, Device.status == "online").values(failures=0))
        rt._failed_devices.discard(device)


class Consumers(Protocol):
    """The executor-specific side of an agent: what takes jobs off the broker or cluster."""

    def start(self) -> None: ...
    def check(self) -> None: ...  # restart what died
    def stop(self) -> None: ...
    def send(self, job: Job, attempt: int) -> None: ...  # re-dispatch (reaper); a no-op where dispatch pulls


class Agent:
    """The agent process: registration, heartbeats, consumers, spool flushing, reaping."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.rt = Runtime(cfg)
        reset_runtime(self.rt)
        self._stop = threading.Event()
        if cfg.executor == "celery":
            from farm.executors.celery import CeleryConsumers

            self.consumers: Consumers = CeleryConsumers(cfg)
        else:
            from farm.executors.ray import RayNode

            self.consumers = RayNode(cfg)

    def register(self) -> None:
        """Devices into the store with their profile and what the device says it is."""
        for entry in self.rt.inventory.devices:
            fingerprint: dict[str, object] | None = None
            health: dict[str, object] = {"agent": self.cfg.name}
            try:
                transport = self.rt.pool.transport(entry.name)
                fingerprint = transport.info().fingerprint()
                # The probe before each job expects the workdir: a device that later loses it was unplugged.
                transport.mkdir(workdir_for(entry, self.rt.pool.profile(entry.name)))
            except Exception as exc:  # an unreachable device still registers, marked with why
                health["error"] = f"{type(exc).__name__}: {exc}"
                self.rt.pool.drop(entry.name)
            self.rt.store.upsert_device(entry.name, entry.profile, entry.transport.kind, agent=self.cfg.name,
                                        fingerprint=fingerprint, health=health)

    def heartbeat(self) -> None:
        """Every device of this agent seen now: one statement, whatever the number of devices."""
        self.rt.store.touch_devices([(e.name, e.profile, e.transport.kind) for e in self.rt.inventory.devices],
                                    agent=self.cfg.name)

    def run(self) -> None:
        """Until SIGTERM/SIGINT: keep devices registered, consumers alive, the spool empty."""
        from farm.executors._dispatch import Reaper

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stop.set())
        self.consumers.start()  # before the store is opened here: forked workers start clean
        self.rt.wait_store(self.register, "register devices")
        reaper = Reaper(self.rt.store, self.cfg.executor, self.cfg.lease_s, send=self.consumers.send)
        log.info("agent %s: %d device(s) on %s", self.cfg.name, len(self.rt.devices), self.cfg.executor)
        next_reap = 0.0
        while not self._stop.is_set():
            try:
                self.heartbeat()
                self.rt.spool.flush(self.rt.store)
            except InfraError as exc:
                log.warning("agent %s: store unreachable: %s", self.cfg.name, exc)
            if time.monotonic() >= next_reap:
                reaper.tick()
                next_reap = time.monotonic() + self.cfg.reap_s
            self.consumers.check()
            self._stop.wait(min(self.cfg.heartbeat_s, self.cfg.reap_s))
        self.rt.stopping.set()
        self.consumers.stop()
        with contextlib.suppress(InfraError):
            self.rt.spool.flush(self.rt.store)
