"""Where a job goes: priority order, devices taking turns, and the device that should run it now.

The store is the source of truth for job state. A broker message (Celery), a task (Ray) or a worker
thread (in-process) only says "try this job on this device"; whoever receives it claims the job in
the store (queued → running, atomic) before running it, so a redelivered or duplicated delivery is
harmless.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass

from farm.dispatch.failure import failed_result
from farm.jobs import Job
from farm.store import Store
from farm.store.models import Device


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


def route(job: Job, devices: dict[str, Device], avoid: Collection[str] = frozenset(),
          allowed: Collection[str] | None = None) -> Route:
    """Where `job` should run now: its own device when healthy, else another online device of its profile.

    A device nobody registered yet keeps its jobs (its agent may still be starting); a quarantined
    device with no healthy sibling cannot take them, which the caller stores as a failure.
    `allowed` limits the siblings to the devices the caller can reach (None: any registered one).
    """
    if allowed is not None:
        devices = {n: d for n, d in devices.items() if n in allowed or n == job.device}
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


def prepare_dispatch(store: Store, run_id: str, jobs: list[Job]) -> list[Job]:
    """The jobs to send, in priority order, each routed; jobs no device can take are stored as failed."""
    devices = device_rows(store)
    out: list[Job] = []
    for job in order(jobs):
        r = route(job, devices)
        if r.device is None:
            store.save_result(failed_result(job, "infra", r.reason), job)
            continue
        out.append(store.retarget(job, r.device))
    store.finish_run_if_complete(run_id)
    return out


