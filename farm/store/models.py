"""SQLAlchemy tables of the central store: devices, engine builds, models, runs, jobs, results, traces.

One row per repetition in ``results``, denormalised (device, model, quant, backend, threads,
engine commit) so dashboards query one table with indexes instead of joining five.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    type_annotation_map = {dict[str, Any]: JSON, datetime: DateTime(timezone=True)}


class Device(Base):
    __tablename__ = "devices"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    profile: Mapped[str] = mapped_column(String(128))
    transport: Mapped[str] = mapped_column(String(32), default="local")
    agent: Mapped[str | None] = mapped_column(String(128))
    status: Mapped[str] = mapped_column(String(16), default="online")  # online | offline | quarantined
    quarantine_reason: Mapped[str | None] = mapped_column(Text)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    fingerprint: Mapped[dict[str, Any]] = mapped_column(default=dict)
    health: Mapped[dict[str, Any]] = mapped_column(default=dict)
    last_seen: Mapped[datetime | None]


class EngineBuild(Base):
    __tablename__ = "engine_builds"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # hash of (backend, commit, target, flags)
    backend: Mapped[str] = mapped_column(String(32))
    source_commit: Mapped[str | None] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(64))
    flags: Mapped[str] = mapped_column(Text, default="")
    compiler: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]


class ModelFile(Base):
    __tablename__ = "models"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    label: Mapped[str] = mapped_column(String(256))
    card: Mapped[str | None] = mapped_column(String(128))
    quant: Mapped[str] = mapped_column(String(16))
    arch: Mapped[dict[str, Any]] = mapped_column(default=dict)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    n_params: Mapped[int | None] = mapped_column(BigInteger)


class Run(Base):
    __tablename__ = "runs"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16), default="sweep")  # sweep | regress | noise
    sweep_yaml: Mapped[str] = mapped_column(Text, default="")
    sweep_digest: Mapped[str] = mapped_column(String(64), default="")
    executor: Mapped[str] = mapped_column(String(16), default="local")
    status: Mapped[str] = mapped_column(String(16), default="queued", index=True)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    n_jobs: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(index=True)
    finished_at: Mapped[datetime | None]
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
    holder: Mapped[str | None] = mapped_column(String(128))  # the process running it in-process


class JobRow(Base):
    __tablename__ = "jobs"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    run_id: Mapped[str] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"), index=True)
    idx: Mapped[int] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(128))
    profile: Mapped[str] = mapped_column(String(128))
    backend: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(256))
    quant: Mapped[str] = mapped_column(String(16))
    n_prompt: Mapped[int] = mapped_column(Integer)
    n_gen: Mapped[int] = mapped_column(Integer)
    threads: Mapped[int] = mapped_column(Integer)
    repetitions: Mapped[int] = mapped_column(Integer)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)  # the full Job as JSON
    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued|running|done|failed|cancelled
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    error_class: Mapped[str | None] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    agent: Mapped[str | None] = mapped_column(String(128))
    claim_token: Mapped[str | None] = mapped_column(String(32))  # the delivery that holds the lease
    lease_until: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    est_s: Mapped[float] = mapped_column(Float, default=0.0)
    model_sha256: Mapped[str | None] = mapped_column(String(64))
    engine_build: Mapped[str | None] = mapped_column(String(64))
    fingerprint: Mapped[dict[str, Any]] = mapped_column(default=dict)
    provenance: Mapped[dict[str, Any]] = mapped_column(default=dict)
    thermal: Mapped[dict[str, Any]] = mapped_column(default=dict)
    power: Mapped[dict[str, Any]] = mapped_column(default=dict)
    throttled: Mapped[bool | None] = mapped_column(Boolean)
    charging: Mapped[bool | None] = mapped_column(Boolean)
    bytes_pushed: Mapped[int] = mapped_column(BigInteger, default=0)

    __table_args__ = (
        Index("ix_jobs_run_status", "run_id", "status"),
        Index("ix_jobs_status_device", "status", "device"),
        # The device lease: one running job per device, whoever claimed it (migration 0006).
        Index("ix_jobs_device_held", "device", unique=True, sqlite_where=text("status = 'running'"),
              postgresql_where=text("status = 'running'")),
    )


class ResultRow(Base):
    """One repetition of one job."""

    __tablename__ = "results"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    rep: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[str] = mapped_column(String(32), index=True)
    device: Mapped[str] = mapped_column(String(128))
    profile: Mapped[str] = mapped_column(String(128))
    backend: Mapped[str] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(256))
    quant: Mapped[str] = mapped_column(String(16))
    threads: Mapped[int] = mapped_column(Integer)
    test: Mapped[str] = mapped_column(String(64))
    n_prompt: Mapped[int] = mapped_column(Integer)
    n_gen: Mapped[int] = mapped_column(Integer)
    n_depth: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # KV tokens before the timed phases
    cpus: Mapped[str] = mapped_column(String(64), default="all", server_default="all")  # the cpus selector
    cpu_mask: Mapped[str | None] = mapped_column(String(64))  # affinity read back from the engine's threads (hex)
    power_mode: Mapped[str] = mapped_column(String(64), default="default", server_default="default")
    prefill_s: Mapped[float | None] = mapped_column(Float)
    decode_s: Mapped[float | None] = mapped_column(Float)
    prefill_tps: Mapped[float | None] = mapped_column(Float)
    decode_tps: Mapped[float | None] = mapped_column(Float)
    decode_step_tps: Mapped[float | None] = mapped_column(Float)  # 1 / 10th-percentile decode step time
    ttft_s: Mapped[float | None] = mapped_column(Float)
    peak_rss_bytes: Mapped[int | None] = mapped_column(BigInteger)
    exit_status: Mapped[int] = mapped_column(Integer, default=0)
    error_class: Mapped[str | None] = mapped_column(String(16))
    prefill_energy_j: Mapped[float | None] = mapped_column(Float)
    decode_energy_j: Mapped[float | None] = mapped_column(Float)
    prefill_j_per_tok: Mapped[float | None] = mapped_column(Float)
    decode_j_per_tok: Mapped[float | None] = mapped_column(Float)
    # resolution of J/token: |value| ≤ bound is within the idle baseline's noise (below resolution)
    prefill_j_per_tok_bound: Mapped[float | None] = mapped_column(Float)
    decode_j_per_tok_bound: Mapped[float | None] = mapped_column(Float)
    prefill_avg_w: Mapped[float | None] = mapped_column(Float)
    decode_avg_w: Mapped[float | None] = mapped_column(Float)
    power_modelled: Mapped[bool | None] = mapped_column(Boolean)
    throttled: Mapped[bool | None] = mapped_column(Boolean)
    charging: Mapped[bool | None] = mapped_column(Boolean)
    engine_commit: Mapped[str | None] = mapped_column(String(64))
    variant: Mapped[str | None] = mapped_column(String(32))  # A/B arm in regressions
    created_at: Mapped[datetime]

    __table_args__ = (
        Index("ix_results_device_model", "device", "model", "quant", "backend"),
        Index("ix_results_created", "created_at"),
        Index("ix_results_commit", "engine_commit", "created_at"),
    )


class Trace(Base):
    """The raw power trace of a job (compressed), kept apart so results stay narrow."""

    __tablename__ = "traces"
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    data: Mapped[str] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column(default=dict)
