"""A power measurement around one benchmark run: idle baseline, sampling, per-phase energy.

The job runner's view of power. It opens a session for the device, measures the idle baseline,
starts sampling just before the engine runs, stops after, and asks for a report given the
engine's phase markers (device CLOCK_MONOTONIC ns). Units: W, J, s.
"""

from __future__ import annotations

import time

from farm.devices import DeviceProfile
from farm.errors import InfraError
from farm.power.base import PowerSource
from farm.power.energy import Phase, PowerReport, encode_trace, idle_noise, phase_energy
from farm.power.trace import Trace
from farm.transports.base import Transport


class PowerSession:
    """Sampling of one device's power source for one run."""

    def __init__(self, source: PowerSource) -> None:
        self.source = source
        self.idle_w: float | None = None
        self.idle_trace: Trace | None = None
        self.trace: Trace | None = None
        self._prepared = False
        self._running = False
        self._warnings: list[str] = []

    def _prepare(self) -> None:
        if not self._prepared:
            self.source.prepare()
            self._prepared = True

    def measure_idle(self, seconds: float = 2.0) -> None:
        """Baseline power with the device idle (after calibrating conventions such as a gauge's sign)."""
        self._prepare()
        self.source.calibrate()
        self.source.start()
        time.sleep(seconds)
        idle = self.source.stop()
        self.idle_trace = idle
        self.idle_w = idle.mean_w()
        if self.idle_w is None and len(idle):
            self._warnings.append("idle baseline has no valid sample (charger online?)")
        elif not len(idle) and self.source.name != "none":
            self._warnings.append(f"idle baseline: no samples in {seconds:g} s")

    def start(self) -> None:
        """Begin sampling on the device."""
        self._prepare()
        if self._running:
            raise InfraError("power sampling already started")
        self.source.start()
        self._running = True

    def stop(self) -> None:
        """End sampling and fetch the trace."""
        if not self._running:
            raise InfraError("power sampling was not started")
        self._running = False
        # Sample a little past the engine's exit: the last phase ends at most a moment before the
        # command returns, and a counter source (RAPL, /proc/stat) needs the sample after a window
        # to measure its end. Three periods cover both, bounded at 0.5 s for slow sensors.
        time.sleep(min(0.5, 3.0 / max(self.source.rate_target, 1e-3)))
        self.trace = self.source.stop()

    def report(self, phases: list[Phase]) -> PowerReport:
        """Energy per phase (∫P dt, net of idle, per token) with everything needed to judge it."""
        src = self.source
        trace = self.trace if self.trace is not None else Trace.empty()
        warnings = [*self._warnings, *src.warnings]
        if src.charging:
            warnings.append("a charger is online: the gauge reports net battery current; samples invalid")
        if src.modelled:
            warnings.append("power is MODELLED from CPU utilisation, not measured")
        update = trace.update_hz()
        if len(trace) > 10 and 0 < update < 0.5 * trace.rate_hz():
            warnings.append(f"sensor value changes at {update:.1f} Hz while read at {trace.rate_hz():.1f} Hz: "
                            "effective resolution is the sensor's refresh")
        noise = idle_noise(self.idle_trace, trace) if self.idle_trace is not None else None
        results = [phase_energy(trace, p, self.idle_w, noise) for p in phases]
        flagged = sum(1 for r in results if r.warnings)
        if flagged:
            warnings.append(f"{flagged} of {len(results)} phases carry warnings")
        details = {**src.details, "n_samples": len(trace), "update_hz": round(update, 3)}
        if noise is not None:
            details["idle_noise"] = {"sd_w": noise.sd_w, "n_eff": noise.n_eff, "step_w": noise.step_w}
        return PowerReport(source=src.name, modelled=src.modelled, unit=src.unit, sign=src.sign,
                           rate_hz_target=src.rate_target, rate_hz_achieved=round(src.rate_achieved, 3),
                           idle_w=self.idle_w, charging=src.charging, warnings=warnings, phases=results,
                           trace_zlib_b64=encode_trace(trace), details=details)


def open_session(transport: Transport, profile: DeviceProfile, workdir: str) -> PowerSession:
    """A session on the profile's power source (registry name in ``profile.power.source``)."""
    from farm.power import POWER_SOURCES

    cls = POWER_SOURCES.get(profile.power.source)
    POWER_SOURCES.options(profile.power.source, profile.power.options)
    return PowerSession(cls(transport, profile, workdir))
