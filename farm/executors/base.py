"""What every executor shares: the dispatch contract. (The retry rule lives in :mod:`farm.dispatch.retry`.)"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from farm.devices import Inventory
from farm.jobs import Job
from farm.store import Store


@dataclass
class ProgressEvent:
    job: Job
    status: str  # started | stage:<name> | waiting: … | done | failed | retry
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
