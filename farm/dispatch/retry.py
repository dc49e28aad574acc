"""The retry rule for infrastructure errors, the same for every executor.

A benchmark that fails (the engine exits non-zero, the output does not parse) is data: it is stored
at once. An infrastructure error (device gone, transport dropped, store unreachable) is not the
job's fault: the job moves to another online device of its profile, or retries on its own device
after a reconnect when it is the only one, at most :data:`MAX_ATTEMPTS` times in all.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

from farm.dispatch.failure import failed_result
from farm.dispatch.routing import device_rows, route
from farm.jobs import Job, JobResult
from farm.store import Store

MAX_ATTEMPTS = 3  # infrastructure failures per job before it is stored as failed (infra)


@dataclass
class Decision:
    """What to do with a job after an infrastructure error on `device`."""

    retry_on: str | None = None
    attempt: int = 1
    tried: list[str] = field(default_factory=list)
    result: JobResult | None = None  # set when the job is given up: store this


def after_infra_error(store: Store, job: Job, device: str, attempt: int, error: str, tried: list[str],
                      agent: str, allowed: Collection[str] | None = None) -> Decision:
    """Apply the retry rule; a retried job is back in the queue, moved to the device it should try next.

    `allowed`: the devices the caller's executor can reach (the in-process executor's inventory);
    None means any device registered in the store.
    """
    store.record_device_failure(device, error)
    tried = sorted({*tried, device})
    target: str | None = None
    if attempt < MAX_ATTEMPTS:
        devices = device_rows(store)
        target = route(job, devices, avoid=set(tried), allowed=allowed).device
        own = devices.get(device)
        if target is None and own is not None and own.status == "online":
            target = device  # the only device of its profile: retry it after the reconnect
    if target is None:
        why = f"gave up after {attempt} attempt(s): {error}" if attempt >= MAX_ATTEMPTS else error
        return Decision(attempt=attempt, tried=tried,
                        result=failed_result(job, "infra", why, device=device, attempt=attempt, agent=agent))
    store.requeue(job.job_id, f"infra on {device}: {error}")
    store.retarget(job, target)
    return Decision(retry_on=target, attempt=attempt + 1, tried=tried)
