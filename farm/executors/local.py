"""The in-process executor: the embedded default. No server; this process is the agent.

It hands the run to :class:`farm.agent.inprocess.InProcessAgent`, which runs every job through the
same lifecycle as Celery and Ray agents (claim, device lease, heartbeat, retry rule, spool).
"""

from __future__ import annotations

from farm.agent.inprocess import InProcessAgent
from farm.executors.base import Executor, ProgressCallback, ProgressEvent
from farm.jobs import Job


class LocalExecutor(Executor):
    name = "local"
    blocking = True

    def submit(self, run_id: str, jobs: list[Job], progress: ProgressCallback | None = None) -> None:
        """Run the run's queued jobs here; raises Interrupted on Ctrl-C/SIGTERM, InfraError when the store is gone."""

        def emit(job: Job, status: str, detail: str) -> None:
            if progress is not None:
                progress(ProgressEvent(job, status, detail))

        devices = sorted({j.device for j in jobs})
        InProcessAgent(self.store, self.inventory, run_id, emit).run(devices)
