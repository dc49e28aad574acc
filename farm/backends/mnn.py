"""MNN's ``llm_bench`` (alibaba/MNN transformers/llm/engine/tools/llm_bench.cpp): command line and table parser.

llm_bench prints a markdown table of mean ± stdev per test, never the repetitions; farm therefore runs it
once per repetition with ``-rep 1`` (each process still runs twice and drops its first run, MNN's own
warm-up) and reads one table per process. Layouts parsed (shared/samples/engines.md §1):

- ``| model | modelSize | backend | threads | [precision |] test | t/s |`` with ``pp512``, ``tg128`` rows and,
  up to 3.6.1, a ``pp512+tg128`` row whose rate is of the summed pp and tg times (blended: no per-phase
  split, so kept as reported and not stored);
- ``speed(tok/s)`` as last header: a ``-pg`` row's cell is ``prefill<br>decode`` (decode continues on the
  prefill's KV cache, since #4692);
- the old ``-kv true`` layout: column ``llm_demo`` = ``prompt=P<br>decode=G``, speed ``pre ± sd<br>dec ± sd``.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from farm.backends.base import Measured
from farm.backends.prebuilt import PrebuiltBackend, PrebuiltOptions, join_phases, rate_rep
from farm.errors import JobError
from farm.jobs import Job

DEFINITIONS = ("MNN llm_bench: every test runs n_repeat + 1 times and drops the first; t/s = (prompt + generated "
               "tokens) / time per run, printed mean ± stdev; tg is decode from a 1-token context; a pp+tg row is "
               "the summed pp and tg times up to 3.6.1 (blended), separate prefill/decode speeds since #4692")
_PM = re.compile(r"^\s*([0-9.]+|nan|inf)\s*±\s*([0-9.]+|nan|-?nan|inf)\s*$", re.I)
_TEST = re.compile(r"^(?:pp(\d+))?\+?(?:tg(\d+))?$")
_KV = re.compile(r"^prompt=(\d+)<br>decode=(\d+)$")


def _pm(cell: str) -> tuple[float, float]:
    m = _PM.match(cell)
    if m is None:
        raise JobError(f"MNN speed cell {cell!r} is not 'mean ± sd'")
    return float(m.group(1)), float(m.group(2))


def parse_table(text: str) -> list[Measured]:
    """Every row of every llm_bench table in `text` (tables of several processes in order)."""
    out: list[Measured] = []
    header: list[str] | None = None
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("|"):
            header = None if not line else header
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if "model" in cells and ("test" in cells or "llm_demo" in cells):
            header = cells
            continue
        if header is None or set("".join(cells)) <= set("-: "):
            continue
        out.append(_row(dict(zip(header, cells, strict=False))))
    return out


def _row(row: dict[str, str]) -> Measured:
    speed = row.get("t/s") or row.get("speed(tok/s)")
    threads = int(row["threads"]) if row.get("threads", "").isdigit() else None
    base: dict[str, Any] = {"backend": row.get("backend"), "model_size": row.get("modelSize"),
                            "precision": row.get("precision"), "definitions": DEFINITIONS}
    if speed is None:
        raise JobError(f"MNN table row has no t/s or speed(tok/s) column: {row}")
    if "llm_demo" in row:  # old -kv true layout
        m = _KV.match(row["llm_demo"])
        if m is None:
            raise JobError(f"MNN llm_demo cell {row['llm_demo']!r} is not prompt=P<br>decode=G")
        p, g = int(m.group(1)), int(m.group(2))
    else:
        m = _TEST.match(row.get("test", "").replace(" ", ""))
        if m is None or not (m.group(1) or m.group(2)):
            raise JobError(f"MNN test {row.get('test')!r} is not ppN, tgN or ppN+tgN")
        p, g = int(m.group(1) or 0), int(m.group(2) or 0)
    parts = speed.split("<br>")
    if len(parts) == 2:  # prefill<br>decode: each its own mean ± sd
        (pre, pre_sd), (dec, dec_sd) = _pm(parts[0]), _pm(parts[1])
        rep = rate_rep(p, g, pre, dec)
        return Measured(p, g, [rep], threads=threads, summary_only=True, reported={
            **base, "prefill_tps": pre, "prefill_std": pre_sd, "decode_tps": dec, "decode_std": dec_sd})
    tps, sd = _pm(parts[0])
    if p and g:  # ≤ 3.6.1: one rate over the summed times of both phases, which cannot be split
        return Measured(p, g, [], threads=threads, summary_only=True, reported={
            **base, "blended_tps": tps, "blended_std": sd,
            "note": "pp+tg rate of the summed pp and tg times (MNN <= 3.6.1): no per-phase split, not stored"})
    rep = rate_rep(p, g, tps if p else None, tps if g else None)
    return Measured(p, g, [rep], threads=threads, summary_only=True, reported={**base, "tps": tps, "std": sd})


class MnnOptions(PrebuiltOptions):
    backend: str = "cpu"  # -a: cpu | opencl | vulkan | metal | hexagon
    precision: int | None = None  # -c: 0 normal, 1 high, 2 low (MNN's default 2)


class MnnBackend(PrebuiltBackend):
    """MNN ``llm_bench``. Options: ``binary``, ``model_dir`` (holding config.json), ``backend``, ``precision``."""

    name = "mnn"
    engine = "MNN"
    Options: ClassVar[type[PrebuiltOptions]] = MnnOptions
    definitions = DEFINITIONS
    has_depth = "llm_bench has no KV-depth option (tg always starts from a 1-token context)"
    loop_reps = True

    def engine_argv(self, job: Job, exe: str, model_dir: str) -> list[str]:
        opts: Any = self.options
        argv = [exe, "-m", f"{model_dir}/config.json", "-a", opts.backend, "-t", str(job.threads),
                "-p", str(job.n_prompt), "-n", str(job.n_gen), "-rep", "1"]
        return argv if opts.precision is None else [*argv, "-c", str(opts.precision)]

    @classmethod
    def parse_text(cls, text: str, cell: tuple[int, int] | None = None) -> list[Measured]:
        tests = parse_table(text)
        if not tests:
            raise JobError("no llm_bench table (| model | modelSize | ... | test | t/s |) in the output")
        return tests

    def repetitions_for(self, tests: list[Measured], job: Job) -> list[Any]:
        return join_phases(tests, job.n_prompt, job.n_gen, job.n_depth, "llm_bench")
