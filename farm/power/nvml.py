"""NVIDIA GPUs through NVML (``pynvml``, optional): sampled on the agent host, which is the device.

Prefers the total-energy counter (mJ, Volta and later) differentiated into W, because
``nvmlDeviceGetPowerUsage`` (mW) is a ~1 s moving average on many boards. Several GPUs (option
``indices``) add up. The NVML module is looked up by name (option ``module``, default ``pynvml``),
so any implementation of the NVML Python interface can stand in.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from farm.errors import InfraError
from farm.power.base import HostSource
from farm.power.trace import Trace, counter_rates


class Nvml(HostSource):
    class Options(HostSource.Options):
        module: str = "pynvml"
        indices: list[int] = [0]

    name = "nvml"

    def prepare(self) -> None:
        module = self.options.get("module", "pynvml")
        try:
            self.nv: Any = importlib.import_module(module)
        except ImportError as exc:
            raise InfraError(f"power source nvml needs {module} (pip install nvidia-ml-py)") from exc
        try:
            self.nv.nvmlInit()
            self.handles = [self.nv.nvmlDeviceGetHandleByIndex(i) for i in self.options.get("indices", [0])]
        except Exception as exc:  # NVMLError has no stable import path across versions
            raise InfraError(f"NVML not usable on this host: {exc}") from exc
        try:
            for h in self.handles:
                self.nv.nvmlDeviceGetTotalEnergyConsumption(h)
            self.counter = True
        except Exception:  # old GPUs raise NVML_ERROR_NOT_SUPPORTED
            self.counter = False
        self.unit = "mJ" if self.counter else "mW"
        names = [self.nv.nvmlDeviceGetName(h) for h in self.handles]
        self.details.update(gpus=[n.decode() if isinstance(n, bytes) else str(n) for n in names],
                            reading="total energy counter" if self.counter else "power usage (averaged)")

    def read(self) -> float:
        if self.counter:
            return float(sum(self.nv.nvmlDeviceGetTotalEnergyConsumption(h) for h in self.handles))
        return float(sum(self.nv.nvmlDeviceGetPowerUsage(h) for h in self.handles))

    def to_trace(self, t_ns: np.ndarray, raw: np.ndarray) -> Trace:
        if self.counter:
            mid, mj_per_s = counter_rates(t_ns, raw)
            return Trace(mid, mj_per_s / 1000.0)
        return Trace(t_ns, raw / 1000.0)
