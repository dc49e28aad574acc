"""Putting jobs of silent agents and dead processes back to work."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from farm.dispatch.failure import failed_result
from farm.dispatch.retry import MAX_ATTEMPTS
from farm.dispatch.routing import device_rows, route
from farm.errors import InfraError
from farm.jobs import Job, utcnow
from farm.store import Store

log = logging.getLogger("farm.dispatch")

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
        self.store.mark_offline(utcnow() - timedelta(seconds=self.offline_after_s))

    def _reap_expired(self) -> list[str]:
        now = utcnow()
        rows = self.store.expired_jobs(self.executor, now)
        moved: list[str] = []
        devices = device_rows(self.store) if rows else {}
        for job, attempts, agent in rows:
            if not self.store.requeue(job.job_id, f"agent {agent} lease expired", lease_expired_before=now):
                continue
            log.warning("reaper: job %s of silent agent %s back in the queue", job.job_id, agent)
            if attempts >= MAX_ATTEMPTS:
                self._give_up(job, f"agent lost {attempts} times while running this job")
                continue
            r = route(job, devices)
            if r.device is None:
                self._give_up(job, r.reason)
                continue
            job = self.store.retarget(job, r.device)
            if self.send is not None:
                self.send(job, attempts + 1)
            moved.append(job.job_id)
        return moved

    def _reroute_stranded(self) -> list[str]:
        devices = device_rows(self.store)
        away = {n for n, d in devices.items() if d.status != "online"}
        if not away:
            return []
        moved: list[str] = []
        for job, attempts in self.store.queued_on(away, self.executor):
            r = route(job, devices)
            if r.device is None:
                self._give_up(job, r.reason)
            elif r.device != job.device:
                job = self.store.retarget(job, r.device)
                if self.send is not None:
                    self.send(job, attempts + 1)
                moved.append(job.job_id)
        return moved

    def _give_up(self, job: Job, why: str) -> None:
        self.store.save_result(failed_result(job, "infra", why), job)
        self.store.finish_run_if_complete(job.run_id)


# In-process runs ------------------------------------------------------------------------------
# An in-process run is held by the `farm submit` / `farm resume` process that runs it; the run row
# names that process ("local:HOST:PID:START", START being the kernel's start time of the pid, so a
# recycled pid is not mistaken for it). When that process died (SIGKILL, power cut, OOM), the next
# farm command that opens the store finds it gone and marks the run interrupted: its running jobs go
# back to the queue without counting as an attempt, and `farm resume RUN` finishes it.


def _start_ticks(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: starttime, after the parenthesised comm


def in_process_name(pid: int | None = None) -> str:
    """This process's holder name for the runs it executes in-process."""
    pid = pid or os.getpid()
    return f"local:{socket.gethostname()}:{pid}:{_start_ticks(pid) or 0}"


def holder_alive(holder: str) -> bool | None:
    """True/False for a holder on this host; None when it lives on another host (not knowable here)."""
    try:
        kind, host, pid, start = holder.split(":")
    except ValueError:
        return None
    if kind != "local" or host != socket.gethostname():
        return None
    return _start_ticks(int(pid)) == start


def reap_abandoned(store: Store) -> list[str]:
    """Mark interrupted the in-process runs whose process died; returns their ids. Cheap when none."""
    reaped: list[str] = []
    for run_id, holder in store.held_runs():
        alive = holder_alive(holder)
        if alive is None:  # another host's process: its job leases tell (an expired one means it is gone)
            alive = not store.run_lease_expired(run_id, utcnow())
        if not alive and store.interrupt_run(run_id, holder, f"process {holder} ended without finishing the run"):
            log.warning("run %s: its process %s is gone; marked interrupted (farm resume %s)", run_id, holder,
                        run_id)
            reaped.append(run_id)
    return reaped
