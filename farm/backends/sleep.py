"""The `sleep` backend: runs ``sleep SECONDS`` on the device once per repetition and reports its timing.

It measures no model. It exists to measure farm itself: dispatch overhead and makespan
(bench/dispatch.py), and the executors' fault handling in tests, with jobs whose length is known
and which run on any transport without building an engine. ``exit_code`` makes the device
command exit with that status after sleeping (137 is what an OOM kill looks like), so the error
taxonomy is exercised by a real failing process.
"""

from __future__ import annotations

from pydantic import Field

from farm.backends.base import Backend, BackendOutput, Prepared
from farm.devices import DeviceProfile
from farm.errors import JobError
from farm.jobs import Job, Repetition
from farm.registry import PluginOptions
from farm.transports.base import CommandResult

_EXIT_HINTS = {137: "killed (SIGKILL: out of memory?)", 139: "crashed (SIGSEGV)", 134: "aborted (SIGABRT)"}


class SleepBackend(Backend):
    """``sleep`` as the workload: known duration, real process, real transport."""

    name = "sleep"

    class Options(PluginOptions):
        seconds: float = Field(default=0.1, ge=0)
        exit_code: int = Field(default=0, ge=0, le=255)

    def __init__(self, seconds: float = 0.1, exit_code: int = 0) -> None:
        self.seconds = float(seconds)
        self.exit_code = int(exit_code)

    def prepare(self, job: Job, profile: DeviceProfile) -> Prepared:
        return Prepared(artifacts=[], provenance={"backend": "sleep", "seconds": self.seconds})

    def command(self, job: Job, staged: dict[str, str]) -> list[str]:
        # Device clock around each sleep: what the device saw, not what the agent guessed.
        script = (f"i=0; while [ $i -lt {int(job.repetitions)} ]; do s=$(date +%s%N); sleep {self.seconds:g}; "
                  f"e=$(date +%s%N); echo \"rep $i $s $e\"; i=$((i+1)); done; exit {self.exit_code}")
        return ["sh", "-c", script]

    def parse(self, result: CommandResult, job: Job) -> BackendOutput:
        if result.exit_code != 0:
            hint = _EXIT_HINTS.get(result.exit_code, f"exited {result.exit_code}")
            raise JobError(f"sleep workload {hint}")
        reps: list[Repetition] = []
        spans: list[float] = []
        for line in result.stdout.splitlines():
            parts = line.split()
            if len(parts) != 4 or parts[0] != "rep":
                continue
            start, end = int(parts[2]), int(parts[3])
            spans.append((end - start) / 1e9)
            reps.append(Repetition(rep=int(parts[1]), n_prompt=job.n_prompt, n_gen=job.n_gen))
        if len(reps) != job.repetitions:
            raise JobError(f"sleep workload printed {len(reps)} of {job.repetitions} repetitions")
        return BackendOutput(repetitions=reps, raw={"rep_s": spans, "run_s": sum(spans),
                                                   "command_s": result.duration_s})
