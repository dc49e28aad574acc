"""Thermal gating and the temperature story of a run (°C, kHz, device CLOCK_MONOTONIC ns).

Owns reading a device's thermal zones (sysfs millidegrees) and CPU frequencies (kHz) in one shell
round trip, waiting until the device is cool and flat before a run, and judging afterwards whether
the run throttled. A profile without zones (this VM, many hosts) gates nothing and is not an error;
a zone that cannot be read is left out of the state rather than guessed.
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from farm.devices import DeviceProfile
from farm.errors import InfraError
from farm.transports.base import Transport

CAP_MARGIN = 0.98  # a policy cap within 2 % of the hardware max is rounding, not throttling


@dataclass
class ThermalState:
    temps_c: dict[str, float]
    freqs_khz: dict[str, int]
    t_mono_ns: int | None  # device CLOCK_MONOTONIC when read (None if the device clock is unreachable)
    max_khz: dict[str, int] = field(default_factory=dict)  # cpuinfo_max_freq per cpufreq file
    cap_khz: dict[str, int] = field(default_factory=dict)  # scaling_max_freq: lowered by thermal capping

    @property
    def hottest_c(self) -> float | None:
        return max(self.temps_c.values()) if self.temps_c else None


def _cap_file(cur: str) -> str | None:
    return cur.rsplit("/", 1)[0] + "/scaling_max_freq" if cur.endswith("/scaling_cur_freq") else None


def read_state(transport: Transport, profile: DeviceProfile, *, workdir: str | None = None) -> ThermalState:
    """Temperatures, frequencies and caps now, in one round trip."""
    th = profile.thermal
    files = [*th.zones, *th.cpufreq, *th.cpufreq_max, *filter(None, map(_cap_file, th.cpufreq))]
    sampler = f"{(workdir or profile.workdir).rstrip('/')}/bin/farm-sampler"
    parts = [f"printf '%s\\t%s\\n' {shlex.quote(f)} \"$(cat {shlex.quote(f)} 2>/dev/null)\"" for f in files]
    if transport.kind != "local":  # on the local transport this process shares the device's clock
        parts.append(f"[ -x {shlex.quote(sampler)} ] && printf 'now\\t%s\\n' \"$({shlex.quote(sampler)} -n)\"")
    t_local = time.monotonic_ns()
    # one command per part, never an empty one: `; cmd` is a syntax error for sh (shell-v1 adb shows it)
    out = transport.shell("; ".join([*parts, "true"]), timeout=20).stdout if parts else ""
    values: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.partition("\t")
        if value.strip():
            values[key] = value.strip()

    def num(path: str) -> float | None:
        try:
            return float(values[path])
        except (KeyError, ValueError):
            return None

    temps = {z: v / 1000.0 for z in th.zones if (v := num(z)) is not None}
    freqs = {f: int(v) for f in th.cpufreq if (v := num(f)) is not None}
    maxes = {cur: int(v) for cur, mx in zip(th.cpufreq, th.cpufreq_max, strict=False) if (v := num(mx)) is not None}
    caps = {cur: int(v) for cur in th.cpufreq if (c := _cap_file(cur)) and (v := num(c)) is not None}
    now = values.get("now")
    t_mono = t_local if transport.kind == "local" else int(now) if now and now.isdigit() else None
    return ThermalState(temps, freqs, t_mono, maxes, caps)


def wait_until_cool(transport: Transport, profile: DeviceProfile, *,
                    on_wait: Callable[[ThermalState, str], None] | None = None,
                    poll_s: float | None = None) -> ThermalState:
    """Block until the hottest zone is below start_temp_c and flat within stable_delta_c over stable_window_s."""
    th = profile.thermal
    poll = poll_s if poll_s is not None else max(0.2, min(2.0, th.stable_window_s / 5))
    deadline = time.monotonic() + th.timeout_s
    history: list[tuple[float, float]] = []
    while True:
        state = read_state(transport, profile)
        hottest = state.hottest_c
        if not th.zones:
            return state  # no zones: nothing to gate on
        now = time.monotonic()
        if hottest is None:  # zones named but none readable right now: not a reason to stop gating
            if now >= deadline:
                raise InfraError(f"device {profile.name} ({transport.kind}): no thermal zone readable in "
                                 f"{th.timeout_s:.0f} s ({', '.join(th.zones)})")
            if on_wait is not None:
                on_wait(state, "no thermal zone readable")
            time.sleep(poll)
            continue
        history = _window([*history, (now, hottest)], now - th.stable_window_s)
        covered = now - history[0][0] >= th.stable_window_s
        spread = max(c for _, c in history) - min(c for _, c in history)
        if hottest < th.start_temp_c and covered and spread <= th.stable_delta_c:
            return state
        reason = (f"{hottest:.1f} °C ≥ start {th.start_temp_c:.1f} °C" if hottest >= th.start_temp_c else
                  f"settling: {spread:.2f} °C spread over {now - history[0][0]:.1f} s "
                  f"(needs ≤ {th.stable_delta_c} °C over {th.stable_window_s} s)")
        if now >= deadline:
            raise InfraError(f"device {profile.name} ({transport.kind}) did not cool down in {th.timeout_s:.0f} s: "
                             f"{reason}; hottest zone at {hottest:.1f} °C, threshold {th.start_temp_c:.1f} °C")
        if on_wait is not None:
            on_wait(state, reason)
        time.sleep(poll)


def _window(history: list[tuple[float, float]], start: float) -> list[tuple[float, float]]:
    """The samples that cover [start, now]: all newer than `start` plus the newest one at or before it.

    That anchor sample is what proves the window is covered; dropping it (keeping only samples inside
    the window) leaves the oldest kept sample up to one poll younger than the window, for ever."""
    first = 0
    while first + 1 < len(history) and history[first + 1][0] <= start:
        first += 1
    return history[first:]


def throttled(start: ThermalState, end: ThermalState, profile: DeviceProfile, *,
              mode_caps: bool = False) -> tuple[bool, str]:
    """Did the run throttle? `end` is read right after the run, while the device was still hot.

    Signs: a zone above throttle_temp_c; a CPU whose policy cap (scaling_max_freq, which thermal
    cooling devices lower) sits below the hardware max. The current frequency alone is not used: a
    governor drops it within milliseconds of the run ending, which would flag every run.
    `mode_caps`: the job set a power mode (farm.agent.power_mode) before `start`; a cap it left that the run
    did not lower further is the mode's, not throttling.
    """
    reasons: list[str] = []
    limit = profile.thermal.throttle_temp_c
    if limit is not None:
        hot = {z: c for z, c in end.temps_c.items() if c >= limit}
        reasons += [f"{z} at {c:.1f} °C ≥ {limit:.1f} °C" for z, c in hot.items()]
    for cpu, mx in end.max_khz.items():
        cap = end.cap_khz.get(cpu)
        if cap is not None and cap < mx * CAP_MARGIN:
            was = start.cap_khz.get(cpu)
            if mode_caps and was is not None and cap >= was:
                continue
            reasons.append(f"{cpu} capped at {cap} kHz < max {mx} kHz" + (f" (was {was} kHz)" if was else ""))
    return bool(reasons), "; ".join(reasons)
