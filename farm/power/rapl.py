"""Intel/AMD RAPL through powercap: ``energy_uj`` counters (µJ) differentiated into W.

The counter wraps at ``max_energy_range_uj``; a decrease between two readings is one wrap (the
sampler reads far more often than the ~minutes a wrap takes). Several domains (packages) add up.
Power is placed at the midpoint of each reading interval.
"""

from __future__ import annotations

import numpy as np

from farm.errors import InfraError
from farm.power.base import DeviceSource
from farm.power.trace import SamplerOutput, Trace, counter_rates, to_float

DEFAULT_DOMAIN = "/sys/class/powercap/intel-rapl:0/energy_uj"


def rapl_power(out: SamplerOutput, wraps: list[float]) -> Trace:
    """Rows of energy_uj readings (one column per domain) → total W."""
    rows = [(t, [to_float(v) for v in f]) for t, f in out.rows]
    rows = [(t, v) for t, v in rows if len(v) == len(wraps) and None not in v]
    if len(rows) < 2:
        return Trace.empty()
    t = np.array([r[0] for r in rows], dtype=np.int64)
    total = None
    for i, wrap in enumerate(wraps):
        mid, rate = counter_rates(t, np.array([r[1][i] for r in rows]), wrap)
        total = rate if total is None else total + rate
    return Trace(mid, total * 1e-6)


class Rapl(DeviceSource):
    class Options(DeviceSource.Options):
        domains: list[str] = [DEFAULT_DOMAIN]

    name = "rapl"

    def prepare(self) -> None:
        self.domains = [self.path(d) for d in self.options.get("domains", [DEFAULT_DOMAIN])]
        self.wraps: list[float] = []
        for dom in self.domains:
            max_file = dom.rsplit("/", 1)[0] + "/max_energy_range_uj"
            try:
                wrap = to_float(self.transport.read_text(max_file))
            except InfraError as exc:
                raise InfraError(f"RAPL domain {dom} not readable on the device: {exc}") from exc
            self.wraps.append(wrap if wrap else 2.0**32)
        self.unit = "uJ"
        self.details.update(domains=self.domains, max_energy_range_uj=self.wraps)

    def plan(self) -> tuple[str, list[str], float]:
        return "f", self.domains, self.rate_target

    def convert(self, out: SamplerOutput) -> Trace:
        return rapl_power(out, self.wraps)
