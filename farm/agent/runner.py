"""Running one job on one device: the strategy every executor shares.

prepare artifacts → stage them (content-addressed) → wait until cool → idle power baseline →
start sampling → run the engine → stop sampling → parse → attach per-phase energy → JobResult.

Errors keep their class: a device or transport failure propagates as ``InfraError`` (the
executor retries it elsewhere); a failing benchmark becomes a stored ``failed`` result of class
``job``. The function knows nothing about which executor called it.
"""

from __future__ import annotations

import posixpath
import socket
import time
from collections.abc import Callable
from typing import Any

from farm import affinity
from farm.agent import power_mode, scope
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
        scope.prepare(transport, workdir)  # what earlier jobs left running dies, the power mode they set is undone
        step("stage")
        staged, pushed = stage(transport, workdir, prepared.artifacts) if prepared.artifacts else ({}, 0)
        mode = power_mode.parse(job.power_mode)
        if mode.kind != power_mode.DEFAULT:
            step("power mode")
        try:
            mode_state = power_mode.apply(transport, profile, workdir, mode)
        except JobError:
            power_mode.restore(transport, workdir)
            raise
        try:
            return _measure(job, device, profile, transport, backend, prepared, workdir, staged, pushed,
                            base, step, mode_state)
        finally:
            if mode.kind != power_mode.DEFAULT:
                power_mode.restore(transport, workdir)  # an InfraError here leaves the file for the next job
    except InfraError:
        raise
    except (JobError, ConfigError) as exc:
        return JobResult(**base, status="failed", error_class=error_class_of(exc), error=str(exc),
                         finished_at=utcnow())


def _measure(job: Job, device: DeviceEntry, profile: DeviceProfile, transport: Transport, backend: Any,
             prepared: Any, workdir: str, staged: dict[str, str], pushed: int, base: dict[str, Any],
             step: Callable[[str], None], mode_state: dict[str, Any]) -> JobResult:
    """Cool-down, idle baseline, the engine under power sampling (pinned when the job says), parse."""
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
    readback = posixpath.join(scope.run_dir(workdir), "affinity")
    if job.cpu_list is not None:  # pinned: taskset inside the session, the threads' affinity sampled
        transport.run(["rm", "-f", readback], timeout=30)
        argv = affinity.wrap(argv, affinity.CoreSet(job.cpus, affinity.parse_cpulist(job.cpu_list)), readback)
    t0 = time.monotonic()
    try:
        result = transport.run(argv, timeout=job.timeout_s, pidfile=scope.pidfile(workdir, "engine"))
    finally:
        if session is not None:
            session.stop()
    wall = time.monotonic() - t0
    output = backend.parse(result, job)
    applied: dict[str, Any] = {}
    if job.cpu_list is not None:
        applied = affinity.parse_readback(transport.run(["cat", readback], timeout=30).stdout)
        if not applied:
            raise JobError(f"cpus={job.cpus}: no affinity read back from the engine's threads ({readback})")
        if affinity.parse_cpulist(str(applied["cpus_allowed"])) != affinity.parse_cpulist(job.cpu_list):
            raise JobError(f"cpus={job.cpus}: asked for cores {job.cpu_list}, the engine's threads were "
                           f"allowed {applied['cpus_allowed']}")
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
        throttled, reason = th.throttled(start_state, end_state, profile, mode_caps=bool(mode_state))
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
    if applied:
        provenance["affinity"] = {"cpus": job.cpus, "asked": job.cpu_list, **applied}
    if mode_state:
        provenance["power_mode"] = {"mode": job.power_mode, **mode_state}
    if teardown_errors:
        provenance["teardown_errors"] = teardown_errors
    return JobResult(**base, status="done", repetitions=output.repetitions, fingerprint=fingerprint,
                     provenance=provenance, thermal=thermal, power=power, trace=trace, bytes_pushed=pushed,
                     raw=output.raw, finished_at=utcnow())


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

