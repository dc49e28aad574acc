"""The power-source interface and the two ways of sampling that every source reuses.

A source turns readings into a :class:`~farm.power.trace.Trace` (device CLOCK_MONOTONIC ns → W).

- :class:`DeviceSource`: readings taken ON the device by ``farm-sampler`` (files at a rate, or a
  command's output timestamped by the sampler). Subclasses say what to run (:meth:`plan`) and how
  rows become watts (:meth:`convert`).
- :class:`HostSource`: readings taken on the agent host (NVML, an external Monsoon meter) by a
  thread; timestamps are translated onto the device clock with an offset measured through
  ``farm-sampler -n`` (zero for the local transport, where the clocks are the same).
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from farm.devices import DeviceProfile, PowerConfig
from farm.power.device import DeviceSampler
from farm.power.trace import SamplerOutput, Trace
from farm.registry import PluginOptions
from farm.transports.base import Transport, quote_argv


class PowerSource(ABC):
    """One power sensor of one device."""

    name: ClassVar[str] = ""
    modelled: ClassVar[bool] = False

    class Options(PluginOptions):
        """``profile.power.options``; each source extends this with its own keys."""

        root: str = ""  # prefix of device paths (virtual devices keep their sysfs in a sandbox)

    def __init__(self, transport: Transport, profile: DeviceProfile, workdir: str) -> None:
        self.transport = transport
        self.profile = profile
        self.config: PowerConfig = profile.power
        self.options: dict[str, Any] = dict(profile.power.options)
        self.workdir = workdir
        self.unit = "W"
        self.sign = "n/a"
        self.charging: bool | None = None
        self.warnings: list[str] = []
        self.details: dict[str, Any] = {}
        self.rate_target = float(profile.power.rate_hz)  # a source lowers it when its sensor cannot do better
        self.rate_achieved = 0.0
        self.sampler = DeviceSampler(transport, profile.engine_target, workdir)

    def path(self, device_path: str) -> str:
        """A device path under the optional `root` option (virtual devices keep sysfs in a sandbox)."""
        root = str(self.options.get("root", "")).rstrip("/")
        return f"{root}{device_path}" if root and device_path.startswith("/") else device_path

    def prepare(self) -> None:  # noqa: B027 - optional hook
        """Find the sensor on the device; raise InfraError when it is not there."""

    def calibrate(self) -> None:  # noqa: B027 - optional hook
        """Learn per-device conventions (a fuel gauge's sign) before the idle baseline."""

    @abstractmethod
    def start(self) -> None:
        """Begin sampling."""

    @abstractmethod
    def stop(self) -> Trace:
        """End sampling and return the trace in watts."""

    def busy_load(self, seconds: float, workers: int | None = None) -> None:
        """Keep the device's CPUs busy for a while (calibration probes), from the device's own shell."""
        n = workers or self.profile.cpus.count
        spin = quote_argv(["sh", "-c", "while :; do :; done"])
        script = (f"cd {quote_argv([self.workdir])} 2>/dev/null; pids=; i=0; "
                  f"while [ $i -lt {int(n)} ]; do {spin} & pids=\"$pids $!\"; i=$((i+1)); done; "
                  f"sleep {seconds:.2f}; kill $pids")
        self.transport.shell(script, timeout=seconds + 30)


class DeviceSource(PowerSource):
    """Sampled on the device by farm-sampler."""

    def plan(self) -> tuple[str, list[str], float]:
        """(mode 'f'|'s'|'x', files or command argv, rate in Hz)."""
        raise NotImplementedError

    @abstractmethod
    def convert(self, out: SamplerOutput) -> Trace:
        """Sampler rows → watts."""

    def start_raw(self, tag: str = "trace") -> None:
        mode, args, rate = self.plan()
        self.sampler.launch(mode, args, rate, tag=tag)

    def stop_raw(self) -> SamplerOutput:
        out = self.sampler.stop()
        self.rate_achieved = out.rate_achieved()
        if out.missed:
            self.warnings.append(f"sampler missed {out.missed} periods (device too busy for the rate)")
        return out

    def start(self) -> None:
        self.start_raw()

    def stop(self) -> Trace:
        return self.convert(self.stop_raw())


def device_clock_offset(source: PowerSource) -> int:
    """device CLOCK_MONOTONIC − host CLOCK_MONOTONIC from one round trip (0 for the local transport)."""
    if source.transport.kind == "local":
        return 0
    before = time.monotonic_ns()
    device = source.sampler.now_ns()
    after = time.monotonic_ns()
    source.details["clock_sync_uncertainty_ms"] = (after - before) / 2e6
    return device - (before + after) // 2


class HostSource(PowerSource):
    """Sampled on the agent host by a thread; timestamps moved onto the device clock."""

    @abstractmethod
    def read(self) -> float:
        """One raw reading (W unless :meth:`to_trace` says otherwise)."""

    def to_trace(self, t_ns: np.ndarray, raw: np.ndarray) -> Trace:
        return Trace(t_ns, raw)

    def start(self) -> None:
        self._offset = device_clock_offset(self)
        self._samples: list[tuple[int, float]] = []
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"power-{self.name}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        period = 1.0 / self.rate_target
        next_t = time.monotonic()
        while not self._halt.is_set():
            t0 = time.monotonic_ns()
            raw = self.read()
            self._samples.append(((t0 + time.monotonic_ns()) // 2, raw))
            next_t += period
            self._halt.wait(max(0.0, next_t - time.monotonic()))

    def stop(self) -> Trace:
        self._halt.set()
        self._thread.join(timeout=5)
        if not self._samples:
            return Trace.empty()
        t, raw = zip(*self._samples, strict=True)
        trace = self.to_trace(np.array(t, dtype=np.int64) + self._offset, np.array(raw, dtype=np.float64))
        self.rate_achieved = trace.rate_hz()
        return trace


class CommandSource(DeviceSource):
    """A tool's text output (tegrastats, vcgencmd), timestamped by farm-sampler line by line."""

    mode = "s"  # 's': the tool streams lines itself; 'x': run it once per period

    def command(self) -> list[str]:
        raise NotImplementedError

    def parse_group(self, lines: list[str]) -> float | None:
        """W from one reading's lines, None when they hold no power figure."""
        raise NotImplementedError

    def plan(self) -> tuple[str, list[str], float]:
        return self.mode, self.command(), self.rate_target

    def convert(self, out: SamplerOutput) -> Trace:
        groups = out.groups() if self.mode == "x" else [(t, ["\t".join(f)]) for t, f in out.rows]
        points = [(t, w) for t, lines in groups if (w := self.parse_group(lines)) is not None]
        if not points:
            return Trace.empty()
        t, w = zip(*points, strict=True)
        return Trace(np.array(t, dtype=np.int64), np.array(w))
