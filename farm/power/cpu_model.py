"""`cpu_model`: a MODELLED power figure for devices with no sensor (this VM, most CI hosts).

P = idle_w + k_w_per_core × busy cores, where busy cores come from /proc/stat's aggregate line
read on the device by farm-sampler (jiffies differentiated between readings). Every report from
this source says ``modelled: true``: the numbers show how load moves, not joules.
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from farm.power.base import DeviceSource
from farm.power.trace import SamplerOutput, Trace, counter_rates

IDLE_W = 5.0
K_W_PER_CORE = 4.0


def busy_cores(out: SamplerOutput, ncpu: int) -> tuple[np.ndarray, np.ndarray]:
    """(midpoint t_ns, busy cores) from rows holding the ``cpu  user nice system idle iowait ...`` line."""
    t, busy, total = [], [], []
    for ts, fields in out.rows:
        parts = fields[0].split() if fields else []
        if len(parts) < 5 or parts[0] != "cpu":
            continue
        vals = [float(x) for x in parts[1:]]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0.0)  # idle + iowait
        # guest time is already inside user/nice: count only the first 8 fields
        t.append(ts)
        busy.append(sum(vals[:8]) - idle)
        total.append(sum(vals[:8]))
    if len(t) < 2:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    mid, dbusy = counter_rates(np.array(t), np.array(busy))
    _, dtotal = counter_rates(np.array(t), np.array(total))
    frac = np.divide(dbusy, dtotal, out=np.zeros_like(dbusy), where=dtotal > 0)
    return mid, np.clip(frac, 0.0, 1.0) * ncpu


class CpuModel(DeviceSource):
    class Options(DeviceSource.Options):
        idle_w: float = Field(default=IDLE_W, ge=0)
        k_w_per_core: float = Field(default=K_W_PER_CORE, ge=0)

    name = "cpu_model"
    modelled = True

    def prepare(self) -> None:
        result = self.transport.shell("grep -c '^cpu[0-9]' /proc/stat", timeout=10)
        self.ncpu = int(result.stdout.strip() or self.profile.cpus.count)
        self.idle_w = float(self.options.get("idle_w", IDLE_W))
        self.k_w = float(self.options.get("k_w_per_core", K_W_PER_CORE))
        # /proc/stat ticks at USER_HZ (100 Hz): reading faster only adds quantisation noise
        self.rate_target = min(self.rate_target, 20.0)
        self.unit = "W (modelled)"
        self.details.update(modelled_as=f"P = {self.idle_w:g} W + {self.k_w:g} W x busy cores",
                            ncpu=self.ncpu)

    def plan(self) -> tuple[str, list[str], float]:
        return "f", [self.path("/proc/stat")], self.rate_target

    def convert(self, out: SamplerOutput) -> Trace:
        mid, cores = busy_cores(out, self.ncpu)
        return Trace(mid, self.idle_w + self.k_w * cores)
