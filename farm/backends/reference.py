"""The bundled reference engine (``farm/engine``): portable C, GGUF, f32/f16/q8_0/q4_0.

Built on the agent host for the device's target (host, or aarch64-linux-static for phones and
boards) and cached by source hash; the device receives the binary like any other artifact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from farm.backends.base import Artifact, Backend, BackendOutput, Prepared, resolve_model_file
from farm.devices import DeviceProfile
from farm.errors import JobError
from farm.jobs import Job, Repetition
from farm.transports.base import CommandResult

OOM_CODES = {137, -9}  # SIGKILL from the OOM killer (or a shell reporting 128+9)


class ReferenceBackend(Backend):
    """farm's own engine. Options: ``source_dir`` (another checkout of farm/engine, for A/B builds)."""

    name = "reference"

    def __init__(self, source_dir: str | None = None, engine_commit: str | None = None,
                 flags: list[str] | None = None, **_: Any) -> None:
        self.source_dir = Path(source_dir) if source_dir else None
        # An archived checkout (farm regress) has no .git: its commit comes with the options.
        self.engine_commit = engine_commit
        self.flags = list(flags) if flags else None

    def accepts(self, job: Job, profile: DeviceProfile) -> tuple[bool, str]:
        if job.quant not in ("f32", "f16", "q8_0", "q4_0"):
            return False, f"quant {job.quant} is not one of f32, f16, q8_0, q4_0"
        return True, ""

    def prepare(self, job: Job, profile: DeviceProfile) -> Prepared:
        from farm.engine.build import build

        engine = build(target=profile.engine_target, source_dir=self.source_dir, flags=self.flags)
        model = resolve_model_file(job.model, job.quant)
        return Prepared(
            artifacts=[Artifact("engine", engine.path, engine.sha256, executable=True),
                       Artifact("model", Path(model.path), model.sha256)],
            provenance={"engine": "farm-ref", "engine_build": engine.build_id,
                        "engine_commit": self.engine_commit or engine.commit,
                        "engine_sha256": engine.sha256, "build_flags": " ".join(engine.flags), "target": engine.target,
                        "compiler": engine.compiler, "model_sha256": model.sha256, "model_size": model.size,
                        "model_n_params": model.n_params},
        )

    def command(self, job: Job, staged: dict[str, str]) -> list[str]:
        return [staged["engine"], "bench", "-m", staged["model"], "-p", str(job.n_prompt), "-n", str(job.n_gen),
                "-t", str(job.threads), "-r", str(job.repetitions), "-w", str(job.warmup), "--kv", job.kv_type]

    def parse(self, result: CommandResult, job: Job) -> BackendOutput:
        if result.exit_code != 0:
            tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
            kind = "killed (out of memory?)" if result.exit_code in OOM_CODES else f"exited {result.exit_code}"
            raise JobError(f"farm-engine {kind}: {tail}")
        try:
            data = json.loads(result.stdout[result.stdout.index("{"):])
        except (ValueError, json.JSONDecodeError) as exc:
            raise JobError(f"farm-engine printed no JSON result: {result.stdout[:200]!r}") from exc
        reps = parse_repetitions(data)
        raw = {k: v for k, v in data.items() if k != "repetitions"}
        return BackendOutput(reps, raw=raw, provenance={"engine_version": data.get("version"),
                                                         "simd": data.get("simd")})


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
