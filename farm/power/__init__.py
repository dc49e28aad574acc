"""Power measurement: one module per source, one registry, one session API for the job runner.

Sources sample on the device with device CLOCK_MONOTONIC timestamps (see farm.power.device) and
convert readings to W; farm.power.energy integrates per engine phase (J, J/token).
"""

from __future__ import annotations

from farm.power.energy import Phase, PhaseEnergy, PowerReport, decode_trace
from farm.power.session import PowerSession, open_session
from farm.registry import Registry

POWER_SOURCES = Registry("power source", "farm.power", {
    "none": "farm.power.none:NoPower",
    "android_battery": "farm.power.android_battery:AndroidBattery",
    "jetson_ina3221": "farm.power.jetson_ina3221:JetsonIna3221",
    "tegrastats": "farm.power.tegrastats:Tegrastats",
    "rpi5_pmic": "farm.power.rpi5_pmic:Rpi5Pmic",
    "rapl": "farm.power.rapl:Rapl",
    "nvml": "farm.power.nvml:Nvml",
    "monsoon": "farm.power.monsoon:Monsoon",
    "cpu_model": "farm.power.cpu_model:CpuModel",
})

__all__ = ["POWER_SOURCES", "Phase", "PhaseEnergy", "PowerReport", "PowerSession", "decode_trace",
           "open_session"]
