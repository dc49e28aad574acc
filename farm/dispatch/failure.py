"""The one place a failed job's result is built, whoever gives the job up."""

from __future__ import annotations

from farm.jobs import Job, JobResult


def failed_result(job: Job, error_class: str, error: str, *, device: str | None = None, attempt: int = 1,
                  agent: str = "") -> JobResult:
    """A ``failed`` result of `job` (on `device`, default the job's own) with its error class and text."""
    return JobResult(job_id=job.job_id, run_id=job.run_id, device=device or job.device, status="failed",
                     error_class=error_class, error=error, attempt=attempt, agent=agent)
