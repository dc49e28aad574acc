"""A stand-in for the NVML Python interface (pynvml), driven by an analytic power model.

No GPU exists here. This implements the five NVML calls farm's nvml source uses, with the energy
counter (mJ) equal to the exact integral of `MODEL` since init, so the source's differentiation
and the session's integration are checked against a known answer.
"""

from __future__ import annotations

import time

from farm.lab.powerfeed import AnalyticModel

MODEL = AnalyticModel(a=40.0, b=10.0)
_T0: int | None = None


class NVMLError(Exception):
    pass


def nvmlInit() -> None:
    global _T0
    _T0 = time.monotonic_ns()


def nvmlShutdown() -> None:
    pass


def nvmlDeviceGetHandleByIndex(index: int) -> int:
    if _T0 is None:
        raise NVMLError("Uninitialized")
    if index != 0:
        raise NVMLError("Invalid Argument")
    return index


def nvmlDeviceGetName(handle: int) -> bytes:
    return b"Fake GPU (analytic model)"


def nvmlDeviceGetTotalEnergyConsumption(handle: int) -> int:
    assert _T0 is not None
    return int(MODEL.energy_j(_T0, time.monotonic_ns()) * 1000)


def nvmlDeviceGetPowerUsage(handle: int) -> int:
    return int(MODEL.watts(time.monotonic()) * 1000)
