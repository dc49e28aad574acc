"""ONNX Runtime GenAI's ``model_benchmark`` (benchmark/c/main.cpp): command line and report parser.

model_benchmark prints statistics over its repetitions (avg, p50, stddev, n), never each repetition, so a
job stores one repetition with the averages (``summary_only``). Definitions (main.cpp):
"Prompt processing" = the ``AppendTokenSequences`` call (prefill, TTFT), tokens/s = batch·prompt / avg;
"Token generation" = each ``GenerateNextToken`` after the first, per token; the ``n:`` line says samples ×
tokens per sample, so a repetition's decode is (samples / repetitions) tokens × the per-token average.
"Peak working set size" is in bytes. There is no thread-count flag (the model's genai_config.json decides).
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from farm.backends.base import Measured
from farm.backends.prebuilt import PrebuiltBackend, PrebuiltOptions
from farm.errors import JobError
from farm.jobs import Job, Repetition

DEFINITIONS = ("ONNX Runtime GenAI model_benchmark: averages only (one stored repetition); prefill = "
               "AppendTokenSequences (TTFT); decode = per-token GenerateNextToken after the first token, so a "
               "repetition decodes tokens-to-generate - 1 timed tokens; threads are set by genai_config.json")
_HEAD = re.compile(r"Batch size:\s*(\d+),\s*prompt tokens:\s*(\d+),\s*tokens to generate:\s*(\d+)")
_STAT = re.compile(r"^\s*(avg|p50|stddev) \((us|ms|tokens/s)\):\s*([0-9.eE+-]+)")
_N = re.compile(r"^\s*n:\s*(\d+)\s*\*\s*(\d+)\s*token")
_PEAK = re.compile(r"Peak working set size(?: \(bytes\))?:\s*(\d+)")


def parse_report(text: str) -> list[Measured]:
    out: list[Measured] = []
    sections: dict[str, dict[str, float]] = {}
    head: tuple[int, int, int] | None = None
    name = None

    def close() -> None:
        if head is None:
            return
        batch, prompt, gen = head
        pp, tg = sections.get("Prompt processing", {}), sections.get("Token generation", {})
        if "avg_us" not in pp or "avg_us" not in tg or "n" not in pp:
            raise JobError("model_benchmark report without Prompt processing / Token generation averages")
        reps_run = int(pp["n"])  # one prompt processing per repetition
        per_rep_tokens = int(tg.get("n", reps_run * (gen - 1))) // max(reps_run, 1)
        rep = Repetition(rep=0, n_prompt=batch * prompt, n_gen=batch * per_rep_tokens,
                         prefill_s=pp["avg_us"] / 1e6, ttft_s=pp["avg_us"] / 1e6,
                         decode_s=per_rep_tokens * tg["avg_us"] / 1e6,
                         peak_rss_bytes=int(sections["peak"]["bytes"]) if "peak" in sections else None)
        out.append(Measured(rep.n_prompt, rep.n_gen, [rep], summary_only=True, reported={
            "definitions": DEFINITIONS, "tokens_to_generate": gen, "repetitions": reps_run,
            **{f"{sec.lower().replace(' ', '_')}_{k}": v for sec, st in sections.items() if sec != "peak"
               for k, v in st.items()}}))

    for line in text.splitlines():
        m = _HEAD.search(line)
        if m:
            close()
            head, sections, name = (int(m.group(1)), int(m.group(2)), int(m.group(3))), {}, None
            continue
        if line and not line[0].isspace() and line.rstrip().endswith(":"):
            name = line.split("(")[0].strip().rstrip(":").strip()
            sections[name] = {}
            continue
        m = _STAT.match(line)
        if m and name:
            unit = {"us": "us", "ms": "ms", "tokens/s": "tps"}[m.group(2)]
            sections[name][f"{m.group(1)}_{unit}"] = float(m.group(3))
            continue
        m = _N.match(line)
        if m and name:
            sections[name]["n"] = int(m.group(1))
            sections[name]["tokens_per_sample"] = int(m.group(2))
            continue
        m = _PEAK.search(line)
        if m:
            sections["peak"] = {"bytes": float(m.group(1))}
    close()
    return out


class OrtGenAIOptions(PrebuiltOptions):
    threads: int | None = None  # the intra-op threads the model directory's genai_config.json sets
    provider: str = "cpu"  # -e


class OrtGenAIBackend(PrebuiltBackend):
    """ONNX Runtime GenAI ``model_benchmark``. Options: ``binary``, ``model_dir``, ``threads``, ``provider``."""

    name = "ortgenai"
    engine = "ONNX Runtime GenAI"
    Options: ClassVar[type[PrebuiltOptions]] = OrtGenAIOptions
    definitions = DEFINITIONS
    has_depth = "model_benchmark has no KV-depth option (each repetition starts a new generator)"

    def accepts(self, job: Job, profile: Any) -> tuple[bool, str]:
        opts: Any = self.options
        if opts.threads != job.threads:
            return False, (f"model_benchmark has no thread flag: the model's genai_config.json decides; say its "
                           f"thread count in option 'threads' (is {opts.threads}, the cell asks {job.threads})")
        return super().accepts(job, profile)

    def engine_argv(self, job: Job, exe: str, model_dir: str) -> list[str]:
        opts: Any = self.options
        return [exe, "-i", model_dir, "-l", str(job.n_prompt), "-g", str(job.n_gen), "-r", str(job.repetitions),
                "-w", str(job.warmup), "-e", opts.provider]

    @classmethod
    def parse_text(cls, text: str, cell: tuple[int, int] | None = None) -> list[Measured]:
        tests = parse_report(text)
        if not tests:
            raise JobError("no model_benchmark report (Batch size: ..., prompt tokens: ...) in the output")
        return tests

    def repetitions_for(self, tests: list[Measured], job: Job) -> list[Any]:
        found = [t for t in tests if t.n_prompt == job.n_prompt]
        if not found:
            raise JobError(f"model_benchmark did not report a prompt of {job.n_prompt} tokens")
        return found[0].repetitions
