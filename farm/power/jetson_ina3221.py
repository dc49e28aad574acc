"""Jetson INA3221 power monitors through hwmon: ``in<N>_input`` (mV) × ``curr<N>_input`` (mA).

Rails are found by their ``in<N>_label`` (VDD_IN, VDD_CPU_GPU_CV, VDD_SOC on Orin Nano; POM_5V_IN on a
JetPack 4 Nano; VDD_GPU_SOC, VDD_CPU_CV, VIN_SYS_5V0 on AGX Orin), never by channel number, since boards
wire them differently. All labelled rails are sampled; the device's power is the board-input rail
(option ``rail``, else VDD_IN / POM_5V_IN / VIN) or the sum of rails of a module without one (option
``rails``, else AGX Orin's three, see ``farm.power.trace.SUMMED_RAILS``); every rail goes to details.
"""

from __future__ import annotations

import re

import numpy as np

from farm.errors import ConfigError, InfraError
from farm.power.base import DeviceSource
from farm.power.trace import SamplerOutput, Trace, to_float, total_rails

# the same monitors appear under both; rails are deduplicated by label
HWMON_GLOBS = ["/sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*", "/sys/class/hwmon/hwmon*"]
_SAFE_GLOB = re.compile(r"^[A-Za-z0-9_/.*:@+-]+$")


def rails_from_listing(text: str) -> dict[str, tuple[str, str]]:
    """Lines "PATH/in<N>_label<TAB>LABEL" → {label: (PATH/in<N>_input, PATH/curr<N>_input)}."""
    rails: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        path, _, label = line.partition("\t")
        m = re.match(r"^(.*)/in(\d+)_label$", path.strip())
        if m and label.strip() and not label.strip().lower().startswith("sum of"):
            base, n = m.groups()
            rails.setdefault(label.strip(), (f"{base}/in{n}_input", f"{base}/curr{n}_input"))
    return rails


def rail_watts(out: SamplerOutput, n_rails: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of alternating mV, mA columns → (t_ns, W per rail [rows × rails]); unreadable → NaN."""
    t, w = [], []
    for ts, fields in out.rows:
        vals = [to_float(v) for v in fields[: 2 * n_rails]]
        if len(vals) < 2 * n_rails:
            continue
        t.append(ts)
        w.append([(vals[2 * k] * vals[2 * k + 1] / 1e6) if None not in (vals[2 * k], vals[2 * k + 1])
                  else np.nan for k in range(n_rails)])
    return np.array(t, dtype=np.int64), np.array(w, dtype=np.float64).reshape(len(t), n_rails)


class JetsonIna3221(DeviceSource):
    class Options(DeviceSource.Options):
        hwmon_glob: str | list[str] = HWMON_GLOBS
        rail: str | None = None
        rails: list[str] | None = None  # a module without a board-input rail: the sum of these

    name = "jetson_ina3221"

    def prepare(self) -> None:
        globs = self.options.get("hwmon_glob", HWMON_GLOBS)
        patterns = [self.path(g) for g in ([globs] if isinstance(globs, str) else globs)]
        pattern = " ".join(patterns)
        if not all(_SAFE_GLOB.match(p) for p in patterns):  # globs stay unquoted: path characters only
            raise ConfigError(f"power option hwmon_glob {pattern!r} has characters outside [A-Za-z0-9_/.*:@+-]")
        script = (f'for d in {pattern}; do case "$(cat "$d/name" 2>/dev/null)" in ina3221*) ;; *) continue ;; '
                  f'esac; for f in "$d"/in*_label; do [ -r "$f" ] && printf \'%s\\t%s\\n\' "$f" "$(cat "$f")"; '
                  'done; done; true')
        self.rails = rails_from_listing(self.transport.shell(script, timeout=15).stdout)
        self.names = sorted(self.rails)
        self.total = total_rails(self.names, self.options.get("rail"), self.options.get("rails"))
        if self.total is None:
            raise InfraError(f"no INA3221 board-input rail under {pattern} (rails found: "
                             f"{', '.join(self.names) or 'none'}; set power option 'rail' or 'rails')")
        self.unit = "mV,mA"
        self.details.update(rail="+".join(self.total), rails=self.names)

    def plan(self) -> tuple[str, list[str], float]:
        return "f", [p for name in self.names for p in self.rails[name]], self.rate_target

    def convert(self, out: SamplerOutput) -> Trace:
        t, w = rail_watts(out, len(self.names))
        if not len(t):
            return Trace.empty()
        cols = [self.names.index(r) for r in self.total]
        self.details["rail_mean_w"] = {n: round(float(np.nanmean(w[:, k])), 4) for k, n in enumerate(self.names)
                                       if np.isfinite(w[:, k]).any()}
        total = w[:, cols].sum(axis=1)  # NaN if any summed rail was unreadable: that sample is invalid
        return Trace(t, np.nan_to_num(total), np.isfinite(total))
