"""The backend interface: an inference engine farm can benchmark (reference engine, llama.cpp, ...).

A backend prepares artifacts on the agent host (builds the engine for the device's ABI, resolves
the model file), turns a job into one command line for the device, and parses what that command
printed into repetitions. Staging the files, thermal gating and power sampling are the agent's
business, shared by every backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from farm.devices import DeviceProfile
from farm.jobs import Job, ModelRef, Repetition, test_name
from farm.transports.base import CommandResult


@dataclass(frozen=True)
class Artifact:
    """A file a job needs on the device, addressed by content."""

    role: str  # "engine", "model", ...
    local: Path
    sha256: str
    executable: bool = False

    @property
    def remote_name(self) -> str:
        return f"{self.sha256[:16]}-{self.local.name}"


@dataclass
class Prepared:
    """What `prepare` found or built: the artifacts plus provenance to store with every result."""

    artifacts: list[Artifact]
    provenance: dict[str, Any] = field(default_factory=dict)


@dataclass
class Measured:
    """One test as an engine reported it (one line of its table): the shape, and every repetition it
    printed — or, when it printed only mean ± sd (``summary_only``), one repetition holding the mean.

    ``definitions`` says in words how this engine counts (what its prefill includes, which runs it
    drops); ``reported`` keeps the engine's own figures (rates, stddevs, averages) as printed.
    """

    n_prompt: int
    n_gen: int
    repetitions: list[Repetition]
    n_depth: int = 0
    threads: int | None = None
    summary_only: bool = False
    reported: dict[str, Any] = field(default_factory=dict)

    @property
    def test(self) -> str:
        return test_name(self.n_prompt, self.n_gen, self.n_depth)


@dataclass
class BackendOutput:
    repetitions: list[Repetition]
    raw: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)


class Backend(ABC):
    """One inference engine."""

    name: str = ""

    def accepts(self, job: Job, profile: DeviceProfile) -> tuple[bool, str]:
        """Whether this backend can run `job` on a device of `profile`, and why not."""
        return True, ""

    @classmethod
    def cannot_run(cls, arch: str, types: frozenset[str]) -> str | None:
        """Why this backend cannot run a model of architecture `arch` whose tensors are of ggml `types`
        (None: it can). The planner drops such cells with this reason before anything runs."""
        return None

    def can_interleave_steps(self, other: dict[str, Any]) -> bool:
        """Whether this build and the one the options `other` select can share one job in lock step,
        timed phase by timed phase (``farm regress --interleave step``). Engines that cannot are compared
        one process per side."""
        return False

    @abstractmethod
    def prepare(self, job: Job, profile: DeviceProfile) -> Prepared:
        """Build or find the engine binary and model file for this job (on the agent host)."""

    @abstractmethod
    def command(self, job: Job, staged: dict[str, str]) -> list[str]:
        """The argv to run on the device; `staged` maps artifact role → path on the device."""

    @abstractmethod
    def parse(self, result: CommandResult, job: Job) -> BackendOutput:
        """Every timed repetition from the command's output (raise JobError when it failed)."""


def resolve_model_file(ref: ModelRef, quant: str):  # -> farm.zoo.cache.ModelFile
    """The GGUF for a job's model on this host: built from a zoo card, or a verified user file."""
    from farm.zoo.files import resolve_model

    if ref.file is not None:
        return resolve_model(f"file:{ref.file}", None, sha256=ref.sha256)
    return resolve_model(ref.label, quant, ref.seed)
