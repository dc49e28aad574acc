"""The agent's spool: results the store could not take yet, on local disk until a flush gets them there.

A job is acknowledged only once its result is durable: committed in the store or, while the
store is unreachable, here (fsync + atomic rename), so a store or broker outage loses nothing:
the file stays until a flush succeeds. Flushing is
idempotent (the store upserts by job id and repetition), so two processes flushing one spool, or
a flush repeated after a crash, leave one copy.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from farm.errors import InfraError
from farm.jobs import Job, JobResult
from farm.store import Store

log = logging.getLogger("farm.spool")


class Spool:
    """A directory of ``<job id>.json`` files, each a JobResult with the Job it answers."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)

    def put(self, result: JobResult, job: Job) -> Path:
        """Write a result durably; returns its file."""
        final = self.path / f"{result.job_id}.json"
        tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")
        data = json.dumps({"result": result.model_dump(mode="json"), "job": job.model_dump(mode="json")})
        with open(tmp, "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        dir_fd = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself must survive a power cut
        finally:
            os.close(dir_fd)
        return final

    def pending(self) -> list[Path]:
        return sorted(p for p in self.path.glob("*.json") if not p.name.startswith("."))

    def flush_one(self, store: Store, path: Path, content: tuple[JobResult, Job] | None = None) -> bool:
        """Save one spooled result; True when it is in the store (or already gone).

        `content`: the result and job just written to `path` (the writer holds them: no re-read).
        """
        if content is None:
            try:
                data = json.loads(path.read_text())
            except FileNotFoundError:
                return True  # another flusher took it
            except ValueError:
                log.error("spool: unreadable %s kept aside", path)
                path.rename(path.with_suffix(".bad"))
                return True
            content = JobResult.model_validate(data["result"]), Job.model_validate(data["job"])
        result, job = content
        store.save_result(result, job)
        store.finish_run_if_complete(result.run_id)
        path.unlink(missing_ok=True)
        return True

    def deliver(self, store: Store, path: Path, content: tuple[JobResult, Job] | None = None,
                attempts: int = 3) -> bool:
        """Flush one file now, retrying briefly; False leaves it for the background flush."""
        try:
            for attempt in Retrying(stop=stop_after_attempt(attempts), wait=wait_exponential(0.1, max=1.0),
                                    retry=retry_if_exception_type(InfraError), reraise=True):
                with attempt:
                    return self.flush_one(store, path, content)
        except InfraError as exc:
            log.warning("spool: %s stays spooled: %s", path.name, exc)
        return False

    def flush(self, store: Store) -> int:
        """Flush everything pending; stops at the first store error. Returns how many were saved."""
        n = 0
        for path in self.pending():
            try:
                self.flush_one(store, path)
            except InfraError as exc:
                log.warning("spool: store unreachable, %d result(s) wait: %s", len(self.pending()), exc)
                break
            n += 1
        return n
