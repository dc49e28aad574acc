"""Power traces and the parsing helpers every sampler shares.

Owns :class:`Trace` (device CLOCK_MONOTONIC ns → watts, with a validity mask), the parser of
``farm-sampler`` output, counter differentiation with wrap-around (RAPL µJ, /proc/stat jiffies,
NVML mJ), ``key: value`` label parsing and the unit heuristics of fuel gauges. Units: time ns,
power W; anything else is converted by the source before it becomes a Trace.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Trace:
    """Power samples on the device clock. `valid` is False where the reading cannot be trusted."""

    t_ns: np.ndarray
    w: np.ndarray
    valid: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.t_ns = np.asarray(self.t_ns, dtype=np.int64)
        self.w = np.asarray(self.w, dtype=np.float64)
        self.valid = (np.ones(len(self.t_ns), dtype=bool) if self.valid is None
                      else np.asarray(self.valid, dtype=bool))

    def __len__(self) -> int:
        return len(self.t_ns)

    @classmethod
    def empty(cls) -> Trace:
        return cls(np.zeros(0), np.zeros(0))

    def rate_hz(self) -> float:
        """Samples per second actually achieved over the trace."""
        if len(self) < 2 or self.t_ns[-1] <= self.t_ns[0]:
            return 0.0
        return (len(self) - 1) / ((self.t_ns[-1] - self.t_ns[0]) / 1e9)

    def update_hz(self) -> float:
        """How often the value changed: a fuel gauge can refresh far slower than we read it."""
        if len(self) < 2 or self.t_ns[-1] <= self.t_ns[0]:
            return 0.0
        changes = int(np.count_nonzero(np.diff(self.w) != 0))
        return changes / ((self.t_ns[-1] - self.t_ns[0]) / 1e9)

    def mean_w(self) -> float | None:
        ok = self.w[self.valid]
        return float(ok.mean()) if len(ok) else None


@dataclass
class SamplerOutput:
    """Rows of one farm-sampler run: (t_ns, fields) in file mode, (t_ns, [line]) in command modes."""

    mode: str = ""
    rate_hz: float = 0.0
    rows: list[tuple[int, list[str]]] = field(default_factory=list)
    ended: bool = False
    missed: int = 0

    def groups(self) -> list[tuple[int, list[str]]]:
        """Command output grouped by timestamp: one group per run of a repeated command."""
        out: list[tuple[int, list[str]]] = []
        for t, fields in self.rows:
            line = "\t".join(fields)
            if out and out[-1][0] == t:
                out[-1][1].append(line)
            else:
                out.append((t, [line]))
        return out

    def rate_achieved(self) -> float:
        times = sorted({t for t, _ in self.rows})
        if len(times) < 2:
            return 0.0
        return (len(times) - 1) / ((times[-1] - times[0]) / 1e9)


_HEADER = re.compile(r"#\s*farm-sampler\s+\d+\s+mode=(\w+)\s+rate_hz=([\d.e+]+)")
_END = re.compile(r"#\s*end\s+samples=(\d+)\s+missed=(\d+)")


def parse_sampler_output(text: str) -> SamplerOutput:
    """Parse farm-sampler's text; a truncated last line (killed sampler) is dropped, not guessed."""
    out = SamplerOutput()
    lines = text.split("\n")
    if lines and not text.endswith("\n"):
        lines = lines[:-1]
    for line in lines:
        if line.startswith("#"):
            if m := _HEADER.match(line):
                out.mode, out.rate_hz = m.group(1), float(m.group(2))
            elif m := _END.match(line):
                out.ended, out.missed = True, int(m.group(2))
            continue
        t, sep, rest = line.partition("\t")
        if sep and t.isdigit():
            out.rows.append((int(t), rest.split("\t")))
    return out


def counter_rates(t_ns: np.ndarray, counts: np.ndarray, wrap: float | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """d(count)/dt in counts per second at interval midpoints; a decrease is a wrap at `wrap`."""
    t_ns = np.asarray(t_ns, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.float64)
    if len(t_ns) < 2:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    delta = np.diff(counts)
    if wrap is not None:
        delta = np.where(delta < 0, delta + wrap, delta)
    dt = np.diff(t_ns) / 1e9
    keep = dt > 0
    mid = t_ns[:-1] + np.diff(t_ns) // 2
    return mid[keep], delta[keep] / dt[keep]


_KV = re.compile(r"^\s*([^:]+?):\s*(.*?)\s*$")


def parse_labels(text: str) -> dict[str, str]:
    """``Label: value`` lines → {lower-cased label: value}; order, count and vendor lines do not matter.

    Used for ``dumpsys battery``. Lines without a colon are ignored; the first occurrence of a label
    wins (HyperOS repeats labels inside its own sections further down).
    """
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = _KV.match(line)
        if m and m.group(1).strip():
            out.setdefault(m.group(1).strip().lower(), m.group(2))
    return out


def to_float(value: str) -> float | None:
    """A number from a sysfs/command field, or None for NA / garbage."""
    try:
        return float(value.strip())
    except (ValueError, AttributeError):
        return None


def current_unit(values: np.ndarray) -> str:
    """µA or mA for a fuel gauge's current: |I| > 20000 somewhere ⇒ µA (no phone draws 20 A)."""
    vals = np.abs(np.asarray(values, dtype=np.float64))
    return "uA" if len(vals) and float(np.nanmax(vals)) > 20000 else "mA"


def voltage_unit(values: np.ndarray) -> str:
    """µV, mV or V for a battery voltage (a Li-ion cell sits between 2.5 and 5 V)."""
    vals = np.abs(np.asarray(values, dtype=np.float64))
    top = float(np.nanmedian(vals)) if len(vals) else 0.0
    return "uV" if top > 100_000 else "mV" if top > 100 else "V"


SCALE = {"uA": 1e-6, "mA": 1e-3, "A": 1.0, "uV": 1e-6, "mV": 1e-3, "V": 1.0}


# Board-input rails, most common first: Orin Nano/NX and Xavier NX on JetPack 5/6 (VDD_IN), Nano on
# JetPack 4 (POM_5V_IN), a generic input (VIN).
TOTAL_RAILS = ["VDD_IN", "POM_5V_IN", "VIN"]
# Modules with no board-input rail, whose power is the sum of rails. Jetson AGX Orin: its first INA3221
# (1-0040) measures VDD_GPU_SOC, VDD_CPU_CV and VIN_SYS_5V0 (the module's 5 V system input, everything
# else on the module); VIN_SYS_5V0 alone is one rail, not the total (Jetson Linux Developer Guide,
# "Jetson AGX Orin series" power monitoring; jetson-stats issue #344: its "ALL" was VIN_SYS_5V0 alone).
# The second monitor's VDDQ_VDD2_1V8AO (DRAM) stays in the details, not in the sum: the sources above
# define the module's power by the first monitor's three rails.
SUMMED_RAILS = [["VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0"]]


def total_rails(names: list[str], rail: str | None = None, rails: list[str] | None = None) -> list[str] | None:
    """The rails whose sum is the device's power: the profile's `rails` (all must exist) or `rail`, else
    the first board-input rail present, else the first complete SUMMED_RAILS group; None if none fits."""
    if rails:
        return list(rails) if all(r in names for r in rails) else None
    if rail:
        return [rail] if rail in names else None
    single = next((p for p in TOTAL_RAILS if p in names), None)
    if single:
        return [single]
    return next((list(group) for group in SUMMED_RAILS if all(r in names for r in group)), None)
