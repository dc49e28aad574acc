"""The llama.cpp backend: runs ``llama-bench -o json`` and keeps every repetition it measured.

Owns the llama-bench command line and its output parser. The parser reads records by key name and
keeps keys it does not know in ``extra`` (llama-bench adds fields across versions: devices,
n_cpu_moe, no_op_offload, ...; ``flash_attn`` went from bool to -1/0/1). Test names follow
llama-bench and ``compare-llama-bench.py``: pp512, tg128, pp512+tg128, and ``@d512`` for a depth.

A farm job ``pp P + tg G`` becomes ``-p P -n G``: llama-bench times the pp and tg tests separately
(tg from an empty context, llama-bench's definition), and repetition i of the job joins sample i of
each. llama-bench prints no phase timestamps and no memory figure, so those stay empty; TTFT is the
pp sample (prompt processing until the logits of the last prompt token exist).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import field_validator

from farm.backends.base import Artifact, Backend, BackendOutput, Measured, Prepared, resolve_model_file
from farm.devices import DeviceProfile
from farm.errors import JobError
from farm.jobs import Job, Repetition, test_name
from farm.registry import PluginOptions
from farm.transports.base import CommandResult

# Keys of llama-bench's JSON record (README @5a32f10); anything else is kept as `extra`.
KNOWN_KEYS = frozenset({
    "build_commit", "build_number", "cpu_info", "gpu_info", "backends", "model_filename", "model_type", "model_size",
    "model_n_params", "n_batch", "n_ubatch", "n_threads", "cpu_mask", "cpu_strict", "poll", "type_k", "type_v",
    "n_gpu_layers", "split_mode", "main_gpu", "no_kv_offload", "flash_attn", "tensor_split", "use_mmap",
    "embeddings", "n_prompt", "n_gen", "n_depth", "test_time", "avg_ns", "stddev_ns", "avg_ts", "stddev_ts",
    "samples_ns", "samples_ts",
})
PROVENANCE_KEYS = ("build_commit", "build_number", "backends", "cpu_info", "gpu_info", "model_type", "n_batch",
                   "n_ubatch", "type_k", "type_v", "n_gpu_layers", "flash_attn", "use_mmap")
LLAMA_CPP_PYTHON_VERSION_NOTE = "the build farm makes from llama-cpp-python's sdist"


def _flash_attn(value: Any) -> str | None:
    """bool (older builds) or -1/0/1 (newer: -1 = auto) → "auto" | "on" | "off"."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int | float):
        return {-1: "auto", 0: "off", 1: "on"}.get(int(value), str(value))
    return str(value)


@dataclass
class BenchRecord:
    """One llama-bench test (one line of its table), with every sample."""

    n_prompt: int
    n_gen: int
    n_depth: int
    samples_ns: list[int]
    fields: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def test(self) -> str:
        return test_name(self.n_prompt, self.n_gen, self.n_depth)

    @property
    def flash_attn(self) -> str | None:
        return _flash_attn(self.fields.get("flash_attn"))

    @property
    def samples_ts(self) -> list[float]:
        tokens = self.n_prompt + self.n_gen
        return [tokens / (ns * 1e-9) for ns in self.samples_ns]


def _record(obj: dict[str, Any]) -> BenchRecord:
    try:
        n_prompt, n_gen = int(obj["n_prompt"]), int(obj["n_gen"])
    except (KeyError, TypeError, ValueError) as exc:
        raise JobError(f"llama-bench record without n_prompt/n_gen: {str(obj)[:200]}") from exc
    samples = obj.get("samples_ns")
    if not isinstance(samples, list) or not samples:
        raise JobError("llama-bench record has no samples_ns: this llama-bench is too old to report repetitions")
    return BenchRecord(n_prompt, n_gen, int(obj.get("n_depth") or 0), [int(s) for s in samples],
                       {k: v for k, v in obj.items() if k in KNOWN_KEYS},
                       {k: v for k, v in obj.items() if k not in KNOWN_KEYS})


def parse_records(text: str) -> list[BenchRecord]:
    """Records from ``-o json`` (one array) or ``-o jsonl`` (one object per line); other lines are ignored."""
    # A JSON array starts on a line of its own; log lines a build may print before it are skipped.
    start = next((m.start() for m in re.finditer(r"(?m)^\s*\[", text)), -1)
    if start >= 0:
        try:
            data = json.loads(text[start:text.rindex("]") + 1])
        except json.JSONDecodeError:
            data = None
        if isinstance(data, list):
            return [_record(o) for o in data if isinstance(o, dict)]
    records = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(obj, dict):
                records.append(_record(obj))
    return records


_MD_TEST = re.compile(r"^(pp|tg)\s*(\d+)(?:\s*\+\s*tg\s*(\d+))?(?:\s*@\s*d\s*(\d+))?$")


def parse_markdown(text: str) -> list[dict[str, Any]]:
    """Rows of llama-bench's markdown table (columns vary by run: only for display, never for data).

    Each row keeps its columns by header name, a normalised ``test`` ("pp 512" → pp512,
    "pp512 @ d512" → pp512@d512) and ``avg_ts``/``stddev_ts`` from "t/s" ("2368.80 ± 93.24").
    """
    lines = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("|")]
    if len(lines) < 2:
        return []
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = []
    for ln in lines[2:]:
        cells = [c.strip() for c in ln.strip("|").split("|")]
        row: dict[str, Any] = dict(zip(header, cells, strict=False))
        m = _MD_TEST.match(row.get("test", ""))
        if m:
            kind, a, g, d = m.groups()
            p, n = (int(a), int(g or 0)) if kind == "pp" else (0, int(a))
            row["test"] = test_name(p, n, int(d or 0))
        avg, _, sd = row.get("t/s", "").partition("±")
        row["avg_ts"] = float(avg) if avg.strip() else None
        row["stddev_ts"] = float(sd) if sd.strip() else None
        rows.append(row)
    return rows


def repetitions(records: list[BenchRecord], n_prompt: int, n_gen: int, n_depth: int = 0) -> list[Repetition]:
    """Join the pp and tg samples of a job into farm repetitions (sample i of each → repetition i)."""
    pp = next((r for r in records if (r.n_prompt, r.n_gen, r.n_depth) == (n_prompt, 0, n_depth)), None)
    tg = next((r for r in records if (r.n_prompt, r.n_gen, r.n_depth) == (0, n_gen, n_depth)), None)
    if (n_prompt and pp is None) or (n_gen and tg is None):
        have = ", ".join(r.test for r in records) or "nothing"
        raise JobError(f"llama-bench did not report {test_name(n_prompt, 0, n_depth)} and "
                       f"{test_name(0, n_gen, n_depth)}: got {have}")
    count = max(len(pp.samples_ns) if pp else 0, len(tg.samples_ns) if tg else 0)
    reps = []
    for i in range(count):
        pre = pp.samples_ns[i] / 1e9 if pp and i < len(pp.samples_ns) else None
        dec = tg.samples_ns[i] / 1e9 if tg and i < len(tg.samples_ns) else None
        reps.append(Repetition(rep=i, n_prompt=n_prompt if pre is not None else 0, n_gen=n_gen if dec is not None
                               else 0, prefill_s=pre, decode_s=dec, ttft_s=pre))
    return reps


DEFINITIONS = ("llama-bench: each test runs its own context; tg is timed from an empty context (or the depth's "
               "filled cache), pp is prompt processing until the last prompt token's logits; samples_ns are the "
               "timed repetitions after its one warm-up run")


def measured(text: str) -> list[Measured]:
    """Every test llama-bench printed, for ``farm ingest``: JSON/JSONL (every sample), CSV (every sample when
    it has samples_ns, else its mean), or the markdown table (mean ± sd only)."""
    records = parse_records(text)
    if not records and text.lstrip().startswith(("build_commit", '"build_commit"')):
        records = _csv_records(text)
    if records:
        return [_measured(r) for r in records]
    out = []
    for row in parse_markdown(text):
        m = _MD_NAME.match(row.get("test", ""))
        if m is None or row.get("avg_ts") is None:
            raise JobError(f"llama-bench table row without a test and t/s: {row}")
        p, g, d = int(m.group(1) or 0), int(m.group(2) or 0), int(m.group(3) or 0)
        t = (p + g) / row["avg_ts"]  # the mean rate as one repetition's time
        rep = Repetition(rep=0, n_prompt=p, n_gen=g, prefill_s=t if g == 0 else None, decode_s=t if p == 0 else None,
                         ttft_s=t if g == 0 else None)
        threads = row.get("threads")
        out.append(Measured(p, g, [rep], n_depth=d, threads=int(threads) if threads and threads.isdigit() else None,
                            summary_only=True, reported={"avg_ts": row["avg_ts"], "stddev_ts": row["stddev_ts"],
                                                         "definitions": DEFINITIONS}))
    return out


_MD_NAME = re.compile(r"^(?:pp(\d+))?(?:\+?tg(\d+))?(?:@d(\d+))?$")


def _csv_records(text: str) -> list[BenchRecord]:
    """``-o csv``: a header of field names, then one quoted row per test (samples as a list when present)."""
    import csv
    import io

    out = []
    for row in csv.DictReader(io.StringIO(text.strip())):
        obj: dict[str, Any] = dict(row)
        samples = row.get("samples_ns")
        if samples:
            obj["samples_ns"] = [int(x) for x in re.split(r"[,; ]+", samples.strip("[] ")) if x]
        elif row.get("avg_ns"):
            obj["samples_ns"] = [int(float(row["avg_ns"]))]
            obj["summary_only"] = True
        out.append(_record(obj))
    return out


def _measured(r: BenchRecord) -> Measured:
    reps = []
    for i, ns in enumerate(r.samples_ns):
        s = ns / 1e9
        pp_only, tg_only = r.n_gen == 0, r.n_prompt == 0
        reps.append(Repetition(rep=i, n_prompt=r.n_prompt, n_gen=r.n_gen, prefill_s=s if pp_only else None,
                               decode_s=s if tg_only else None, ttft_s=s if pp_only else None))
    threads = r.fields.get("n_threads")
    return Measured(r.n_prompt, r.n_gen, reps, n_depth=r.n_depth, threads=int(threads) if threads else None,
                    summary_only=bool(r.extra.get("summary_only")),
                    reported={"avg_ts": r.fields.get("avg_ts"), "stddev_ts": r.fields.get("stddev_ts"),
                              "build_commit": r.fields.get("build_commit"), "definitions": DEFINITIONS})


class LlamaCppBackend(Backend):
    """llama.cpp's llama-bench. Options: ``isa``, ``version`` (sdist), ``source_dir`` + ``engine_commit``
    (a llama.cpp tree to build, as ``farm regress`` passes), ``flags`` (extra cmake flags), ``binary``."""

    name = "llamacpp"

    class Options(PluginOptions):
        isa: str | None = None
        version: str | None = None
        source_dir: str | None = None
        engine_commit: str | None = None
        flags: list[str] | None = None  # extra cmake flags, from an allowlist (llamacpp_build.check_cmake_flags)
        binary: str | None = None  # runs on the device as given: user code by design (README)

        @field_validator("flags")
        @classmethod
        def _allowed(cls, flags: list[str] | None) -> list[str] | None:
            from farm.backends.llamacpp_build import check_cmake_flags

            check_cmake_flags(flags or [])
            return flags

        @field_validator("isa")
        @classmethod
        def _known_isa(cls, isa: str | None) -> str | None:
            from farm.backends.llamacpp_build import ISA_FLAGS

            if isa is not None and isa not in ISA_FLAGS:
                raise ValueError(f"{isa!r} is not one of {', '.join(ISA_FLAGS)}")
            return isa

    def __init__(self, isa: str | None = None, version: str | None = None, source_dir: str | None = None,
                 engine_commit: str | None = None, flags: list[str] | None = None,
                 binary: str | None = None) -> None:
        self.isa, self.version, self.flags = isa, version, list(flags or [])
        self.source_dir = Path(source_dir) if source_dir else None
        self.engine_commit, self.binary = engine_commit, binary

    @classmethod
    def cannot_run(cls, arch: str, types: frozenset[str]) -> str | None:
        from farm.zoo.mix import LLAMA_CPP_TYPES

        bad = sorted(types - LLAMA_CPP_TYPES)
        return f"llama.cpp ({LLAMA_CPP_PYTHON_VERSION_NOTE}) has no type {', '.join(bad)}" if bad else None

    def accepts(self, job: Job, profile: DeviceProfile) -> tuple[bool, str]:
        if job.kv_type not in ("f16", "f32"):
            return False, f"kv type {job.kv_type} is not f16/f32"
        if profile.engine_target != "host" and not self.binary:
            return False, f"llama-bench is built for this host only; give option 'binary' for {profile.abi}"
        return True, ""

    def prepare(self, job: Job, profile: DeviceProfile) -> Prepared:
        from farm.backends import llamacpp_build as lb

        if self.binary:
            path = Path(self.binary)
            built = lb.LlamaBenchBuild(path, lb._sha256(path), "prebuilt", (), lb._reported_commit(path), str(path))
        elif self.source_dir is not None:
            built = lb.from_tree(self.source_dir, self.engine_commit or "unknown", self.isa, self.flags)
        else:
            built = lb.from_sdist(self.isa, self.version or lb.LLAMA_CPP_PYTHON_VERSION)
        model = resolve_model_file(job.model, job.quant)
        return Prepared(
            artifacts=[Artifact("engine", built.path, built.sha256, executable=True),
                       Artifact("model", Path(model.path), model.sha256)],
            provenance={"engine": "llama.cpp", "engine_build": built.sha256[:24],
                        "engine_commit": self.engine_commit or built.commit, "engine_sha256": built.sha256,
                        "build_flags": list(built.flags), "engine_source": built.source, "target": "host",
                        "model_sha256": model.sha256, "model_size": model.size})

    def command(self, job: Job, staged: dict[str, str]) -> list[str]:
        argv = [staged["engine"], "-m", staged["model"], "-p", str(job.n_prompt), "-n", str(job.n_gen),
                "-t", str(job.threads), "-r", str(job.repetitions), "-ctk", job.kv_type, "-ctv", job.kv_type,
                "-o", "json"]
        if job.n_depth:  # only when asked: a llama-bench without -d refuses it, and the job fails with its message
            argv += ["-d", str(job.n_depth)]
        return argv if job.warmup else [*argv, "--no-warmup"]  # llama-bench's warm-up is one run, on or off

    def parse(self, result: CommandResult, job: Job) -> BackendOutput:
        if result.exit_code != 0:
            tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
            raise JobError(f"llama-bench exited {result.exit_code}: {tail}")
        records = parse_records(result.stdout)
        if not records:
            if parse_markdown(result.stdout):
                raise JobError("llama-bench printed its markdown table; farm needs -o json (per-repetition data)")
            raise JobError(f"llama-bench printed no JSON record: {result.stdout[:200]!r}")
        reps = repetitions(records, job.n_prompt, job.n_gen, job.n_depth)
        first = records[0]
        prov = {k: first.fields[k] for k in PROVENANCE_KEYS if k in first.fields}
        prov["flash_attn"] = first.flash_attn
        raw = {"records": [{**r.fields, "test": r.test, "extra": r.extra} for r in records]}
        return BackendOutput(reps, raw=raw, provenance={"llama_bench": prov})
