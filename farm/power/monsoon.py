"""Monsoon HVPM power monitor (external meter in series with the battery; optional ``monsoon`` package).

The meter streams on the agent host; its samples carry the meter's own elapsed time, which is
anchored to the host's CLOCK_MONOTONIC when sampling starts and moved onto the device clock with
the offset measured by ``device_clock_offset``. Samples are the main channel's current (mA) and voltage (V); the
sample engine's CSV (``Time(ms),Main(mA),Main Voltage(V)``) is what gets parsed.
"""

from __future__ import annotations

import csv
import io
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from pydantic import Field

from farm.errors import InfraError
from farm.power.base import PowerSource, device_clock_offset
from farm.power.trace import Trace


def parse_monsoon_csv(text: str) -> tuple[np.ndarray, np.ndarray]:
    """(elapsed s, W) from the sample engine's CSV, columns found by header name."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        return np.zeros(0), np.zeros(0)
    head = [h.strip().lower() for h in rows[0]]

    def col(*names: str) -> int:
        for n in names:
            if n in head:
                return head.index(n)
        raise InfraError(f"Monsoon CSV lacks a {names[0]} column (header: {rows[0]})")

    it, ii, iv = col("time(ms)", "time(s)"), col("main(ma)"), col("main voltage(v)")
    scale_t = 1e-3 if head[it] == "time(ms)" else 1.0
    data = np.array([[float(r[it]), float(r[ii]), float(r[iv])] for r in rows[1:] if len(r) > max(it, ii, iv)])
    if not len(data):
        return np.zeros(0), np.zeros(0)
    return data[:, 0] * scale_t, data[:, 1] * 1e-3 * data[:, 2]


def monsoon_trace(elapsed_s: np.ndarray, watts: np.ndarray, start_host_ns: int, offset_ns: int) -> Trace:
    """Meter samples onto the device clock."""
    return Trace(start_host_ns + offset_ns + np.round(elapsed_s * 1e9).astype(np.int64), watts)


class Monsoon(PowerSource):
    class Options(PowerSource.Options):
        serial: int | str | None = None
        vout: float = Field(default=4.2, gt=0, le=13.5)

    name = "monsoon"

    def prepare(self) -> None:
        try:
            from Monsoon import HVPM, sampleEngine  # type: ignore[import-not-found]
        except ImportError as exc:
            raise InfraError("power source monsoon needs the 'monsoon' package and a connected HVPM") from exc
        self.mon = HVPM.Monsoon()
        self.mon.setup_usb(self.options.get("serial"))
        self.mon.setVout(float(self.options.get("vout", 4.2)))
        self.engine = sampleEngine.SampleEngine(self.mon)
        self.engine.ConsoleOutput(False)
        self.unit = "mA,V"
        self.rate_target = 5000.0  # the HVPM samples at 5 kHz whatever we ask
        self.sample_count = sampleEngine.triggers.SAMPLECOUNT_INFINITE

    def start(self) -> None:
        self._offset = device_clock_offset(self)
        self._csv = Path(tempfile.mkdtemp(prefix="farm-monsoon-")) / "samples.csv"
        self.engine.enableCSVOutput(str(self._csv))
        self._t0 = time.monotonic_ns()
        self._thread = threading.Thread(target=self.engine.startSampling, args=(self.sample_count,), daemon=True)
        self._thread.start()

    def stop(self) -> Trace:
        self.engine.stopSampling()
        self._thread.join(timeout=10)
        elapsed, watts = parse_monsoon_csv(self._csv.read_text() if self._csv.exists() else "")
        trace = monsoon_trace(elapsed, watts, self._t0, self._offset)
        self.rate_achieved = trace.rate_hz()
        return trace
