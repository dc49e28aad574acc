"""The queued jobs of active runs, as a dispatcher that polls the store sees them."""

from __future__ import annotations

from sqlalchemy import select

from farm.jobs import Job
from farm.store import Store
from farm.store.models import JobRow, Run

ACTIVE_RUN = ("queued", "running")


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

    A queued job's spec changes only when it is moved to another device (:meth:`Store.retarget`), so
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


