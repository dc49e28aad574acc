"""One job's lifecycle, whichever executor delivered it: the only place jobs are run.

claim (with a lease, heartbeat; the claim also takes the device: one job per device, across
processes) → probe the device → run (:func:`farm.agent.runner.run_job`) → on an infrastructure
error, the retry rule (:mod:`farm.dispatch.retry`) → keep the result (store, else spool) → release.
Celery device workers, Ray tasks and the in-process executor's threads all call :func:`execute`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from farm.agent import scope
from farm.agent.runner import run_job, workdir_for
from farm.agent.runtime import Runtime
from farm.dispatch import after_infra_error, failed_result, route
from farm.dispatch.reaper import reap_abandoned
from farm.dispatch.routing import device_rows
from farm.errors import InfraError, error_class_of
from farm.jobs import Job, JobResult
from farm.store import BUSY
from farm.transports.local import LocalTransport

log = logging.getLogger("farm.agent")
BUSY_POLL_S = 2.0  # how often a job waiting for its device looks again


@dataclass
class Outcome:
    """What happened to one delivery of a job. ``retry``: send `job` (already moved) again.
    ``interrupted``: this process is stopping; the job is back in the queue, its attempt uncounted."""

    status: str  # done | failed | skipped | retry | interrupted
    job: Job
    attempt: int = 1
    tried: list[str] = field(default_factory=list)
    detail: str = ""


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


def _claim(rt: Runtime, job: Job, on_stage: Callable[[str], None] | None) -> str | None:
    """Claim the job; while its device runs another job, wait (freeing devices of dead processes)."""
    token = uuid.uuid4().hex  # this delivery's claim: a retry after a dropped connection recognises its own
    said = False
    while True:
        status = rt.wait_store(lambda: rt.store.claim_on(job.job_id, rt.name, rt.lease_s, device=job.device,
                                                         token=token), "claim")
        if status != BUSY:
            return status
        if rt.wait_store(lambda: reap_abandoned(rt.store), "reap"):
            continue  # a dead process held the device: it is free now
        holder = rt.wait_store(lambda: rt.store.device_holder(job.device), "device holder")
        if holder is None:
            continue
        if not said and on_stage is not None:
            on_stage(f"waiting: {job.device} runs job {holder[0]} of run {holder[2]}")
            said = True
        if rt.stopping.wait(BUSY_POLL_S):
            return None


def execute(rt: Runtime, job: Job, attempt: int = 1, tried: list[str] | None = None, *,
            allowed: Collection[str] | None = None, on_stage: Callable[[str], None] | None = None) -> Outcome:
    """Run one delivered job on its device, exactly once per claim; the caller acks afterwards.

    `allowed`: devices a retry may move the job to (the in-process executor's own; None: any).
    """
    tried = list(tried or [])
    device, agent = job.device, rt.name
    if device not in rt.devices:
        return Outcome("skipped", job, attempt, tried, f"{device} is not attached to agent {agent}")
    status = _claim(rt, job, on_stage)
    if status is None:  # done, cancelled, moved, another delivery runs it, or we are stopping
        return Outcome("skipped", job, attempt, tried, "not claimable")
    result: JobResult | None = None

    def abort() -> None:
        scope.stop_job(rt.pool.transport(device), workdir_for(rt.pool.entry(device), rt.pool.profile(device)))

    with rt.leases.hold(job.job_id, abort):
        if status == "quarantined":
            target = rt.wait_store(lambda: route(job, device_rows(rt.store), avoid={device},
                                                 allowed=allowed).device, "route")
            if target is not None:
                rt.wait_store(lambda: rt.store.requeue(job.job_id, f"{device} quarantined"), "requeue")
                moved = rt.wait_store(lambda: rt.store.retarget(job, target), "retarget")
                return Outcome("retry", moved, attempt, tried, f"{device} quarantined")
            result = failed_result(job, "infra", f"device {device} is quarantined", attempt=attempt, agent=agent)
        else:
            try:
                _probe(rt, device)
                result = run_job(job, rt.pool.entry(device), rt.pool.profile(device), rt.pool.transport(device),
                                 attempt=attempt, agent=agent, on_stage=on_stage)
            except InfraError as exc:
                rt.pool.drop(device)
                if rt.stopping.is_set():
                    return _interrupted(rt, job, attempt, tried)
                rt.failed_devices.add(device)
                error = str(exc)
                log.warning("job %s on %s: infrastructure error: %s", job.job_id, device, error)
                decision = rt.wait_store(lambda: after_infra_error(rt.store, job, device, attempt, error, tried,
                                                                   agent, allowed), "retry policy")
                if decision.result is None:
                    assert decision.retry_on is not None
                    moved = job.model_copy(update={"device": decision.retry_on})
                    return Outcome("retry", moved, decision.attempt, decision.tried, error)
                result = decision.result
            except Exception as exc:  # a bug must not wedge the device: store it as a failed job
                log.exception("job %s: bug", job.job_id)
                result = failed_result(job, error_class_of(exc), f"{type(exc).__name__}: {exc}", attempt=attempt,
                                       agent=agent)
    if rt.leases.lost(job.job_id):  # cancelled or reaped while it ran: someone else owns the job now
        return Outcome("skipped", job, attempt, tried, "lease lost (cancelled or reaped)")
    if rt.stopping.is_set() and result.status != "done":  # killed by our own Ctrl-C: not the job's fault
        return _interrupted(rt, job, attempt, tried)
    keep(rt, result, job)
    if result.status == "done" and device in rt.failed_devices:
        with contextlib.suppress(InfraError):
            rt.store.reset_failures(device)
            rt.failed_devices.discard(device)
    return Outcome(result.status, job, attempt, tried, result.error or "")


def _interrupted(rt: Runtime, job: Job, attempt: int, tried: list[str]) -> Outcome:
    with contextlib.suppress(InfraError):
        rt.store.requeue(job.job_id, "interrupted", uncounted=True)
    return Outcome("interrupted", job, attempt, tried, "interrupted")


def keep(rt: Runtime, result: JobResult, job: Job) -> None:
    """Make the result durable before the executor acknowledges the delivery: in the store when it
    answers (one transaction), else in the spool, which flushes it once the store is back."""
    try:
        rt.store.keep_result(result, job)
        return
    except Exception as exc:  # the spool keeps it, whatever went wrong, and retries
        log.warning("job %s: result not stored yet (%s); spooling it", job.job_id, exc)
    path = rt.spool.put(result, job)
    if not rt.spool.deliver(rt.store, path, (result, job)) and rt.patience_s is not None:
        # a process that cannot outwait an outage tries for its patience, then gives up (InfraError):
        # the result stays in the spool, and the next run on this store delivers it
        rt.wait_store(lambda: rt.spool.flush_one(rt.store, path, (result, job)), f"save result of {job.job_id}")


def register_device(rt: Runtime, name: str) -> None:
    """A device into the store with its profile and what the device says it is."""
    entry = rt.devices[name]
    fingerprint: dict[str, object] | None = None
    health: dict[str, object] = {"agent": rt.name}
    try:
        transport = rt.pool.transport(name)
        fingerprint = transport.info().fingerprint()
        # The probe before each job expects the workdir: a device that later loses it was unplugged.
        transport.mkdir(workdir_for(entry, rt.pool.profile(name)))
    except Exception as exc:  # an unreachable device still registers, marked with why
        health["error"] = f"{type(exc).__name__}: {exc}"
        rt.pool.drop(name)
    rt.store.upsert_device(name, entry.profile, entry.transport.kind, agent=rt.name, fingerprint=fingerprint,
                           health=health)


def wait_for(event_is_set: Callable[[], bool], timeout: float, poll: float = 0.1) -> bool:
    """Poll `event_is_set` until true or `timeout`; never blocks signals (unlike Thread.join)."""
    deadline = time.monotonic() + timeout
    while not event_is_set():
        if time.monotonic() >= deadline:
            return False
        time.sleep(poll)
    return True
