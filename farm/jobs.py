"""The units of work and their outcomes: Job (one cell of a sweep on one device) and JobResult.

Both are pydantic models so they travel unchanged through Celery, Ray and the agent's spool.
A job's id is deterministic in (run, cell), which makes result upserts idempotent.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


def utcnow() -> datetime:
    return datetime.now(UTC)


class ModelRef(BaseModel):
    """Which weights a job runs: a zoo card with overrides, or a file."""

    model_config = ConfigDict(frozen=True)

    card: str | None = None
    overrides: dict[str, int] = Field(default_factory=dict)
    file: str | None = None
    sha256: str | None = None
    seed: int = 0

    @property
    def label(self) -> str:
        if self.file:
            return self.file.rsplit("/", 1)[-1]
        if not self.overrides:
            return str(self.card)
        inner = ",".join(f"{k}={v}" for k, v in sorted(self.overrides.items()))
        return f"{self.card}[{inner}]"


class Job(BaseModel):
    """One measurement: a model × quant × backend × shape × threads on one device, N repetitions."""

    job_id: str
    run_id: str
    index: int
    device: str
    profile: str
    backend: str
    backend_options: dict[str, Any] = Field(default_factory=dict)
    model: ModelRef
    quant: str
    n_prompt: int
    n_gen: int
    threads: int
    repetitions: int
    n_depth: int = 0  # tokens already in the KV cache before the timed phases (llama-bench -d)
    warmup: int
    cpus: str = "all"  # the `cpus` selector (all, big, little, prime, a mask or cpu list)
    cpu_list: str | None = None  # the cores it resolved to on this device's profile (None: not pinned)
    power_mode: str = "default"  # farm.agent.power_mode label
    kv_type: str = "f16"
    cooldown_s: float = 0.0
    power: bool = True
    thermal_gate: bool = True
    idle_s: float = 1.0
    timeout_s: float = 1800.0
    thermal_wait_s: float | None = None
    priority: int = 0
    est_s: float = 0.0
    mem_bytes: int = 0
    tags: dict[str, str] = Field(default_factory=dict)  # e.g. {"variant": "A"} for regressions

    @property
    def test(self) -> str:
        """llama-bench style test name: pp512, tg128, pp512+tg128, with @d512 at a depth."""
        return test_name(self.n_prompt, self.n_gen, self.n_depth)


def test_name(n_prompt: int, n_gen: int, n_depth: int = 0) -> str:
    """pp512 | tg128 | pp512+tg128, with @d<depth> appended when the test ran at a depth (llama-bench's names)."""
    name = f"pp{n_prompt}" if n_gen == 0 else (f"tg{n_gen}" if n_prompt == 0 else f"pp{n_prompt}+tg{n_gen}")
    return f"{name}@d{n_depth}" if n_depth else name


def job_id_for(run_id: str, cell: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(cell, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{run_id}-{digest}"


class Repetition(BaseModel):
    """One timed repetition, as measured; rates are derived from tokens and seconds."""

    rep: int
    n_prompt: int
    n_gen: int
    prefill_s: float | None = None
    decode_s: float | None = None
    # 10th-percentile time of one decode step (engines that time every token): interference only ever
    # adds time, so the fast steps show the engine's own speed; regressions judge it next to the total.
    decode_step_p10_s: float | None = None
    ttft_s: float | None = None
    peak_rss_bytes: int | None = None
    prefill_start_ns: int | None = None
    prefill_end_ns: int | None = None
    decode_start_ns: int | None = None
    decode_end_ns: int | None = None
    prefill_energy_j: float | None = None
    decode_energy_j: float | None = None
    prefill_j_per_tok: float | None = None
    decode_j_per_tok: float | None = None
    # |J/token| at or below this bound is within the idle baseline's noise (farm.power.energy): below resolution
    prefill_j_per_tok_bound: float | None = None
    decode_j_per_tok_bound: float | None = None
    prefill_avg_w: float | None = None
    decode_avg_w: float | None = None
    exit_status: int = 0
    # Which build ran it, when one job runs two in lock step (farm regress --interleave step); else the job's tag.
    variant: str | None = None

    @property
    def prefill_tps(self) -> float | None:
        return self.n_prompt / self.prefill_s if self.prefill_s and self.n_prompt else None

    @property
    def decode_tps(self) -> float | None:
        return self.n_gen / self.decode_s if self.decode_s and self.n_gen else None

    @property
    def decode_step_tps(self) -> float | None:
        """Tokens/s at the 10th-percentile step time (None when the engine does not time single steps)."""
        return 1.0 / self.decode_step_p10_s if self.decode_step_p10_s else None


class JobResult(BaseModel):
    """What an agent sends back for a job: every repetition plus the context to trust them."""

    job_id: str
    run_id: str
    device: str
    status: Literal["done", "failed"]
    error_class: str | None = None
    error: str | None = None
    attempt: int = 1
    agent: str = ""
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: datetime = Field(default_factory=utcnow)
    repetitions: list[Repetition] = Field(default_factory=list)
    fingerprint: dict[str, Any] = Field(default_factory=dict)
    provenance: dict[str, Any] = Field(default_factory=dict)
    thermal: dict[str, Any] = Field(default_factory=dict)
    power: dict[str, Any] = Field(default_factory=dict)
    trace: str | None = None  # compressed power trace (zlib + base64)
    bytes_pushed: int = 0
    raw: dict[str, Any] = Field(default_factory=dict)
