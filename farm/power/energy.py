"""Energy of engine phases from a power trace, and the report that carries it.

Units: time ns on the device's CLOCK_MONOTONIC, power W, energy J. Energy of a window is the
trapezoid integral over the samples inside it plus the two edge values interpolated linearly from
the neighbouring samples, so a window need not start or end on a sample. Net energy subtracts the
idle baseline (idle W × duration); J/token divides the net energy by the tokens of that phase.

Resolution. A phase that draws little more than idle power (a short prefill on a 40 W board, a decode on
a slow fuel gauge) has a net energy inside the noise of the idle baseline: its sign and size then say
nothing. Under "the phase drew idle power", net = T · (mean P in the phase − mean idle P), and

    bound = T · (2 · σ_idle · √(1/n_idle + 1/n_phase) + step / 2)

- σ_idle: sd of the idle samples; n_idle, n_phase: independent readings in the idle window and the phase
  (samples of a sensor that refreshes slower than it is read count once per refresh). The first term is
  the two-sided ~95% band (2 sd) of a difference of two means of independent readings.
- step: the sensor's resolution in W, read off the data as the smallest non-zero difference between
  readings, and never finer than the 6 significant digits a trace is stored with (``encode_trace``):
  a trace that shows one value throughout (a saturated CPU model, a gauge that did not refresh) then
  still has a bound, and its net energy of exactly 0 ± rounding reads as below resolution. A steady draw
  closer than half a step to the idle draw reads the same value, and averaging does not remove that
  error (it is the same on every sample), so half a step is added, not averaged.

A phase with |net| ≤ bound is *below resolution*: shown as "< bound/token", its raw value kept.
"""

from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, Field

from farm.power.trace import Trace

STORED_PRECISION = 1e-5  # a trace keeps 6 significant digits: readings closer than this (relative) are one value
MIN_PERIODS = 2.0  # a window shorter than this many sample periods gets a warning with its figure


@dataclass
class Phase:
    """One engine phase of one repetition, as printed by the engine (device CLOCK_MONOTONIC ns)."""

    name: str
    rep: int
    start_ns: int
    end_ns: int
    tokens: int


class PhaseEnergy(BaseModel):
    name: str
    rep: int
    start_ns: int
    end_ns: int
    tokens: int
    duration_s: float
    n_samples: int  # samples strictly inside the window
    avg_w: float | None
    energy_j: float | None  # ∫P dt
    net_energy_j: float | None  # energy_j − idle_w × duration_s
    j_per_token: float | None  # net_energy_j ÷ tokens
    warnings: list[str] = Field(default_factory=list)
    resolution_j: float | None = None  # |net| at or below this is within the idle baseline's noise
    j_per_token_bound: float | None = None  # resolution_j ÷ tokens
    below_resolution: bool | None = None  # |net_energy_j| ≤ resolution_j


class PowerReport(BaseModel):
    """What a run's power measurement produced; JSON-serialisable."""

    source: str
    modelled: bool
    unit: str  # raw unit of the readings, e.g. "uA,uV", "mW", "uJ"
    sign: str  # "negative-discharge" | "positive-discharge" | "n/a"
    rate_hz_target: float
    rate_hz_achieved: float
    idle_w: float | None
    charging: bool | None
    warnings: list[str] = Field(default_factory=list)
    phases: list[PhaseEnergy] = Field(default_factory=list)
    trace_zlib_b64: str = ""
    details: dict = Field(default_factory=dict)  # source specifics: files, rails, update rate, ...


@dataclass(frozen=True)
class IdleNoise:
    """What the idle baseline says about the resolution of net energy (see the module docstring)."""

    sd_w: float  # sd of the idle readings
    n_eff: int  # independent idle readings (one per sensor refresh)
    step_w: float  # the sensor's resolution: smallest non-zero difference between readings
    update_hz: float  # how often the sensor's value changes (caps the independent readings of a phase)

    def bound_j(self, duration_s: float, n_samples: int) -> float:
        n_phase = max(1, min(n_samples, int(duration_s * self.update_hz) if self.update_hz > 0 else n_samples))
        noise = 2.0 * self.sd_w * float(np.sqrt(1.0 / max(self.n_eff, 1) + 1.0 / n_phase))
        return duration_s * (noise + self.step_w / 2.0)


def idle_noise(idle: Trace, run: Trace | None = None) -> IdleNoise | None:
    """The idle baseline's noise, with the sensor step read off the idle and the run readings together."""
    w = idle.w[idle.valid]
    if len(w) < 2:
        return None
    runs = 1 + int(np.count_nonzero(np.diff(w) != 0))  # readings that are new values, not repeats
    both = np.concatenate([w, run.w[run.valid]]) if run is not None and len(run) else w
    gaps = np.diff(np.unique(both))
    gaps = gaps[gaps > 1e-12]
    whole = run if run is not None and len(run) > 1 else idle
    stored = STORED_PRECISION * float(np.abs(both).max())  # what "%.6g" in encode_trace can tell apart
    return IdleNoise(sd_w=float(np.std(w, ddof=1)), n_eff=min(len(w), runs),
                     step_w=max(float(gaps.min()) if len(gaps) else 0.0, stored), update_hz=whole.update_hz())


@dataclass
class Window:
    energy_j: float | None
    avg_w: float | None
    n_samples: int
    warnings: list[str] = field(default_factory=list)


def integrate(trace: Trace, start_ns: int, end_ns: int) -> Window:
    """∫P dt over [start_ns, end_ns] using the valid samples of `trace`."""
    duration = (end_ns - start_ns) / 1e9
    if duration <= 0:
        return Window(None, None, 0, [f"empty window ({duration * 1e3:.3f} ms)"])
    t, w = trace.t_ns[trace.valid], trace.w[trace.valid]
    inside = (t > start_ns) & (t < end_ns)
    n_in = int(np.count_nonzero(inside))
    warnings: list[str] = []
    n_invalid = int(np.count_nonzero(~trace.valid & (trace.t_ns >= start_ns) & (trace.t_ns <= end_ns)))
    if n_invalid:
        warnings.append(f"{n_invalid} samples in the window are invalid (charger online or bad reading)")
    if len(t) < 2:
        return Window(None, None, n_in, [*warnings, "fewer than 2 valid power samples"])
    period = float(np.median(np.diff(t))) / 1e9
    if start_ns < t[0] or end_ns > t[-1]:
        gap = max(int(t[0]) - start_ns, end_ns - int(t[-1]), 0) / 1e6
        # within one period the held edge value is what the sensor would have said; beyond, it is a guess
        if gap > period * 1e3:
            return Window(None, None, n_in, [*warnings, f"window lies {gap:.0f} ms outside the power trace"])
    if duration < MIN_PERIODS * period:
        warnings.append(f"window {duration * 1e3:.1f} ms is shorter than {MIN_PERIODS:g} sample periods "
                        f"({period * 1e3:.1f} ms): energy is an interpolation, not a measurement")
    xs = np.concatenate(([start_ns], t[inside], [end_ns])).astype(np.float64)
    ys = np.concatenate(([np.interp(start_ns, t, w)], w[inside], [np.interp(end_ns, t, w)]))
    energy = float(np.trapezoid(ys, xs / 1e9))
    return Window(energy, energy / duration, n_in, warnings)


def phase_energy(trace: Trace, phase: Phase, idle_w: float | None, noise: IdleNoise | None = None) -> PhaseEnergy:
    win = integrate(trace, phase.start_ns, phase.end_ns)
    duration = (phase.end_ns - phase.start_ns) / 1e9
    warnings = list(win.warnings)
    net = None
    if win.energy_j is not None:
        if idle_w is None:
            warnings.append("no idle baseline: net energy and J/token left empty")
        else:
            net = win.energy_j - idle_w * duration
    per_token = bound = per_token_bound = below = None
    if net is not None:
        if noise is not None:
            bound = noise.bound_j(duration, max(win.n_samples, 1))
            below = abs(net) <= bound
        if phase.tokens > 0:
            per_token = net / phase.tokens
            per_token_bound = None if bound is None else bound / phase.tokens
        else:
            warnings.append("phase has no tokens: J/token left empty")
    if below:
        warnings.append(f"net energy {net:.3g} J is within the idle baseline's noise (±{bound:.3g} J): "
                        "below resolution")
    return PhaseEnergy(name=phase.name, rep=phase.rep, start_ns=phase.start_ns, end_ns=phase.end_ns,
                       tokens=phase.tokens, duration_s=duration, n_samples=win.n_samples, avg_w=win.avg_w,
                       energy_j=win.energy_j, net_energy_j=net, j_per_token=per_token, warnings=warnings,
                       resolution_j=bound, j_per_token_bound=per_token_bound, below_resolution=below)


def encode_trace(trace: Trace) -> str:
    """Raw trace as zlib+base64 of text lines "t_ns W valid" (portable, exact, small)."""
    lines = "".join(f"{t} {w:.6g} {int(v)}\n" for t, w, v in zip(trace.t_ns.tolist(), trace.w.tolist(),
                                                                   trace.valid.tolist(), strict=True))
    return base64.b64encode(zlib.compress(lines.encode(), 9)).decode()


def decode_trace(blob: str) -> Trace:
    if not blob:
        return Trace.empty()
    rows = [line.split() for line in zlib.decompress(base64.b64decode(blob)).decode().splitlines()]
    return Trace(np.array([int(r[0]) for r in rows], dtype=np.int64), np.array([float(r[1]) for r in rows]),
                 np.array([r[2] == "1" for r in rows]))
