"""From a sweep to an ordered list of jobs: expand, filter, fit, order, estimate.

- expand: models (and architecture variants) × quants × backends × devices × pp × tg × threads × depth
  × cpus × power_mode (threads unset with `cpus` given: the chosen cores' count);
- filter: ``include`` rules (keep a cell if it matches any) then ``exclude`` rules;
- resolve: `cpus` to the device's cores (its profile's topology) and `power_mode` to what the device can
  set; a cell that names no cores or a mode the device cannot set is dropped with the reason;
- fit: drop cells whose weights + KV cache (depth + pp + tg) + scratch exceed the device's usable RAM,
  listing the reason (a plan never hides a dropped cell);
- order: per device, group by model file so each file is pushed once, lighter cells first
  so the device heats gradually; higher-priority sweeps first;
- estimate: wall time from the profile's compute and bandwidth figures (roofline-style).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from farm.affinity import resolve as resolve_cpus
from farm.agent.power_mode import DEFAULT as DEFAULT_MODE
from farm.agent.power_mode import cannot as cannot_set
from farm.agent.power_mode import parse as parse_mode
from farm.backends import BACKENDS, Backend
from farm.devices import DeviceEntry, DeviceProfile, Inventory, load_profile, select_devices
from farm.errors import ConfigError
from farm.jobs import Job, ModelRef, job_id_for
from farm.spec import Sweep
from farm.zoo.arch import Architecture

SCRATCH_BYTES = 64 * 1024 * 1024  # activations, logits and runtime, beyond weights and KV cache
LOAD_S = 1.0  # per job: process start, mmap, staging check


@dataclass
class Dropped:
    cell: dict[str, Any]
    reason: str


@dataclass
class Plan:
    sweep: Sweep
    jobs: list[Job]
    dropped: list[Dropped] = field(default_factory=list)
    profiles: dict[str, DeviceProfile] = field(default_factory=dict)
    est_factor: dict[str, float] = field(default_factory=dict)  # "device/backend" -> calibration (see calibrate)

    @property
    def est_s(self) -> float:
        """Serial estimate per device; devices run in parallel, so the run takes the longest."""
        per_device: dict[str, float] = {}
        for job in self.jobs:
            per_device[job.device] = per_device.get(job.device, 0.0) + job.est_s
        return max(per_device.values(), default=0.0)


@dataclass
class _Model:
    ref: ModelRef
    arch: Architecture | None
    file_bytes: int | None = None
    file_quant: str | None = None  # a file's own label (farm.zoo.mix): the quants axis does not apply to it
    arch_name: str = "llama"
    file_types: frozenset[str] | None = None  # ggml types of a file's tensors


def _models(sweep: Sweep) -> list[_Model]:
    from farm.zoo.cards import load_card

    out: list[_Model] = []
    for i, spec in enumerate(sweep.models):
        if spec.file is not None:
            from farm.zoo.files import resolve_model
            from farm.zoo.mix import read_gguf

            try:
                mf = resolve_model(f"file:{spec.file}", None, sha256=spec.sha256)
                info = read_gguf(mf.path)
            except ConfigError as exc:  # not a GGUF, sha256 mismatch: name the sweep's line
                field = "sha256" if "sha256" in str(exc) and spec.sha256 else "file"
                raise ConfigError(f"{sweep.where(['models', i, field])}: models[{i}].{field}: {exc}") from None
            out.append(_Model(ModelRef(file=str(mf.path), sha256=mf.sha256), mf.architecture, mf.size, info.label,
                              info.arch, info.types))
            continue
        card = load_card(str(spec.card))
        keys = sorted(spec.vary)
        for values in itertools.product(*(spec.vary[k] for k in keys)):
            overrides = dict(zip(keys, values, strict=True))
            try:
                variant = card.with_overrides(**overrides) if overrides else card
            except ConfigError as exc:  # e.g. d_model not divisible by n_heads
                raise ConfigError(f"{sweep.where(['models', i, 'vary'])}: models[{i}].vary: {exc}") from None
            out.append(_Model(ModelRef(card=card.name, overrides=overrides, seed=spec.seed), variant.architecture,
                              arch_name=variant.architecture.arch))
    return out


def _matches(rule: dict[str, Any], cell: dict[str, Any]) -> bool:
    for key, want in rule.items():
        have = cell[key]
        wants = want if isinstance(want, list) else [want]
        if key == "device":
            if not any(_device_matches(str(w), cell) for w in wants):
                return False
        elif have not in wants and str(have) not in map(str, wants):
            return False
    return True


def _device_matches(selector: str, cell: dict[str, Any]) -> bool:
    kind, _, value = selector.partition(":") if ":" in selector else ("name", "", selector)
    return {"name": cell["device"], "profile": cell["profile"]}.get(kind) == value or (
        kind == "tag" and value in cell["tags"])


def _no_depth(backend: str) -> str | None:
    """Why `backend` cannot fill the KV cache before the timed phases (None when it can)."""
    return getattr(BACKENDS.get(backend), "has_depth", None)


def cannot_run(model: _Model, backend: type[Backend], quant: str) -> str | None:
    """Why `backend` cannot run `model` in `quant` (None: it can): the zoo cannot write the quant, or the
    backend lacks the file's architecture or one of its tensor types."""
    from farm.zoo.arch import QUANTS
    from farm.zoo.mix import recipe_types

    if model.file_types is None and quant not in QUANTS:
        return f"the zoo writes {', '.join(QUANTS)}, not {quant}; measure a {quant} file with 'file:'"
    types = model.file_types if model.file_types is not None else recipe_types(quant, model.arch)
    return backend.cannot_run(model.arch_name, types)


def memory_needed(arch: Architecture | None, quant: str, n_ctx: int, kv_type: str, file_bytes: int | None) -> int:
    weights = file_bytes if file_bytes is not None else (arch.weight_bytes(quant) if arch else 0)
    kv = arch.kv_cache_bytes(n_ctx, kv_type) if arch else 0
    return weights + kv + SCRATCH_BYTES


def estimate_s(arch: Architecture | None, quant: str, profile: DeviceProfile, n_prompt: int, n_gen: int,
               threads: int, reps: int, warmup: int, file_bytes: int | None, depth: int = 0) -> float:
    """Roofline estimate: prefill is compute-bound (2·params FLOP/token), decode bandwidth-bound; filling the
    cache to `depth` costs a prefill of that many tokens per repetition."""
    if arch is None:
        return LOAD_S + 60.0 * (reps + warmup)
    share = min(1.0, threads / profile.cpus.count)
    flops_per_tok = 2.0 * arch.n_params()
    prefill = (n_prompt + depth) * flops_per_tok / (profile.est_gflops * 1e9 * share)
    weight_bytes = file_bytes or arch.weight_bytes(quant)
    decode = n_gen * weight_bytes / (profile.mem_bw_gbs * 1e9 * min(1.0, 0.5 + share / 2))
    return LOAD_S + (reps + warmup) * (prefill + decode)


def make_plan(sweep: Sweep, inventory: Inventory, run_id: str = "plan",
              unavailable: dict[str, str] | None = None) -> Plan:
    """Expand `sweep` against the devices of `inventory` into ordered jobs.

    `unavailable` maps quarantined device names to the reason; their cells are dropped, listed.
    """
    unavailable = unavailable or {}
    devices: list[DeviceEntry] = []
    for i, selector in enumerate(sweep.devices):
        try:
            found = select_devices(inventory, [selector])
        except ConfigError as exc:
            raise ConfigError(f"{sweep.where(['devices', i])}: devices[{i}]: {exc}") from None
        devices += [d for d in found if d not in devices]
    profiles = {d.profile: load_profile(d.profile, inventory.profile_dirs) for d in devices}
    models = _models(sweep)
    jobs: list[Job] = []
    dropped: list[Dropped] = []
    pin = "cpus" in sweep.model_fields_set  # cpus given: the engine is pinned (even to all) and checked
    threads_axis: list[int | None] = list(sweep.threads) if "threads" in sweep.model_fields_set or not pin else [None]
    # the classes: an engine's files are checked on the agent host that runs it, not where it is planned
    engines = [(b, BACKENDS.get(b.name)) for b in sweep.backends]
    # A file has one quant, its own: the quants axis does not multiply (or relabel) it.
    cells = ((dev, model, be, quant, *rest)
             for dev, model, be in itertools.product(devices, models, engines)
             for quant, *rest in itertools.product(
                 [model.file_quant] if model.file_quant else sweep.quants, sweep.prompt_tokens, sweep.gen_tokens,
                 threads_axis, sweep.depth, sweep.cpus, sweep.power_mode))
    for dev, model, (backend, engine), quant, pp, tg, threads_or_none, depth, cpus, power_mode in cells:
        profile = profiles[dev.profile]
        cores, no_cores = None, None
        try:
            cores = resolve_cpus(profile, cpus)
        except ValueError as exc:
            no_cores = str(exc)
        threads = threads_or_none or (len(cores.cores) if cores else 1)
        cell = {"model": model.ref.label, "quant": quant, "backend": backend.name, "device": dev.name,
                "profile": dev.profile, "tags": dev.tags, "prompt_tokens": pp, "gen_tokens": tg, "threads": threads,
                "depth": depth, "cpus": cpus, "power_mode": power_mode}
        # depth 0, all cpus unpinned and the default power mode are every cell's defaults: left out of what is
        # shown and hashed, so ids and plans stay as before
        defaults = {"depth": 0, "cpus": None if pin else "all", "power_mode": DEFAULT_MODE}
        public = {k: v for k, v in cell.items() if k not in ("profile", "tags") and defaults.get(k, ...) != v}
        if pp == 0 and tg == 0:
            continue
        if sweep.include and not any(_matches(r, cell) for r in sweep.include):
            continue
        if any(_matches(r, cell) for r in sweep.exclude):
            dropped.append(Dropped(public, "excluded by a rule"))
            continue
        why = cannot_run(model, engine, quant)
        if why:
            dropped.append(Dropped(public, why))
            continue
        if dev.name in unavailable:
            dropped.append(Dropped(public, f"device quarantined: {unavailable[dev.name]}"))
            continue
        if no_cores:
            dropped.append(Dropped(public, no_cores))
            continue
        no_mode = cannot_set(profile, dev.tags, parse_mode(power_mode))
        if no_mode:
            dropped.append(Dropped(public, no_mode))
            continue
        no_depth = depth and _no_depth(backend.name)
        if no_depth:
            dropped.append(Dropped(public, f"{backend.name}: {no_depth}"))
            continue
        if threads > profile.cpus.count:
            dropped.append(Dropped(public, f"{threads} threads > {profile.cpus.count} cores of {profile.name}"))
            continue
        need = memory_needed(model.arch, quant, depth + pp + tg, sweep.kv_type, model.file_bytes)
        if need > profile.usable_ram_bytes:
            dropped.append(Dropped(public, f"needs {need / 2**30:.2f} GiB (weights + KV cache + scratch), "
                                           f"{profile.name} allows {profile.usable_ram_bytes / 2**30:.2f} GiB"))
            continue
        key = {**public, "backend_options": backend.options, "seed": model.ref.seed, "reps": sweep.repetitions,
               "warmup": sweep.warmup, "kv": sweep.kv_type}
        jobs.append(Job(
            job_id=job_id_for(run_id, key), run_id=run_id, index=0, device=dev.name, profile=dev.profile,
            backend=backend.name, backend_options=backend.options, model=model.ref, quant=quant, n_prompt=pp,
            n_gen=tg, n_depth=depth, threads=threads, cpus=cpus,
            cpu_list=cores.cpulist if pin and cores else None, power_mode=power_mode,
            repetitions=sweep.repetitions, warmup=sweep.warmup,
            kv_type=sweep.kv_type, cooldown_s=sweep.cooldown_s, power=sweep.power, thermal_gate=sweep.thermal_gate,
            idle_s=sweep.idle_s,
            timeout_s=sweep.timeouts.job_s, thermal_wait_s=sweep.timeouts.thermal_wait_s, priority=sweep.priority,
            est_s=estimate_s(model.arch, quant, profile, pp, tg, threads, sweep.repetitions, sweep.warmup,
                             model.file_bytes, depth) + sweep.cooldown_s,
            mem_bytes=need))
    jobs = order_jobs(jobs)
    return Plan(sweep, jobs, dropped, profiles)


MIN_CALIBRATION_JOBS = 3  # fewer stored jobs on a device than this: its roofline estimate stands


def calibrate(plan: Plan, timings: list[tuple[str, str, str, float, float]]) -> dict[str, tuple[float, int]]:
    """Scale each job's estimate by how long jobs of its device and backend really took before.

    `timings`: (run, device, backend, uncalibrated estimate, measured seconds) of stored done jobs (see
    ``Store.job_timings``, newest first). The factor per device/backend is Σ measured ÷ Σ estimated over
    the jobs of its newest run (older runs added while fewer than MIN_CALIBRATION_JOBS jobs are in
    hand): it covers what the roofline leaves out (idle baseline, power sampling, process start, a
    run's first-job costs, the engine's real speed on this device today), weighted as a run's wall
    time weighs them (a per-job median missed a first job 3× slower than the rest: 3.9 s estimated for
    6.2 s). The newest run, not a long history: a device's speed moves with its load, firmware and
    cooling, and a cold first run (zoo models generated, engine built: measured here 4-7× its roofline
    per job, warm runs ~1.5×) then misleads one estimate, not the next twenty.
    Returns {"device/backend": (factor, jobs used)}; the plan's jobs (and est_factor) are updated in place.
    """
    pairs: dict[str, list[tuple[float, float]]] = {}  # key -> (estimated, measured) per job
    runs: dict[str, str] = {}  # key -> the run whose jobs are being collected
    for run_id, device, backend, est, seconds in timings:
        key = f"{device}/{backend}"
        if len(pairs.get(key, [])) >= MIN_CALIBRATION_JOBS and runs.get(key) != run_id:
            continue  # enough jobs, and this one is from an older run
        if est > 0 and seconds > 0:
            pairs.setdefault(key, []).append((est, seconds))
            runs[key] = run_id
    factors = {k: (sum(s for _, s in v) / sum(e for e, _ in v), len(v)) for k, v in pairs.items()
               if len(v) >= MIN_CALIBRATION_JOBS}
    plan.est_factor = {k: f for k, (f, _) in factors.items()}
    plan.jobs = [j.model_copy(update={"est_s": j.est_s * factors[f"{j.device}/{j.backend}"][0]})
                 if f"{j.device}/{j.backend}" in factors else j for j in plan.jobs]
    return factors


def order_jobs(jobs: list[Job]) -> list[Job]:
    """Priority first; per device, jobs of one model file together, lighter before heavier."""
    first_seen: dict[tuple[str, str, str], int] = {}
    for i, j in enumerate(jobs):
        first_seen.setdefault((j.device, j.model.label, j.quant), i)
    ordered = sorted(jobs, key=lambda j: (-j.priority, first_seen[(j.device, j.model.label, j.quant)],
                                          j.threads, j.n_depth + j.n_prompt + j.n_gen))
    return [j.model_copy(update={"index": i}) for i, j in enumerate(ordered)]


def _axes(j: Job) -> str:
    """cpus and power mode of a job, when they are not the defaults (plans without them read as before)."""
    out = f"cpus={j.cpus}[{j.cpu_list}] " if j.cpu_list is not None else ""
    return out + (f"mode={j.power_mode} " if j.power_mode != DEFAULT_MODE else "")


def describe(plan: Plan) -> str:
    """A stable text rendering of a plan (golden files compare it)."""
    lines = [f"sweep {plan.sweep.name}: {len(plan.jobs)} jobs, {len(plan.dropped)} dropped, "
             f"estimated {plan.est_s:.0f} s"]
    for j in plan.jobs:
        lines.append(f"  {j.index:4d} {j.device:<16} {j.backend:<10} {j.model.label:<28} {j.quant:<5} "
                     f"{j.test:<14} t={j.threads:<3} {_axes(j)}reps={j.repetitions} mem={j.mem_bytes / 2**20:.0f}MiB "
                     f"est={j.est_s:.1f}s")
    for d in plan.dropped:
        cell = " ".join(f"{k}={v}" for k, v in d.cell.items())
        lines.append(f"  dropped {cell}: {d.reason}")
    return "\n".join(lines)
