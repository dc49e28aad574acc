"""NVIDIA ``tegrastats``: board power from its text lines, streamed and timestamped on the device.

Rails print as ``NAME <now>mW/<avg>mW`` (JetPack 5/6) or ``NAME <now>/<avg>`` in mW (JetPack 4 and
L4T 28). The first number is the instantaneous reading, the second a running AVERAGE since
tegrastats started, so only the first is used. The old TX1 format (``cpu [..]@freq``, ``EMC``,
``GR3D``) prints no rails at all: that board needs the ina3221 source. Temperatures (``name@41.5C``)
are kept as the run's thermal story in the details.
"""

from __future__ import annotations

import re
import shlex

from farm.errors import InfraError
from farm.power.base import CommandSource
from farm.power.trace import total_rails

_RAIL = re.compile(r"(?<!\S)([A-Z][A-Z0-9_]*) (\d+)(?:mW)?/(\d+)(?:mW)?(?=\s|$)")
_TEMP = re.compile(r"(?<!\S)(\w+)@(-?\d+(?:\.\d+)?)C(?=\s|$)")


def parse_rails(line: str) -> dict[str, tuple[float, float]]:
    """{rail: (instant mW, average mW)} from one tegrastats line."""
    return {m.group(1): (float(m.group(2)), float(m.group(3))) for m in _RAIL.finditer(line)}


def parse_temps(line: str) -> dict[str, float]:
    """{sensor: °C} from one tegrastats line (PMIC@100C is a placeholder on TX2 and kept as printed)."""
    return {m.group(1): float(m.group(2)) for m in _TEMP.finditer(line)}


class Tegrastats(CommandSource):
    class Options(CommandSource.Options):
        command: str = "tegrastats"
        rail: str | None = None
        rails: list[str] | None = None  # a module without a board-input rail: the sum of these

    name = "tegrastats"
    mode = "s"

    def command(self) -> list[str]:
        interval_ms = max(1, round(1000.0 / self.rate_target))
        return [self.options.get("command", "tegrastats"), "--interval", str(interval_ms)]

    def prepare(self) -> None:
        tool = self.options.get("command", "tegrastats")
        probe = self.transport.shell(f"timeout 5 {shlex.quote(tool)} --interval 100 | head -n 1", timeout=15)
        first = probe.stdout.strip()
        if not first:
            raise InfraError(f"{tool} printed nothing on the device (is this a Jetson? power source tegrastats)")
        rails = parse_rails(first)
        if not rails:
            raise InfraError(f"{tool} prints no power rails on this board (old L4T format: {first[:60]}...); "
                             "use the jetson_ina3221 source")
        self.total = total_rails(sorted(rails), self.options.get("rail"), self.options.get("rails"))
        if self.total is None:
            raise InfraError(f"tegrastats shows no board-input rail (rails: {', '.join(sorted(rails))}); "
                             "set power option 'rail' or 'rails'")
        self.unit = "mW"
        self.temps: dict[str, list[float]] = {}
        self.details.update(rail="+".join(self.total), rails=sorted(rails))

    def parse_group(self, lines: list[str]) -> float | None:
        line = " ".join(lines)
        for sensor, c in parse_temps(line).items():
            seen = self.temps.setdefault(sensor, [c, c, c])
            seen[1], seen[2] = max(seen[1], c), c
        self.details["temps_c_first_max_last"] = self.temps
        rails = parse_rails(line)
        if not all(r in rails for r in self.total):
            return None
        return sum(rails[r][0] for r in self.total) / 1000.0
