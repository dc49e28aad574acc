"""MLC LLM: ``mlc_llm chat``'s ``/stats`` line and jetson-containers' benchmark CSV.

MLC has no device benchmark binary (``mlc_llm bench`` was removed in 2024); the lab supplies the ``mlc_llm``
launcher (a Jetson container's, say) and a compiled model directory. farm feeds ``chat`` the prompt, then
``/stats``, once per repetition. ``/stats`` prints only rates (``prefill: 48.7 tok/s, decode: 52.8 tok/s``,
``.1f``): the token counts stored are the cell's (prompt words and ``max_tokens``), not measured, and a
decode that stops early at an end-of-sequence token is not seen — the stored t/s are MLC's own.
jetson-containers' CSV (``timestamp, hostname, api, model, precision, input_tokens, output_tokens,
prefill_time, prefill_rate, decode_time, decode_rate, memory``) has measured counts and times.
Definitions: prefill t/s = prefill tokens / prefill time (older code added the embedding time); decode
t/s = decode tokens / decode time.
"""

from __future__ import annotations

import csv
import io
import re
from typing import Any, ClassVar

from farm.backends.base import Measured
from farm.backends.prebuilt import PrebuiltBackend, PrebuiltOptions, rate_rep
from farm.errors import JobError
from farm.jobs import Job, Repetition

DEFINITIONS = ("MLC LLM: prefill t/s = prefill tokens / prefill time, decode t/s = decode tokens / decode time; "
               "/stats prints rates only (.1f), so token counts are the request's")
_STATS = re.compile(r"prefill:\s*([0-9.]+|N/A)\s*tok/s,\s*decode:\s*([0-9.]+|N/A)\s*tok/s")


def parse_stats(text: str, n_prompt: int | None, n_gen: int | None) -> list[Measured]:
    """``/stats`` lines (one repetition each); the token counts must come from elsewhere (the cell, or the user)."""
    lines = [m for m in map(_STATS.search, text.splitlines()) if m]
    if lines and (n_prompt is None or n_gen is None):
        raise JobError("MLC's /stats line has rates but no token counts: give the prompt and generated tokens")
    if not lines:
        return []
    m = Measured(int(n_prompt or 0), int(n_gen or 0), [], reported={"definitions": DEFINITIONS, "rates": []})
    for s in lines:
        pre, dec = (None if v == "N/A" else float(v) for v in s.groups())
        m.repetitions.append(rate_rep(m.n_prompt, m.n_gen, pre, dec).model_copy(update={"rep": len(m.repetitions)}))
        m.reported["rates"].append({"prefill_tps": pre, "decode_tps": dec})
    return [m]


def parse_csv(text: str) -> list[Measured]:
    """jetson-containers benchmark.py rows, grouped by (input, output) tokens; times are seconds."""
    rows = list(csv.DictReader(io.StringIO(text.strip()), skipinitialspace=True))
    groups: dict[tuple[int, int], Measured] = {}
    for i, row in enumerate(rows, start=2):
        try:
            p, g = int(row["input_tokens"]), int(row["output_tokens"])
            pre, dec = float(row["prefill_time"]), float(row["decode_time"])
        except (KeyError, TypeError, ValueError) as exc:
            raise JobError(f"MLC benchmark CSV line {i}: {exc}") from None
        m = groups.setdefault((p, g), Measured(p, g, [], reported={"definitions": DEFINITIONS, "memory": []}))
        m.repetitions.append(Repetition(rep=len(m.repetitions), n_prompt=p, n_gen=g, prefill_s=pre, decode_s=dec,
                                        ttft_s=pre))
        m.reported["memory"].append(row.get("memory"))
    return list(groups.values())


class MlcOptions(PrebuiltOptions):
    model_lib: str | None = None  # --model-lib, relative to model_dir
    device: str = "cpu"
    word: str = "the"


class MlcBackend(PrebuiltBackend):
    """MLC LLM ``mlc_llm chat`` + ``/stats``. Options: ``binary`` (the launcher), ``model_dir``, ``model_lib``."""

    name = "mlc"
    engine = "MLC LLM"
    Options: ClassVar[type[PrebuiltOptions]] = MlcOptions
    definitions = DEFINITIONS
    has_depth = "mlc_llm chat has no KV-depth option for a timed phase"
    loop_reps = True

    def engine_argv(self, job: Job, exe: str, model_dir: str) -> list[str]:
        opts: Any = self.options
        prompt = " ".join([opts.word] * max(job.n_prompt, 1))
        feed = f"/set temperature=0;max_tokens={job.n_gen}\n{prompt}\n/stats\n/exit\n"
        chat = [exe, "chat", model_dir, "--device", opts.device]
        if opts.model_lib:
            chat += ["--model-lib", f"{model_dir}/{opts.model_lib}"]
        # chat reads the conversation on stdin; printf's %s keeps the prompt literal
        return ["sh", "-c", 'feed=$1; shift; printf "%s" "$feed" | "$@"', "mlc", feed, *chat]

    @classmethod
    def parse_text(cls, text: str, cell: tuple[int, int] | None = None) -> list[Measured]:
        first = text.lstrip().split("\n", 1)[0]
        tests = parse_csv(text) if "prefill_rate" in first else parse_stats(text, *(cell or (None, None)))
        if not tests:
            raise JobError("no MLC '/stats' line (prefill: X tok/s, decode: Y tok/s) or benchmark CSV in the output")
        return tests

    def repetitions_for(self, tests: list[Measured], job: Job) -> list[Any]:
        return [r.model_copy(update={"rep": i}) for i, r in enumerate(x for t in tests for x in t.repetitions)]
