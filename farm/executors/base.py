"""What every executor shares: the dispatch contract and the retry rule for infrastructure errors."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from farm.devices import Inventory
from farm.jobs import Job
from farm.store import Store

MAX_ATTEMPTS = 3  # infrastructure failures per job before it is stored as failed (infra)


@dataclass
class ProgressEvent:
    job: Job
    status: str  # started | stage:<name> | done | failed | retry
    detail: str = ""


ProgressCallback = Callable[[ProgressEvent], None]


class Executor(ABC):
    """Dispatches the jobs of a run; results reach the store through the agents."""

    name: str = ""
    blocking: bool = False  # True when submit() returns only after every job ended

    def __init__(self, store: Store, inventory: Inventory, **options: object) -> None:
        self.store = store
        self.inventory = inventory
        self.options = options

    @abstractmethod
    def submit(self, run_id: str, jobs: list[Job], progress: ProgressCallback | None = None) -> None:
        """Dispatch `jobs` of run `run_id`."""


def retry_target(job: Job, inventory: Inventory, tried: set[str], quarantined: set[str],
                 allowed: set[str] | None = None) -> str | None:
    """Another device of the job's profile for a retry after an infrastructure error, if any."""
    for dev in inventory.devices:
        if dev.profile != job.profile or dev.name in tried or dev.name in quarantined:
            continue
        if allowed is not None and dev.name not in allowed:
            continue
        return dev.name
    return job.device if job.device not in quarantined else None
