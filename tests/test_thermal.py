"""Thermal gate on zone files we heat and cool, and the throttle verdict from cpufreq caps."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from farm.agent.thermal import ThermalState, read_state, throttled, wait_until_cool
from farm.devices import ThermalConfig, host_profile
from farm.errors import InfraError
from farm.transports.local import LocalTransport


def profile_with(tmp_path: Path, **thermal):
    zone = tmp_path / "thermal_zone0" / "temp"
    zone.parent.mkdir(parents=True, exist_ok=True)
    cpu = tmp_path / "cpu0" / "cpufreq"
    cpu.mkdir(parents=True, exist_ok=True)
    for name, value in (("scaling_cur_freq", 1800000), ("cpuinfo_max_freq", 2400000),
                        ("scaling_max_freq", 2400000)):
        (cpu / name).write_text(f"{value}\n")
    cfg = ThermalConfig(zones=[str(zone), str(tmp_path / "missing" / "temp")], cpufreq=[str(cpu / "scaling_cur_freq")],
                        cpufreq_max=[str(cpu / "cpuinfo_max_freq")], **thermal)
    return host_profile().model_copy(update={"thermal": cfg}), zone, cpu


def test_read_state(tmp_path: Path) -> None:
    profile, zone, cpu = profile_with(tmp_path)
    zone.write_text("41250\n")
    state = read_state(LocalTransport(), profile)
    assert state.temps_c == {str(zone): 41.25}  # the missing zone is left out, not guessed
    assert state.freqs_khz == {str(cpu / "scaling_cur_freq"): 1800000}
    assert state.cap_khz[str(cpu / "scaling_cur_freq")] == 2400000 and state.t_mono_ns


def test_wait_until_cool_waits_for_cooling_and_flatness(tmp_path: Path) -> None:
    # window 1 s, timeout 20 s: the simulated cooling curve runs in seconds, not the shipped 5 s / 600 s
    profile, zone, _ = profile_with(tmp_path, start_temp_c=45.0, stable_delta_c=0.5, stable_window_s=1.0,
                                    timeout_s=20)
    zone.write_text("60000\n")
    halt = threading.Event()

    def cool() -> None:  # Newton cooling towards 38 °C
        temp = 60.0
        while not halt.is_set():
            temp = 38.0 + (temp - 38.0) * 0.7
            zone.write_text(f"{int(temp * 1000)}\n")
            time.sleep(0.1)

    cooler = threading.Thread(target=cool, daemon=True)
    waits: list[str] = []
    start = time.monotonic()
    cooler.start()
    try:
        # poll 0.1 s, window 1 s: the cooling curve is simulated in 0.1 s steps; the shipped poll and
        # window are tested in test_gate_passes_at_the_shipped_poll_and_window_when_steady
        state = wait_until_cool(LocalTransport(), profile, on_wait=lambda s, why: waits.append(why), poll_s=0.1)
    finally:
        halt.set()
    assert state.hottest_c is not None and state.hottest_c < 45.0
    assert time.monotonic() - start >= 1.0 and waits and "≥ start" in waits[0]


def test_wait_until_cool_times_out_with_a_clear_message(tmp_path: Path) -> None:
    # timeout 1 s: the shipped 600 s timeout cannot be waited out in a test
    profile, zone, _ = profile_with(tmp_path, start_temp_c=45.0, stable_window_s=0.5, timeout_s=1.0)
    zone.write_text("52500\n")
    with pytest.raises(InfraError, match=r"host-auto.*52\.5 °C.*threshold 45\.0 °C"):
        wait_until_cool(LocalTransport(), profile, poll_s=0.1)  # 1 s timeout: the shipped 900 s cannot be waited out


def test_no_zones_no_gating() -> None:
    profile = host_profile().model_copy(update={"thermal": ThermalConfig()})
    state = wait_until_cool(LocalTransport(), profile)
    assert state.temps_c == {} and state.freqs_khz == {}
    assert throttled(state, state, profile) == (False, "")


def test_throttled(tmp_path: Path) -> None:
    profile, zone, cpu = profile_with(tmp_path, throttle_temp_c=80.0)
    zone.write_text("50000\n")
    start = read_state(LocalTransport(), profile)
    assert throttled(start, start, profile) == (False, "")
    (cpu / "scaling_max_freq").write_text("1200000\n")  # a cooling device capped the policy
    zone.write_text("83000\n")
    hit, why = throttled(start, read_state(LocalTransport(), profile), profile)
    assert hit and "capped at 1200000 kHz" in why and "83.0 °C" in why
    idle = ThermalState({}, {"c": 300000}, None, {"c": 2400000}, {"c": 2400000})
    assert throttled(idle, idle, profile)[0] is False  # low current frequency alone is idleness
    pinned = ThermalState({}, {"c": 1200000}, None, {"c": 2400000}, {"c": 1200000})  # a power mode's cap
    assert throttled(pinned, pinned, profile, mode_caps=True)[0] is False
    lower = ThermalState({}, {"c": 900000}, None, {"c": 2400000}, {"c": 900000})
    assert throttled(pinned, lower, profile, mode_caps=True)[0] is True  # the run lowered it further


def shipped_with_zone(tmp_path: Path, name: str = "pixel-8"):
    """A shipped profile, unchanged except that its zones are files we write (threshold, window,
    timeout and poll stay the shipped ones)."""
    from farm.devices import load_profile

    base = load_profile(name)
    zones = []
    for i in range(len(base.thermal.zones)):
        zone = tmp_path / f"thermal_zone{i}" / "temp"
        zone.parent.mkdir(parents=True, exist_ok=True)
        zones.append(zone)
    thermal = base.thermal.model_copy(update={"zones": [str(z) for z in zones], "cpufreq": [], "cpufreq_max": []})
    return base.model_copy(update={"thermal": thermal}), zones


def gate_in_thread(profile) -> tuple[threading.Thread, dict, list[str]]:
    """wait_until_cool at its default poll, in a thread (a gate that never passes must not hang the test)."""
    out: dict = {}
    waits: list[str] = []

    def run() -> None:
        out["state"] = wait_until_cool(LocalTransport(), profile, on_wait=lambda s, why: waits.append(why))
        out["t"] = time.monotonic()

    thread = threading.Thread(target=run, daemon=True)
    out["t0"] = time.monotonic()
    thread.start()
    return thread, out, waits


def test_gate_passes_at_the_shipped_poll_and_window_when_steady(tmp_path: Path) -> None:
    """pixel-8's gate (40 °C, 1 °C over 10 s, poll window/5 = 2 s): steady at 36 °C passes after one
    window. Before the fix it kept only samples inside the window and never covered 95 % of it."""
    profile, zones = shipped_with_zone(tmp_path)
    for i, zone in enumerate(zones):
        zone.write_text(f"{34000 + 1000 * i}\n")
    window = profile.thermal.stable_window_s
    poll = window / 5  # the default poll wait_until_cool derives
    thread, out, _ = gate_in_thread(profile)
    thread.join(timeout=window + 3 * poll)
    assert "state" in out, f"the gate did not pass within {window + 3 * poll:.0f} s on a steady, cool device"
    took = out["t"] - out["t0"]
    assert window <= took <= window + 2 * poll + 1, took
    assert out["state"].hottest_c == 36.0


def test_gate_waits_while_hot_then_passes_a_window_after_cooling(tmp_path: Path) -> None:
    profile, zones = shipped_with_zone(tmp_path, "raspberry-pi-5")  # 50 °C, one zone
    zones[0].write_text("55000\n")
    window = profile.thermal.stable_window_s
    poll = window / 5
    thread, out, waits = gate_in_thread(profile)
    time.sleep(2 * poll + 0.5)
    assert "state" not in out and waits and all("≥ start 50.0 °C" in w for w in waits)
    cooled = time.monotonic()
    zones[0].write_text("45000\n")
    thread.join(timeout=window + 3 * poll)
    assert "state" in out, "the gate did not pass a window after the device cooled"
    assert window <= out["t"] - cooled <= window + 2 * poll + 1
    assert any(w.startswith("settling") for w in waits)  # cool but not yet flat for a window


def test_zones_that_cannot_be_read_do_not_open_the_gate(tmp_path: Path) -> None:
    """A profile that names zones, none readable (a sensor failing, a file being rewritten): the gate
    used to take that for 'no zones' and let the job start hot. timeout_s 1 s and poll 0.1 s: the
    shipped 900 s timeout cannot be waited out in a test."""
    profile, zone, _ = profile_with(tmp_path, start_temp_c=45.0, stable_window_s=0.5, timeout_s=1.0)
    assert not zone.exists()
    waits: list[str] = []
    with pytest.raises(InfraError, match=r"no thermal zone readable in 1 s"):
        wait_until_cool(LocalTransport(), profile, on_wait=lambda s, why: waits.append(why), poll_s=0.1)
    assert waits and set(waits) == {"no thermal zone readable"}
