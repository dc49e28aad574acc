"""The lab's power feed without a lab: the load model follows real CPU use, and a second feeder on a
sandbox takes it over cleanly (the lab feeds every device; a test may put its own model on one)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from farm.lab.powerfeed import AnalyticModel, AndroidGauge, LoadModel, PowerFeeder

SPIN = "import time\nend = time.monotonic() + {s}\nwhile time.monotonic() < end: pass\nprint(time.process_time())\n"


def gauge_watts(root: Path) -> float:
    """Power the fuel gauge shows (µA negative-discharge, µV)."""
    supply = root / "sys/class/power_supply/battery"
    return -int((supply / "current_now").read_text()) * int((supply / "voltage_now").read_text()) / 1e12


def test_load_model_follows_cpu_use_of_its_processes() -> None:
    """A shell (the selected pid) sleeps, starts a child that spins for 1 s and prints the CPU time it
    used, sleeps again. The model's cores integrated over time must add up to that CPU time: the
    child counts although only its parent was named, and its last moments count although it ended."""
    shell = subprocess.Popen(["sh", "-c", f"sleep 0.6; {sys.executable} -c '{SPIN.format(s=1.0)}'; sleep 0.6"],
                             stdout=subprocess.PIPE, text=True)
    model = LoadModel(idle_w=1.0, k_w_per_core=2.0, pids={shell.pid}, window_s=0.15)
    try:
        t = time.monotonic()
        model.watts(t)
        readings: list[tuple[float, float, float]] = []  # (time, W, core-seconds of the window)
        while shell.poll() is None:
            time.sleep(0.2)
            now = time.monotonic()
            watts = model.watts(now)
            readings.append((now, watts, model.cores * (now - t)))
            t = now
        child_cpu = float(shell.stdout.read().split()[-1])
    finally:
        shell.kill()
        shell.wait()
    measured = sum(r[2] for r in readings)
    print(f"\nload model: {[round(r[1], 2) for r in readings]} W; integral {measured:.3f} core-s, "
          f"child used {child_cpu:.3f} s of CPU")
    assert readings[0][1] == pytest.approx(1.0, abs=0.25)  # the shell sleeping
    assert all(w >= 1.0 for _, w, _ in readings)
    assert child_cpu > 0.02 and max(w for _, w, _ in readings) > 1.0  # it ran, and showed
    assert measured == pytest.approx(child_cpu, rel=0.15, abs=0.03)


def test_second_feeder_takes_over_and_hands_back(tmp_path: Path) -> None:
    gauge = AndroidGauge(unit="uA", sign="negative-discharge")
    with PowerFeeder(tmp_path, AnalyticModel(a=1.0, b=0.0), rate_hz=500, android=gauge) as base:
        time.sleep(0.05)
        assert gauge_watts(tmp_path) == pytest.approx(1.0, rel=1e-3)
        for _ in range(20):  # quick takeovers while the first feeder writes at 500 Hz
            with PowerFeeder(tmp_path, AnalyticModel(a=3.0, b=0.0), rate_hz=500, android=gauge):
                time.sleep(0.02)
                assert gauge_watts(tmp_path) == pytest.approx(3.0, rel=1e-3)
        time.sleep(0.05)
        assert gauge_watts(tmp_path) == pytest.approx(1.0, rel=1e-3)
        assert base.is_alive()
    assert not list(tmp_path.rglob("*.tmp"))
