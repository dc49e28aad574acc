"""Android fuel gauge: ``current_now`` × ``voltage_now`` from sysfs, read on the phone.

Units are detected, never trusted: |I| > 20000 ⇒ µA else mA; voltage µV/mV/V by magnitude. The
sign convention (kernel: negative = discharging; many vendors: positive) is learnt once per device
with a short idle-then-load probe (load pulls the current further in the discharge direction) and
stored on the device in ``<workdir>/power/android_battery.json``; a profile may state it instead
(options ``sign``, ``unit``). A charger online (USB/AC/Wireless/Dock, from ``dumpsys battery`` and
the chargers' ``online`` files) makes the gauge report net battery current: such samples are invalid.
"""

from __future__ import annotations

import json
import shlex
import time
from typing import Literal

import numpy as np

from farm.errors import InfraError
from farm.power.base import DeviceSource
from farm.power.trace import SCALE, SamplerOutput, Trace, current_unit, parse_labels, to_float, voltage_unit

SUPPLY = "/sys/class/power_supply/battery"
CHARGERS = [f"/sys/class/power_supply/{n}/online" for n in ("usb", "ac", "wireless", "dc", "dock")]
POWERED = ("ac powered", "usb powered", "wireless powered", "dock powered")
SIGNS = ("negative-discharge", "positive-discharge")


def charger_online(dumpsys: dict[str, str]) -> bool | None:
    """True when `dumpsys battery` lists any charger as powered; None when it lists none of the fields."""
    seen = [dumpsys[k].strip().lower() == "true" for k in POWERED if k in dumpsys]
    return any(seen) if seen else None


def detect_sign(idle_i: np.ndarray, load_i: np.ndarray, charging: bool | None) -> tuple[str | None, str]:
    """The discharge sign from an idle and a load window of raw currents, with the reason."""
    if len(idle_i) and len(load_i):
        delta = float(np.mean(load_i) - np.mean(idle_i))
        noise = float(np.std(idle_i)) + 0.02 * abs(float(np.mean(idle_i))) + 1e-9
        if abs(delta) > 3 * noise:
            return SIGNS[delta > 0], f"load moved current by {delta:+.0f} (noise {noise:.0f})"
    if charging is False and len(idle_i) and np.mean(idle_i) != 0:
        # unplugged, so the battery can only be discharging: the idle sign is the discharge sign
        return SIGNS[float(np.mean(idle_i)) > 0], "sign of idle current while unplugged"
    return None, "probe inconclusive"


class AndroidBattery(DeviceSource):
    name = "android_battery"

    class Options(DeviceSource.Options):
        supply: str = SUPPLY
        chargers: list[str] = CHARGERS
        sign: Literal["negative-discharge", "positive-discharge"] | None = None
        unit: Literal["uA", "mA", "A"] | None = None

    def prepare(self) -> None:
        supply = self.path(self.options.get("supply", SUPPLY))
        self.files = [f"{supply}/current_now", f"{supply}/voltage_now"]
        for f in self.files:
            if not self.transport.exists(f):
                raise InfraError(f"fuel gauge file {f} not found on the device (power source android_battery)")
        wanted = [self.path(c) for c in self.options.get("chargers", CHARGERS)]
        probe = "; ".join(f"[ -r {shlex.quote(c)} ] && echo {shlex.quote(c)}" for c in wanted)
        self.chargers = self.transport.shell(probe + "; true", timeout=10).stdout.split()
        self.files += self.chargers
        self.calibration = f"{self.workdir}/power/android_battery.json"
        self.sign = self.options.get("sign") or ""
        self.i_unit = self.options.get("unit") or ""
        self.details.update(files=self.files, chargers=self.chargers)
        self.charging = self._dumpsys_charging()

    def _dumpsys_charging(self) -> bool | None:
        """Charger state from dumpsys, else from the chargers' online files, else unknown."""
        result = self.transport.shell("dumpsys battery 2>/dev/null", timeout=15)
        state = charger_online(parse_labels(result.stdout)) if result.exit_code == 0 else None
        if state is None and self.chargers:
            online = self.transport.run(["cat", *self.chargers], timeout=10).stdout.split()
            state = any(v.strip() == "1" for v in online)
        return state

    def calibrate(self) -> None:
        if self.sign in SIGNS and self.i_unit:
            return
        stored = self.transport.shell(f"cat {shlex.quote(self.calibration)} 2>/dev/null", timeout=10).stdout
        try:
            saved = json.loads(stored) if stored.strip() else {}
        except ValueError:
            saved = {}
        if saved.get("sign") in SIGNS and saved.get("unit"):
            self.sign, self.i_unit = self.sign or saved["sign"], self.i_unit or saved["unit"]
            self.details["calibration"] = f"stored ({saved.get('reason', '')})"
            return
        self.start_raw(tag="calibrate")
        time.sleep(1.0)
        t_load = self.sampler.now_ns()
        self.busy_load(2.0)
        t_end = self.sampler.now_ns()
        rows = [(t, to_float(f[0])) for t, f in self.stop_raw().rows if to_float(f[0]) is not None]
        current = np.array([v for _, v in rows])
        idle = np.array([v for t, v in rows if t < t_load])
        load = np.array([v for t, v in rows if t_load + 500_000_000 <= t <= t_end])
        sign, reason = detect_sign(idle, load, self.charging)
        if sign is None:
            sign = "negative-discharge"
            self.warnings.append(f"fuel gauge sign not detectable ({reason}): assumed the kernel's rule")
        self.sign, self.i_unit = self.sign or sign, self.i_unit or current_unit(current)
        self.details["calibration"] = f"probed: {reason}"
        record = json.dumps({"sign": self.sign, "unit": self.i_unit, "reason": reason})
        self.transport.shell(f"printf '%s\\n' {shlex.quote(record)} > {shlex.quote(self.calibration)}",
                             timeout=10)

    def plan(self) -> tuple[str, list[str], float]:
        return "f", self.files, self.rate_target

    def stop(self) -> Trace:
        trace = super().stop()
        if self._dumpsys_charging():
            self.charging = True
        return trace

    def convert(self, out: SamplerOutput) -> Trace:
        rows = [(t, [to_float(v) for v in f]) for t, f in out.rows if len(f) >= 2]
        if not rows:
            return Trace.empty()
        t = np.array([r[0] for r in rows], dtype=np.int64)
        i_raw = np.array([np.nan if r[1][0] is None else r[1][0] for r in rows])
        v_raw = np.array([np.nan if r[1][1] is None else r[1][1] for r in rows])
        online = np.array([any(v == 1 for v in r[1][2:]) for r in rows])
        if not self.i_unit:
            self.i_unit = current_unit(i_raw)
            self.warnings.append("current unit detected on this trace only (no calibration ran)")
        if self.sign not in SIGNS:
            self.sign = "negative-discharge"
            self.warnings.append("fuel gauge sign not calibrated: assumed the kernel's rule")
        v_unit = voltage_unit(v_raw)
        sign = 1.0 if self.sign == "positive-discharge" else -1.0
        watts = sign * i_raw * SCALE[self.i_unit] * v_raw * SCALE[v_unit]
        self.unit = f"{self.i_unit},{v_unit}"
        if online.any():
            self.charging = True
        valid = np.isfinite(watts) & (watts > 0) & ~online & (self.charging is not True)
        self.details.update(invalid_samples=int((~valid).sum()))
        return Trace(t, np.nan_to_num(watts), valid)
