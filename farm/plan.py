"""From a sweep to an ordered list of jobs: expand, filter, fit, order, estimate.

- expand: models (and architecture variants) × quants × backends × devices × pp × tg × threads;
- filter: ``include`` rules (keep a cell if it matches any) then ``exclude`` rules;
- fit: drop cells whose weights + KV cache + scratch exceed the device profile's usable RAM,
  listing the reason (a plan never hides a dropped cell);
- order: per device, group by model file so each file is pushed once, lighter cells first
  so the device heats gradually; higher-priority sweeps first;
- estimate: wall time from the profile's compute and bandwidth figures (roofline-style).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from farm.backends import Backend, get_backend
from farm.devices import DeviceEntry, DeviceProfile, Inventory, load_profile, select_devices
from farm.jobs import Job, ModelRef, job_id_for
from farm.spec import Sweep
from farm.zoo.arch import BYTES_PER_WEIGHT, Architecture
from farm.zoo.mix import base_type

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
    for spec in sweep.models:
        if spec.file is not None:
            from farm.zoo.files import resolve_model
            from farm.zoo.mix import read_gguf

            mf = resolve_model(f"file:{spec.file}", None, sha256=spec.sha256)
            info = read_gguf(mf.path)
            out.append(_Model(ModelRef(file=str(mf.path), sha256=mf.sha256), mf.architecture, mf.size, info.label,
                              info.arch, info.types))
            continue
        card = load_card(str(spec.card))
        keys = sorted(spec.vary)
        for values in itertools.product(*(spec.vary[k] for k in keys)):
            overrides = dict(zip(keys, values, strict=True))
            variant = card.with_overrides(**overrides) if overrides else card
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


def cannot_run(model: _Model, backend: Backend, quant: str) -> str | None:
    """Why `backend` cannot run `model` in `quant` (None: it can): the zoo cannot write the quant, or the
    backend lacks the file's architecture or one of its tensor types."""
    from farm.zoo.arch import QUANTS
    from farm.zoo.mix import recipe_types

    if model.file_types is None and quant not in QUANTS:
        return (f"the zoo writes {', '.join(QUANTS)} (llama-quantize --pure recipe), not {quant}; "
                f"measure a {quant} file with 'file:'")
    types = model.file_types if model.file_types is not None else recipe_types(quant)
    return backend.cannot_run(model.arch_name, types)


def memory_needed(arch: Architecture | None, quant: str, n_ctx: int, kv_type: str, file_bytes: int | None) -> int:
    weights = file_bytes if file_bytes is not None else (arch.weight_bytes(quant) if arch else 0)
    kv = arch.kv_cache_bytes(n_ctx, kv_type) if arch else 0
    return weights + kv + SCRATCH_BYTES


def estimate_s(arch: Architecture | None, quant: str, profile: DeviceProfile, n_prompt: int, n_gen: int,
               threads: int, reps: int, warmup: int, file_bytes: int | None) -> float:
    """Roofline estimate: prefill is compute-bound (2·params FLOP/token), decode bandwidth-bound."""
    if arch is None:
        return LOAD_S + 60.0 * (reps + warmup)
    share = min(1.0, threads / profile.cpus.count)
    flops_per_tok = 2.0 * arch.n_params()
    prefill = n_prompt * flops_per_tok / (profile.est_gflops * 1e9 * share)
    weight_bytes = file_bytes or arch.n_params() * BYTES_PER_WEIGHT.get(base_type(quant), 2.0)
    decode = n_gen * weight_bytes / (profile.mem_bw_gbs * 1e9 * min(1.0, 0.5 + share / 2))
    return LOAD_S + (reps + warmup) * (prefill + decode)


def make_plan(sweep: Sweep, inventory: Inventory, run_id: str = "plan",
              unavailable: dict[str, str] | None = None) -> Plan:
    """Expand `sweep` against the devices of `inventory` into ordered jobs.

    `unavailable` maps quarantined device names to the reason; their cells are dropped, listed.
    """
    unavailable = unavailable or {}
    devices: list[DeviceEntry] = select_devices(inventory, sweep.devices)
    profiles = {d.profile: load_profile(d.profile, inventory.profile_dirs) for d in devices}
    models = _models(sweep)
    engines = [(b, get_backend(b.name, **b.options)) for b in sweep.backends]
    # A file has one quant, its own: the quants axis does not multiply (or relabel) it.
    cells = ((dev, model, be, quant, pp, tg, threads)
             for dev, model, be in itertools.product(devices, models, engines)
             for quant, pp, tg, threads in itertools.product(
                 [model.file_quant] if model.file_quant else sweep.quants, sweep.prompt_tokens, sweep.gen_tokens,
                 sweep.threads))
    jobs: list[Job] = []
    dropped: list[Dropped] = []
    for dev, model, (backend, engine), quant, pp, tg, threads in cells:
        profile = profiles[dev.profile]
        cell = {"model": model.ref.label, "quant": quant, "backend": backend.name, "device": dev.name,
                "profile": dev.profile, "tags": dev.tags, "prompt_tokens": pp, "gen_tokens": tg, "threads": threads}
        public = {k: v for k, v in cell.items() if k not in ("profile", "tags")}
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
        if threads > profile.cpus.count:
            dropped.append(Dropped(public, f"{threads} threads > {profile.cpus.count} cores of {profile.name}"))
            continue
        need = memory_needed(model.arch, quant, pp + tg, sweep.kv_type, model.file_bytes)
        if need > profile.usable_ram_bytes:
            dropped.append(Dropped(public, f"needs {need / 2**30:.2f} GiB (weights + KV cache + scratch), "
                                           f"{profile.name} allows {profile.usable_ram_bytes / 2**30:.2f} GiB"))
            continue
        key = {**public, "backend_options": backend.options, "seed": model.ref.seed, "reps": sweep.repetitions,
               "warmup": sweep.warmup, "kv": sweep.kv_type}
        jobs.append(Job(
            job_id=job_id_for(run_id, key), run_id=run_id, index=0, device=dev.name, profile=dev.profile,
            backend=backend.name, backend_options=backend.options, model=model.ref, quant=quant, n_prompt=pp,
            n_gen=tg, threads=threads, repetitions=sweep.repetitions, warmup=sweep.warmup, kv_type=sweep.kv_type,
            cooldown_s=sweep.cooldown_s, power=sweep.power, thermal_gate=sweep.thermal_gate, idle_s=sweep.idle_s,
            timeout_s=sweep.timeouts.job_s, thermal_wait_s=sweep.timeouts.thermal_wait_s, priority=sweep.priority,
            est_s=estimate_s(model.arch, quant, profile, pp, tg, threads, sweep.repetitions, sweep.warmup,
                             model.file_bytes) + sweep.cooldown_s,
            mem_bytes=need))
    jobs = order_jobs(jobs)
    return Plan(sweep, jobs, dropped, profiles)


def order_jobs(jobs: list[Job]) -> list[Job]:
    """Priority first; per device, jobs of one model file together, lighter before heavier."""
    first_seen: dict[tuple[str, str, str], int] = {}
    for i, j in enumerate(jobs):
        first_seen.setdefault((j.device, j.model.label, j.quant), i)
    ordered = sorted(jobs, key=lambda j: (-j.priority, first_seen[(j.device, j.model.label, j.quant)],
                                          j.threads, j.n_prompt + j.n_gen))
    return [j.model_copy(update={"index": i}) for i, j in enumerate(ordered)]


def describe(plan: Plan) -> str:
    """A stable text rendering of a plan (golden files compare it)."""
    lines = [f"sweep {plan.sweep.name}: {len(plan.jobs)} jobs, {len(plan.dropped)} dropped, "
             f"estimated {plan.est_s:.0f} s"]
    for j in plan.jobs:
        lines.append(f"  {j.index:4d} {j.device:<16} {j.backend:<10} {j.model.label:<28} {j.quant:<5} "
                     f"{j.test:<14} t={j.threads:<3} reps={j.repetitions} mem={j.mem_bytes / 2**20:.0f}MiB "
                     f"est={j.est_s:.1f}s")
    for d in plan.dropped:
        cell = " ".join(f"{k}={v}" for k, v in d.cell.items())
        lines.append(f"  dropped {cell}: {d.reason}")
    return "\n".join(lines)
