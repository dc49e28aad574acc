"""The bundled reference engine (``farm/engine``): portable C, GGUF, f32/f16, legacy quants and q4_K/q5_K/q6_K.

Built on the agent host for the device's target (host, or aarch64-linux-static for phones and
boards) and cached by source hash; the device receives the binary like any other artifact.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import field_validator

from farm.backends.base import Artifact, Backend, BackendOutput, Prepared, resolve_model_file
from farm.devices import DeviceProfile
from farm.errors import JobError
from farm.jobs import Job, Repetition
from farm.registry import PluginOptions
from farm.transports.base import CommandResult

OOM_CODES = {137, -9}  # SIGKILL from the OOM killer (or a shell reporting 128+9)
# What farm/engine loads (model.c): architectures and ggml tensor types.
ARCHS = ("llama", "qwen2", "gemma2", "openelm")
TYPES: frozenset[str] = frozenset({"f32", "f16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q4_k", "q5_k", "q6_k"})


class ReferenceBackend(Backend):
    """farm's own engine. Options: ``source_dir`` (another checkout of farm/engine, for A/B builds),
    ``engine_commit``, ``flags``; and for one job that runs two builds in lock step (``farm regress
    --interleave step``): ``lockstep_with`` (the B side's options) and ``first`` ("A" or "B", who takes the
    first turn)."""

    name = "reference"

    class Options(PluginOptions):
        """`source_dir` is a checkout of engine sources that farm compiles and runs: user code, by design
        (see farm/backends/README.md). `flags` are checked against an allowlist (farm.engine.build)."""

        source_dir: str | None = None
        engine_commit: str | None = None
        flags: list[str] | None = None
        lockstep_with: ReferenceBackend.Options | None = None
        first: Literal["A", "B"] = "A"

        @field_validator("flags")
        @classmethod
        def _allowed(cls, flags: list[str] | None) -> list[str] | None:
            from farm.engine.build import check_flags

            check_flags(flags or [])
            return flags

    def __init__(self, source_dir: str | None = None, engine_commit: str | None = None,
                 flags: list[str] | None = None, lockstep_with: dict[str, Any] | None = None,
                 first: str = "A") -> None:
        self.source_dir = Path(source_dir) if source_dir else None
        # An archived checkout (farm regress) has no .git: its commit comes with the options.
        self.engine_commit = engine_commit
        self.flags = list(flags) if flags else None
        self.partner = ReferenceBackend(**lockstep_with) if lockstep_with is not None else None
        if first not in ("A", "B"):
            raise JobError(f"reference backend: first must be A or B, got {first!r}")
        self.first = first

    @classmethod
    def cannot_run(cls, arch: str, types: frozenset[str]) -> str | None:
        if arch not in ARCHS:
            return f"the reference engine runs architectures {', '.join(ARCHS)}, not {arch}"
        bad = sorted(types - TYPES)
        if bad:
            return f"the reference engine has no kernel for {', '.join(bad)} (it runs {', '.join(sorted(TYPES))})"
        return None

    def accepts(self, job: Job, profile: DeviceProfile) -> tuple[bool, str]:
        from farm.zoo.mix import base_type

        if job.model.file is None and base_type(job.quant) not in TYPES:
            return False, f"quant {job.quant} is not one of {', '.join(sorted(TYPES))}"
        if self.partner is not None and not (can_lockstep(self.source_dir) and can_lockstep(self.partner.source_dir)):
            return False, "a build without --lockstep cannot be interleaved step by step (use --interleave process)"
        return True, ""

    def can_interleave_steps(self, other: dict[str, Any]) -> bool:
        """Whether this build and the one `other` selects can run in lock step (both know --lockstep)."""
        return can_lockstep(self.source_dir) and can_lockstep(ReferenceBackend(**other).source_dir)

    def _engine(self, job: Job, profile: DeviceProfile) -> tuple[Any, dict[str, Any]]:
        from farm.engine.build import build

        engine = build(target=profile.engine_target, source_dir=self.source_dir, flags=self.flags)
        return engine, {"engine": "farm-ref", "engine_build": engine.build_id,
                        "engine_commit": self.engine_commit or engine.commit, "engine_sha256": engine.sha256,
                        "build_flags": " ".join(engine.flags), "target": engine.target, "compiler": engine.compiler}

    def prepare(self, job: Job, profile: DeviceProfile) -> Prepared:
        engine, prov = self._engine(job, profile)
        model = resolve_model_file(job.model, job.quant)
        artifacts = [Artifact("engine", engine.path, engine.sha256, executable=True),
                     Artifact("model", Path(model.path), model.sha256)]
        prov = {**prov, "model_sha256": model.sha256, "model_size": model.size, "model_n_params": model.n_params}
        if self.partner is not None:
            from farm.engine.build import build

            engine_b, prov_b = self.partner._engine(job, profile)
            pair = build(target=profile.engine_target, program="farm-pair")  # farm's own, not the engine's
            artifacts += [Artifact("engine_b", engine_b.path, engine_b.sha256, executable=True),
                          Artifact("pair", pair.path, pair.sha256, executable=True)]
            prov["variants"] = {"A": {k: prov[k] for k in prov_b}, "B": prov_b}
            prov["interleave"] = "step"
        return Prepared(artifacts=artifacts, provenance=prov)

    def _bench(self, job: Job, engine: str, model: str) -> list[str]:
        return [engine, "bench", "-m", model, "-p", str(job.n_prompt), "-n", str(job.n_gen),
                "-t", str(job.threads), "-r", str(job.repetitions), "-w", str(job.warmup), "--kv", job.kv_type,
                # only when asked: an engine commit from before -d (farm regress) still runs depth-0 jobs
                *(["-d", str(job.n_depth)] if job.n_depth else [])]

    def command(self, job: Job, staged: dict[str, str]) -> list[str]:
        if self.partner is None:
            return self._bench(job, staged["engine"], staged["model"])
        return [staged["pair"], "--first", self.first,
                "--", *self._bench(job, staged["engine"], staged["model"]), "--lockstep", "3,4",
                "--", *self._bench(job, staged["engine_b"], staged["model"]), "--lockstep", "3,4"]

    def parse(self, result: CommandResult, job: Job) -> BackendOutput:
        if result.exit_code != 0:
            lines = (result.stderr or result.stdout).strip().splitlines()
            tail = " | ".join(lines[-3:])
            kind = "killed (out of memory?)" if result.exit_code in OOM_CODES else f"exited {result.exit_code}"
            # farm-pair names the side that failed: keep it first, so the verdict knows base from head.
            side = next((m.group(1) for m in map(_PAIR_FAILED.match, reversed(lines)) if m), None)
            raise JobError(f"{side + ': ' if side else ''}farm-engine {kind}: {tail}")
        try:
            data = json.loads(result.stdout[result.stdout.index("{"):])
        except (ValueError, json.JSONDecodeError) as exc:
            raise JobError(f"farm-engine printed no JSON result: {result.stdout[:200]!r}") from exc
        if data.get("interleave") == "step":
            return _parse_pair(data)
        reps = parse_repetitions(data)
        raw = {k: v for k, v in data.items() if k != "repetitions"}
        return BackendOutput(reps, raw=raw, provenance={"engine_version": data.get("version"),
                                                         "simd": data.get("simd")})


_PAIR_FAILED = re.compile(r"farm-pair: ([AB]) \(")
LOCKSTEP_FLAG = '"--lockstep"'


def can_lockstep(source_dir: Path | None) -> bool:
    """Whether the engine sources in `source_dir` (default: farm's own) take ``--lockstep`` (farm-pair)."""
    from farm.engine.build import SOURCE_DIR

    main = (source_dir or SOURCE_DIR) / "main.c"
    try:
        return LOCKSTEP_FLAG in main.read_text(errors="replace")
    except OSError:
        return False


def _parse_pair(data: dict[str, Any]) -> BackendOutput:
    """farm-pair's output: both builds' repetitions, numbered A0 B0 A1 B1 ... (rep = 2·i + side).

    Their phase spans overlap in wall time (the turns interleave), so they carry no span: no power
    sample can be told apart between A and B, and energy is left unattributed rather than split by guess.
    """
    reps: list[Repetition] = []
    for k, side in enumerate("AB"):
        for r in parse_repetitions(data[side]):
            reps.append(r.model_copy(update={
                "rep": 2 * r.rep + k, "variant": side, "prefill_start_ns": None, "prefill_end_ns": None,
                "decode_start_ns": None, "decode_end_ns": None}))
    raw = {"interleave": "step", "turns": data.get("turns"),
           **{side: {k: v for k, v in data[side].items() if k != "repetitions"} for side in "AB"}}
    return BackendOutput(sorted(reps, key=lambda r: r.rep), raw=raw,
                         provenance={"engine_version": data["A"].get("version"), "simd": data["A"].get("simd")})


def fast_step_s(steps_ns: list[int]) -> float | None:
    """The 10th-percentile decode step, in seconds (linear interpolation; None without steps).

    A busy neighbour, an SMT sibling or a hypervisor only ever add time to a step; with one-step
    resolution the fast tail is the engine's own speed. On this project's A/A runs of a loaded host
    its pair-to-pair spread was 35-45% below the median step's and half the total's.
    """
    return float(np.percentile(steps_ns, 10)) / 1e9 if steps_ns else None


def parse_repetitions(data: dict[str, Any]) -> list[Repetition]:
    """Timed repetitions (warm-ups dropped) from the engine's bench JSON."""
    peak = data.get("peak_rss_bytes")
    reps: list[Repetition] = []
    for r in data.get("repetitions", []):
        if r.get("warmup"):
            continue
        reps.append(Repetition(
            rep=len(reps), n_prompt=r["n_prompt"], n_gen=r["n_gen"],
            prefill_s=r["prefill_ns"] / 1e9 if r.get("n_prompt") else None,
            decode_s=r["decode_ns"] / 1e9 if r.get("n_gen") else None,
            decode_step_p10_s=fast_step_s(r.get("decode_token_ns") or []),
            ttft_s=r["ttft_ns"] / 1e9 if r.get("ttft_ns") is not None and r.get("n_gen") else None,
            peak_rss_bytes=peak, prefill_start_ns=r.get("prefill_start_ns"), prefill_end_ns=r.get("prefill_end_ns"),
            decode_start_ns=r.get("decode_start_ns"), decode_end_ns=r.get("decode_end_ns")))
    if not reps:
        raise JobError("farm-engine reported no timed repetition")
    return reps
