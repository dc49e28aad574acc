"""Energy of engine phases from a power trace, and the report that carries it.

Units: time ns on the device's CLOCK_MONOTONIC, power W, energy J. Energy of a window is the
trapezoid integral over the samples inside it plus the two edge values interpolated linearly from
the neighbouring samples, so a window need not start or end on a sample. Net energy subtracts the
idle baseline (idle W × duration); J/token divides the net energy by the tokens of that phase.
"""

from __future__ import annotations

import base64
import zlib
from dataclasses import dataclass, field

import numpy as np
from pydantic import BaseModel, Field

from farm.power.trace import Trace

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


def phase_energy(trace: Trace, phase: Phase, idle_w: float | None) -> PhaseEnergy:
    win = integrate(trace, phase.start_ns, phase.end_ns)
    duration = (phase.end_ns - phase.start_ns) / 1e9
    warnings = list(win.warnings)
    net = None
    if win.energy_j is not None:
        if idle_w is None:
            warnings.append("no idle baseline: net energy and J/token left empty")
        else:
            net = win.energy_j - idle_w * duration
    per_token = None
    if net is not None:
        if phase.tokens > 0:
            per_token = net / phase.tokens
        else:
            warnings.append("phase has no tokens: J/token left empty")
    return PhaseEnergy(name=phase.name, rep=phase.rep, start_ns=phase.start_ns, end_ns=phase.end_ns,
                       tokens=phase.tokens, duration_s=duration, n_samples=win.n_samples, avg_w=win.avg_w,
                       energy_j=win.energy_j, net_energy_j=net, j_per_token=per_token, warnings=warnings)


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
