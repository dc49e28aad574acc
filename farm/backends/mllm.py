"""mllm's ``mllm-llm-benchmark`` (tools/mllm-llm-benchmark/main.cpp): command line and console parser.

Each ``Test Configuration`` block (PP, TG) is followed by ``Run i of R...`` blocks with TTFT, prefill and
decode speed (newer builds add prefill and per-token decode latency). The ``Average`` block is not read:
the stored version divides the sums by 3 whatever the number of runs is (and its CSV by 3·R), so for
R ≠ 3 it is wrong; the per-run lines are the measurement. Definitions (models/*.hpp): TTFT = from the
``streamGenerate`` call to the first token; prefill speed = PP / TTFT; decode speed = tokens / (last −
first token callback) — Qwen3-KAI counts every token, Llama excludes the first.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from farm.backends.base import Measured
from farm.backends.prebuilt import PrebuiltBackend, PrebuiltOptions, rate_rep
from farm.errors import JobError
from farm.jobs import Job

DEFINITIONS = ("mllm-llm-benchmark: per-run lines used; its printed Average divides by 3 whatever --runs is "
               "(wrong for runs != 3); TTFT = streamGenerate call to first token; prefill speed = PP / TTFT; "
               "decode speed = tokens / (last - first token callback), Llama.hpp excludes the first token")
_CONF = re.compile(r"Prompt Length \(PP\)\s*:\s*(\d+)|Generation Length \(TG\)\s*:\s*(\d+)")
_RUN = re.compile(r"^\s*Run (\d+) of (\d+)")
_FIELD = re.compile(r"^\s*(TTFT|Prefill Speed|Decode Speed|Prefill Latency|Decode Latency)\s*:\s*([0-9.eE+-]+)")
_AVG = re.compile(r"^Average (TTFT|Prefill Speed|Decode Speed)\s*:\s*([0-9.eE+-]+)")


def parse_runs(text: str) -> list[Measured]:
    out: list[Measured] = []
    pp = tg = None
    cur: Measured | None = None
    run: dict[str, float] | None = None

    def close_run() -> None:
        if run is not None and cur is not None:
            if "Prefill Speed" not in run or "Decode Speed" not in run:
                raise JobError(f"mllm run {len(cur.repetitions) + 1} has no prefill or decode speed")
            ttft = run.get("TTFT")
            rep = rate_rep(cur.n_prompt, cur.n_gen, run["Prefill Speed"], run["Decode Speed"],
                           ttft_s=ttft / 1e3 if ttft is not None else None)
            cur.repetitions.append(rep.model_copy(update={"rep": len(cur.repetitions)}))
            cur.reported["runs"].append(dict(run))

    for line in text.splitlines():
        m = _CONF.search(line)
        if m:
            pp, tg = (int(m.group(1)), tg) if m.group(1) else (pp, int(m.group(2)))
            continue
        m = _RUN.match(line)
        if m:
            if pp is None or tg is None:
                raise JobError("mllm run before its Test Configuration (PP, TG)")
            close_run()
            run = {}
            if cur is None or (cur.n_prompt, cur.n_gen) != (pp, tg) or int(m.group(1)) == 1:
                cur = Measured(pp, tg, [], reported={"definitions": DEFINITIONS, "runs": [],
                                                     "runs_declared": int(m.group(2))})
                out.append(cur)
            continue
        m = _FIELD.match(line)
        if m and run is not None:
            run[m.group(1)] = float(m.group(2))
            continue
        m = _AVG.match(line)
        if m:
            close_run()
            run = None
            if cur is not None:  # kept as printed, never used (see the module docstring)
                cur.reported.setdefault("printed_average", {})[m.group(1)] = float(m.group(2))
    close_run()
    return out


class MllmOptions(PrebuiltOptions):
    model_name: str  # -n: the implementation (qwen3-w4a32-kai, llama, tiny_llama, ...)
    model: str = "model.mllm"
    config: str = "config.json"
    runs_flag: bool = True  # builds since -r/--runs; older ones always run 3


class MllmBackend(PrebuiltBackend):
    """mllm ``mllm-llm-benchmark``. Options: ``binary``, ``model_dir``, ``model_name``, ``model``, ``config``."""

    name = "mllm"
    engine = "mllm"
    Options: ClassVar[type[PrebuiltOptions]] = MllmOptions
    definitions = DEFINITIONS
    has_depth = "mllm-llm-benchmark starts every run from an empty cache (-cl only sizes it)"

    def accepts(self, job: Job, profile: Any) -> tuple[bool, str]:
        opts: Any = self.options
        if not opts.runs_flag and job.warmup + job.repetitions != 3:
            return False, "this mllm-llm-benchmark has no --runs flag and always runs 3 (warmup + repetitions = 3)"
        return super().accepts(job, profile)

    def engine_argv(self, job: Job, exe: str, model_dir: str) -> list[str]:
        opts: Any = self.options
        argv = [exe, "-n", opts.model_name, "-m", f"{model_dir}/{opts.model}", "-c", f"{model_dir}/{opts.config}",
                "-t", str(job.threads), "-pp", str(job.n_prompt), "-tg", str(job.n_gen),
                "-cl", str(job.n_prompt + job.n_gen)]
        # farm's warm-up runs are mllm's first runs (dropped below); farm's cooldown is its own, so none here
        return [*argv, "-r", str(job.warmup + job.repetitions), "-cs", "0"] if opts.runs_flag else argv

    @classmethod
    def parse_text(cls, text: str, cell: tuple[int, int] | None = None) -> list[Measured]:
        tests = parse_runs(text)
        if not tests:
            raise JobError("no mllm 'Run i of R' block in the output")
        return tests

    def repetitions_for(self, tests: list[Measured], job: Job) -> list[Any]:
        reps = super().repetitions_for(tests, job)[job.warmup:]
        return [r.model_copy(update={"rep": i}) for i, r in enumerate(reps)]
