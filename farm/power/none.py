"""The `none` power source: the device has no sensor; reports carry no energy, and say so."""

from __future__ import annotations

from farm.power.base import PowerSource
from farm.power.trace import Trace


class NoPower(PowerSource):
    name = "none"

    def prepare(self) -> None:
        self.warnings.append("no power source configured for this device: energy figures are empty")

    def start(self) -> None:
        pass

    def stop(self) -> Trace:
        return Trace.empty()
