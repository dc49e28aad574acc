"""Running one job on one device: the strategy every executor shares.

prepare artifacts → stage them (content-addressed) → wait until cool → idle power baseline →
start sampling → run the engine → stop sampling → parse → attach per-phase energy → JobResult.

Errors keep their class: a device or transport failure propagates as ``InfraError`` (the
executor retries it elsewhere); a failing benchmark becomes a stored ``failed`` result of class
``job``. The function knows nothing about which executor called it.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

from farm.agent import scope
from farm.agent.artifacts import stage
from farm.agent.health import require_abi
from farm.backends import get_backend
from farm.devices import DeviceEntry, DeviceProfile
from farm.errors import ConfigError, InfraError, JobError, error_class_of
from farm.jobs import Job, JobResult, Repetition, utcnow
from farm.transports.base import Transport


def workdir_for(device: DeviceEntry, profile: DeviceProfile) -> str:
    return device.workdir or profile.workdir


def _attach_energy(reps: list[Repetition], report: Any) -> None:
    by_key = {(p.rep, p.name): p for p in report.phases}
    for r in reps:
        for phase in ("prefill", "decode"):
            p = by_key.get((r.rep, phase))
            if p is None:
                continue
            setattr(r, f"{phase}_energy_j", p.net_energy_j)
            setattr(r, f"{phase}_j_per_tok", p.j_per_token)
            setattr(r, f"{phase}_j_per_tok_bound", p.j_per_token_bound)
            setattr(r, f"{phase}_avg_w", p.avg_w)


def _phases(reps: list[Repetition]) -> list[Any]:
    from farm.power import Phase

    out = []
    for r in reps:
        if r.prefill_start_ns is not None and r.prefill_end_ns is not None and r.n_prompt:
            out.append(Phase("prefill", r.rep, r.prefill_start_ns, r.prefill_end_ns, r.n_prompt))
        if r.decode_start_ns is not None and r.decode_end_ns is not None and r.n_gen:
            out.append(Phase("decode", r.rep, r.decode_start_ns, r.decode_end_ns, r.n_gen))
    return out


def run_job(job: Job, device: DeviceEntry, profile: DeviceProfile, transport: Transport, *,
            attempt: int = 1, agent: str | None = None,
            on_stage: Callable[[str], None] | None = None) -> JobResult:
    """Run `job` on `device`; returns a done or failed JobResult, raises InfraError for the executor."""
    started = utcnow()
    agent = agent or socket.gethostname()
    base = {"job_id": job.job_id, "run_id": job.run_id, "device": device.name, "attempt": attempt,
            "agent": agent, "started_at": started}

    def step(name: str) -> None:
        if on_stage is not None:
            on_stage(name)

    try:
        backend = get_backend(job.backend, **job.backend_options)
        ok, why = backend.accepts(job, profile)
        if not ok:
            raise ConfigError(f"backend {job.backend} cannot run this job on {profile.name}: {why}")
        step("prepare")
        prepared = backend.prepare(job, profile)
        workdir = workdir_for(device, profile)
        for script in profile.setup:  # the lab owner's own commands (e.g. stop a thermal daemon): run as written
            step("setup")
            out = transport.shell(script, timeout=120)
            if out.exit_code != 0:  # the device is not in the state its profile promises: not the job's fault
                raise InfraError(f"profile setup `{script}` exited {out.exit_code}: {out.stderr.strip()[:200]}")
        require_abi(device.name, _fingerprint(transport)["abi"], profile)  # before any binary is pushed
        scope.prepare(transport, workdir)  # what earlier jobs left running dies before this one starts
        step("stage")
        staged, pushed = stage(transport, workdir, prepared.artifacts) if prepared.artifacts else ({}, 0)
        fingerprint = _fingerprint(transport)
        thermal: dict[str, Any] = {}
        start_state = None
        if job.thermal_gate or profile.thermal.zones:
            from farm.agent import thermal as th

            step("cool-down")
            if job.thermal_gate:
                prof = profile if job.thermal_wait_s is None else profile.model_copy(update={
                    "thermal": profile.thermal.model_copy(update={"timeout_s": job.thermal_wait_s})})
                start_state = th.wait_until_cool(transport, prof)
            else:
                start_state = th.read_state(transport, profile, workdir=workdir)
        session = None
        if job.power:
            from farm.power import open_session

            session = open_session(transport, profile, workdir)
            if job.idle_s > 0:
                step("idle baseline")
                session.measure_idle(job.idle_s)
            session.start()
        step("run")
        argv = backend.command(job, staged)
        t0 = time.monotonic()
        try:
            result = transport.run(argv, timeout=job.timeout_s, pidfile=scope.pidfile(workdir, "engine"))
        finally:
            if session is not None:
                session.stop()
        wall = time.monotonic() - t0
        output = backend.parse(result, job)
        power: dict[str, Any] = {}
        trace = None
        if session is not None:
            report = session.report(_phases(output.repetitions))
            _attach_energy(output.repetitions, report)
            power = report.model_dump(mode="json", exclude={"trace_zlib_b64"})
            trace = report.trace_zlib_b64
        if start_state is not None:
            from farm.agent import thermal as th

            end_state = th.read_state(transport, profile, workdir=workdir)
            throttled, reason = th.throttled(start_state, end_state, profile)
            thermal = {"start": _as_dict(start_state), "end": _as_dict(end_state), "throttled": throttled,
                       "throttle_reason": reason}
        teardown_errors = []  # the measurement is already good: a failed teardown is noted, not fatal
        for script in profile.teardown:
            out = transport.shell(script, timeout=120)
            if out.exit_code != 0:
                teardown_errors.append(f"`{script}` exited {out.exit_code}: {out.stderr.strip()[:200]}")
        if job.cooldown_s:
            time.sleep(job.cooldown_s)
        provenance = {**prepared.provenance, **output.provenance, "quant": job.quant, "threads": job.threads,
                      "kv_type": job.kv_type, "wall_s": round(wall, 3)}
        if teardown_errors:
            provenance["teardown_errors"] = teardown_errors
        return JobResult(**base, status="done", repetitions=output.repetitions, fingerprint=fingerprint,
                         provenance=provenance, thermal=thermal, power=power, trace=trace, bytes_pushed=pushed,
                         raw=output.raw, finished_at=utcnow())
    except InfraError:
        raise
    except (JobError, ConfigError) as exc:
        return JobResult(**base, status="failed", error_class=error_class_of(exc), error=str(exc),
                         finished_at=utcnow())


def _fingerprint(transport: Transport) -> dict[str, Any]:
    """The device's identity, read once per connection (a pool drops the transport on any infra error)."""
    cached = getattr(transport, "_farm_fingerprint", None)
    if cached is None:
        cached = transport.info().fingerprint()
        transport._farm_fingerprint = cached  # type: ignore[attr-defined]
    return cached


def _as_dict(state: Any) -> dict[str, Any]:
    import dataclasses

    if dataclasses.is_dataclass(state):
        return dataclasses.asdict(state)
    return state.model_dump(mode="json")

