"""Dispatch rules the Celery and Ray executors share: order, routing, retry policy, reaping.

The store is the source of truth for job state. A broker message (Celery) or a task (Ray) only
says "try this job on this device"; whoever receives it must ``claim`` the job in the store
(queued → running, atomic) before running it, so a redelivered or duplicated message is
harmless. Leases held by heartbeats show which jobs are really running; a :class:`Reaper` puts
the jobs of silent agents back in the queue and re-routes jobs of offline or quarantined devices.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from sqlalchemy import select, update

from farm.errors import InfraError
from farm.executors.base import MAX_ATTEMPTS
from farm.jobs import Job, JobResult, utcnow
from farm.store import Store
from farm.store.models import Device, JobRow, Run

log = logging.getLogger("farm.dispatch")
ACTIVE_RUN = ("queued", "running")


def order(jobs: list[Job]) -> list[Job]:
    """Higher priority first (CI regressions before surveys), then the plan's order."""
    return sorted(jobs, key=lambda j: (-j.priority, j.index))


def device_rounds(jobs: list[Job]) -> list[Job]:
    """The same jobs, devices taking turns: every device's first job, then every device's second...

    Each device keeps its own jobs in the given order (priority first, see :func:`order`), so a
    publisher going through the list gives every device work before it sends anyone's backlog.
    """
    seen: Counter[str] = Counter()
    rounds = []
    for job in jobs:
        rounds.append(seen[job.device])
        seen[job.device] += 1
    return [job for _, job in sorted(zip(rounds, jobs, strict=True), key=lambda rj: rj[0])]


def device_rows(store: Store) -> dict[str, Device]:
    return {d.name: d for d in store.devices()}


@dataclass
class Route:
    device: str | None  # None: no device can take the job
    reason: str = ""


def route(job: Job, devices: dict[str, Device], avoid: set[str] | frozenset[str] = frozenset()) -> Route:
    """Where `job` should run now: its own device when healthy, else another online device of its profile.

    A device nobody registered yet keeps its jobs (its agent may still be starting); a quarantined
    device with no healthy sibling cannot take them, which the caller stores as a failure.
    """
    own = devices.get(job.device)
    if job.device not in avoid and (own is None or own.status == "online"):
        return Route(job.device)
    for name, dev in sorted(devices.items()):
        if dev.profile == job.profile and dev.status == "online" and name not in avoid:
            return Route(name, f"{job.device} {own.status if own else 'unusable'}; moved to {name}")
    if own is not None and own.status == "quarantined":
        return Route(None, f"device {job.device} is quarantined ({own.quarantine_reason}) and no other "
                           f"device of profile {job.profile} is online")
    if job.device in avoid:
        return Route(None, f"no other online device of profile {job.profile}")
    return Route(job.device, f"{job.device} offline; waiting for it")


def retarget(store: Store, job: Job, device: str) -> Job:
    """Move a queued job to another device (same profile); returns the moved job."""
    if device == job.device:
        return job
    moved = job.model_copy(update={"device": device})
    with store.session() as s:
        s.execute(update(JobRow).where(JobRow.id == job.job_id)
                  .values(device=device, spec=moved.model_dump(mode="json")))
    return moved


def prepare_dispatch(store: Store, run_id: str, jobs: list[Job]) -> list[Job]:
    """The jobs to send, in priority order, each routed; jobs no device can take are stored as failed."""
    devices = device_rows(store)
    out: list[Job] = []
    for job in order(jobs):
        r = route(job, devices)
        if r.device is None:
            store.fail_job(job, "infra", r.reason)
            continue
        out.append(retarget(store, job, r.device))
    store.finish_run_if_complete(run_id)
    return out


@dataclass
class Decision:
    """What to do with a job after an infrastructure error on `device`."""

    retry_on: str | None = None
    attempt: int = 1
    tried: list[str] = field(default_factory=list)
    result: JobResult | None = None  # set when the job is given up: store this


def after_infra_error(store: Store, job: Job, device: str, attempt: int, error: str, tried: list[str],
                      agent: str) -> Decision:
    """The retry rule: another device of the profile (or the same after a reconnect), at most MAX_ATTEMPTS."""
    store.record_device_failure(device, error)
    tried = sorted({*tried, device})
    target: str | None = None
    if attempt < MAX_ATTEMPTS:
        devices = device_rows(store)
        target = route(job, devices, avoid=set(tried)).device
        own = devices.get(device)
        if target is None and own is not None and own.status == "online":
            target = device  # the only device of its profile: retry it after the reconnect
    if target is None:
        why = f"gave up after {attempt} attempt(s): {error}" if attempt >= MAX_ATTEMPTS else error
        return Decision(attempt=attempt, tried=tried, result=JobResult(
            job_id=job.job_id, run_id=job.run_id, device=device, status="failed", error_class="infra",
            error=why, attempt=attempt, agent=agent))
    store.requeue(job.job_id, f"infra on {device}: {error}")
    retarget(store, job, target)
    return Decision(retry_on=target, attempt=attempt + 1, tried=tried)


def queued_jobs(store: Store, executor: str, limit: int | None = None) -> list[tuple[Job, int]]:
    """Queued jobs of active runs of `executor`, highest priority and oldest run first, with attempts."""
    with store.session() as s:
        q = (select(JobRow.spec, JobRow.attempts).join(Run, Run.id == JobRow.run_id)
             .where(JobRow.status == "queued", Run.executor == executor, Run.status.in_(ACTIVE_RUN))
             .order_by(JobRow.priority.desc(), Run.created_at, JobRow.idx))
        if limit:
            q = q.limit(limit)
        return [(Job.model_validate(spec), n) for spec, n in s.execute(q)]


class QueuedJobs:
    """:func:`queued_jobs` for a poller: each call reads ids, devices and attempts in the same order,
    and the spec (JSON, then a pydantic model) only of jobs it has not yet seen on that device.

    A queued job's spec changes only when it is moved to another device (:func:`retarget`), so
    (job id, device) names one spec; a dispatcher that looks every few seconds at a thousand queued
    jobs no longer parses a thousand specs each time.
    """

    CHUNK = 500  # ids per spec query

    def __init__(self, store: Store, executor: str) -> None:
        self.store, self.executor = store, executor
        self._jobs: dict[str, Job] = {}

    def __call__(self) -> list[tuple[Job, int]]:
        with self.store.session() as s:
            rows = s.execute(select(JobRow.id, JobRow.device, JobRow.attempts).join(Run, Run.id == JobRow.run_id)
                             .where(JobRow.status == "queued", Run.executor == self.executor,
                                    Run.status.in_(ACTIVE_RUN))
                             .order_by(JobRow.priority.desc(), Run.created_at, JobRow.idx)).all()
            known = self._jobs
            missing = [job_id for job_id, device, _ in rows
                       if job_id not in known or known[job_id].device != device]
            fresh: dict[str, Job] = {}
            for i in range(0, len(missing), self.CHUNK):
                for job_id, spec in s.execute(select(JobRow.id, JobRow.spec)
                                              .where(JobRow.id.in_(missing[i:i + self.CHUNK]))):
                    fresh[job_id] = Job.model_validate(spec)
        jobs = {job_id: fresh.get(job_id) or known[job_id] for job_id, _, _ in rows}
        self._jobs = jobs  # forget jobs no longer queued
        # a job moved between the two reads shows its newer device: harmless, the claim checks the device
        return [(jobs[job_id], attempts) for job_id, _, attempts in rows]


Send = Callable[[Job, int], None]  # (job, attempt) → put it where its device will take it


class Reaper:
    """Puts jobs of silent agents back to work and moves jobs off devices that went away.

    Any live agent (and ``farm coordinator``) runs one; duplicates are harmless because every
    receiver claims in the store. After the store was unreachable, a reaper waits one lease period
    before judging others, so their heartbeats and spooled results arrive first.
    """

    def __init__(self, store: Store, executor: str, lease_s: float, send: Send | None = None,
                 offline_after_s: float | None = None) -> None:
        self.store, self.executor, self.lease_s, self.send = store, executor, lease_s, send
        self.offline_after_s = offline_after_s or lease_s
        self._reachable_since: float | None = None

    def tick(self) -> list[str]:
        """One pass; returns ids of the jobs it moved. Never raises for an unreachable store."""
        try:
            return self._tick()
        except InfraError as exc:
            log.warning("reaper: %s", exc)
            self._reachable_since = None
            return []

    def _tick(self) -> list[str]:
        now = time.monotonic()
        if self._reachable_since is None:
            self.store.counts("")  # raises InfraError when the store is still down
            self._reachable_since = now
        if now - self._reachable_since < self.lease_s:
            return []
        self._mark_offline()
        moved = self._reap_expired()
        moved += self._reroute_stranded()
        return moved

    def _mark_offline(self) -> None:
        stale = utcnow() - timedelta(seconds=self.offline_after_s)
        with self.store.session() as s:
            s.execute(update(Device).where(Device.status == "online", Device.last_seen < stale)
                      .values(status="offline"))

    def _reap_expired(self) -> list[str]:
        now = utcnow()
        with self.store.session() as s:
            rows = s.execute(select(JobRow.id, JobRow.spec, JobRow.attempts, JobRow.agent)
                             .join(Run, Run.id == JobRow.run_id)
                             .where(JobRow.status == "running", JobRow.lease_until < now,
                                    Run.executor == self.executor)).all()
        moved: list[str] = []
        devices = device_rows(self.store) if rows else {}
        for job_id, spec, attempts, agent in rows:
            job = Job.model_validate(spec)
            if not self.store.requeue(job_id, f"agent {agent} lease expired", lease_expired_before=now):
                continue
            log.warning("reaper: job %s of silent agent %s back in the queue", job_id, agent)
            if attempts >= MAX_ATTEMPTS:
                self.store.fail_job(job, "infra", f"agent lost {attempts} times while running this job")
                self.store.finish_run_if_complete(job.run_id)
                continue
            r = route(job, devices)
            if r.device is None:
                self.store.fail_job(job, "infra", r.reason)
                self.store.finish_run_if_complete(job.run_id)
                continue
            job = retarget(self.store, job, r.device)
            if self.send is not None:
                self.send(job, attempts + 1)
            moved.append(job_id)
        return moved

    def _reroute_stranded(self) -> list[str]:
        devices = device_rows(self.store)
        away = {n for n, d in devices.items() if d.status != "online"}
        if not away:
            return []
        with self.store.session() as s:
            rows = s.execute(select(JobRow.spec, JobRow.attempts).join(Run, Run.id == JobRow.run_id)
                             .where(JobRow.status == "queued", JobRow.device.in_(away),
                                    Run.executor == self.executor, Run.status.in_(ACTIVE_RUN))).all()
        moved: list[str] = []
        for spec, attempts in rows:
            job = Job.model_validate(spec)
            r = route(job, devices)
            if r.device is None:
                self.store.fail_job(job, "infra", r.reason)
                self.store.finish_run_if_complete(job.run_id)
            elif r.device != job.device:
                job = retarget(self.store, job, r.device)
                if self.send is not None:
                    self.send(job, attempts + 1)
                moved.append(job.job_id)
        return moved
