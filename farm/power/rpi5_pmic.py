"""Raspberry Pi 5 PMIC rails: ``vcgencmd pmic_read_adc``, run on the board once per period.

Each rail prints a current line ``NAME_A current(i)=xA`` and a voltage line ``NAME_V volt(j)=yV``.
Rails are paired by NAME, never by the index in brackets (0V8_AON_A is current(16), 0V8_AON_V is
volt(19)). EXT5V_V (5 V input) and BATT_V (RTC cell) have no current and are not power. Σ V·I over
the rails is board-rail power, not wall power (the PMIC does not see the 5 V input's losses).
"""

from __future__ import annotations

import re

from pydantic import Field

from farm.power.base import CommandSource

_LINE = re.compile(r"^\s*([0-9A-Z_]+)_(A|V)\s+(current|volt)\((\d+)\)=([0-9.]+)(A|V)\s*$")
MAX_RATE_HZ = 20.0  # each reading forks vcgencmd and waits for the firmware mailbox


def parse_pmic(lines: list[str]) -> tuple[dict[str, float], dict[str, float]]:
    """({rail: A}, {rail: V}) keyed by the rail name without the _A/_V suffix."""
    amps: dict[str, float] = {}
    volts: dict[str, float] = {}
    for line in lines:
        m = _LINE.match(line)
        if m:
            (amps if m.group(2) == "A" else volts)[m.group(1)] = float(m.group(5))
    return amps, volts


def rail_power(amps: dict[str, float], volts: dict[str, float], only: list[str] | None = None) -> dict[str, float]:
    """{rail: W} for every rail with both a current and a voltage."""
    names = sorted(set(amps) & set(volts))
    return {n: amps[n] * volts[n] for n in names if only is None or n in only}


class Rpi5Pmic(CommandSource):
    class Options(CommandSource.Options):
        max_rate_hz: float = Field(default=MAX_RATE_HZ, gt=0)
        rails: list[str] | None = None
        command: str = "vcgencmd"

    name = "rpi5_pmic"
    mode = "x"

    def prepare(self) -> None:
        self.rate_target = min(self.rate_target, float(self.options.get("max_rate_hz", MAX_RATE_HZ)))
        self.only = self.options.get("rails")
        self.unit = "A,V"
        self.details.update(pairing="by rail name", rails=self.only or "all paired")

    def command(self) -> list[str]:
        return [self.options.get("command", "vcgencmd"), "pmic_read_adc"]

    def parse_group(self, lines: list[str]) -> float | None:
        amps, volts = parse_pmic(lines)
        if "EXT5V" in volts:
            self.details["ext5v_v_last"] = volts["EXT5V"]
        power = rail_power(amps, volts, self.only)
        return sum(power.values()) if power else None
