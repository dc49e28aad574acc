"""Every shipped device profile validates and is internally consistent; lab profiles derive cleanly."""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.devices import load_profile
from farm.lab.lab import lab_profile
from farm.paths import REPO_ROOT

PROFILES = sorted(p.stem for p in (REPO_ROOT / "device_profiles").glob("*.yaml"))
SOURCES = {"android_battery", "jetson_ina3221", "tegrastats", "rpi5_pmic", "rapl", "nvml", "monsoon", "none"}


def test_expected_profiles_exist():
    assert {"pixel-8", "galaxy-s24", "jetson-orin-nano", "jetson-agx-orin", "raspberry-pi-5",
            "x86-host"} <= set(PROFILES)


@pytest.mark.parametrize("name", PROFILES)
def test_profile_is_consistent(name):
    p = load_profile(name)
    assert p.name == name
    assert p.power.source in SOURCES
    assert p.source, "cite where the figures come from"
    all_cores = (1 << p.cpus.count) - 1
    masks = [int(m, 16) for m in (p.cpus.big, p.cpus.mid, p.cpus.little) if m]
    for m in masks:
        assert m and m & ~all_cores == 0, f"mask {m:#x} outside {p.cpus.count} cores"
    for a in masks:
        assert sum(1 for b in masks if a & b) == 1, "core clusters overlap"
    for f in [*p.thermal.zones, *p.thermal.cpufreq, *p.thermal.cpufreq_max]:
        assert f.startswith("/sys/"), f
    assert (p.kind == "phone") == (p.power.source == "android_battery")
    assert (p.engine_target == "aarch64-linux-static") == (p.abi in ("aarch64", "arm64-v8a"))
    assert Path(p.workdir).is_absolute()


@pytest.mark.parametrize("name", PROFILES)
def test_cluster_masks_agree_with_the_cores_speeds(name):
    """The documented masks say what the `cpus` axis resolves from cpufreq max per core."""
    from farm.affinity import resolve

    p = load_profile(name)
    if p.cpus.little:
        assert resolve(p, "little").mask == int(p.cpus.little, 16)
        assert resolve(p, "prime").mask == int(p.cpus.big, 16)
        assert resolve(p, "big").mask == (1 << p.cpus.count) - 1 - int(p.cpus.little, 16)
    else:
        assert resolve(p, "big").mask == (1 << p.cpus.count) - 1
        with pytest.raises(ValueError, match="no little cores"):
            resolve(p, "little")


def test_lab_phone_is_big_little_on_two_host_cores():
    lab = lab_profile(load_profile("pixel-8"), 2)
    assert lab.cpus.max_khz == [1704000, 2914000]  # cpu0 an A510, cpu1 the X3
    assert lab.cpus.little == "0x1" and lab.cpus.big == "0x2"


@pytest.mark.parametrize("name", PROFILES)
@pytest.mark.parametrize("cpus", [1, 2, 8])
def test_lab_profile_derives(name, cpus):
    lab = lab_profile(load_profile(name), cpus)
    assert lab.name == f"lab-{name}" and lab.cpus.count == cpus
    assert lab.power == load_profile(name).power
    assert len(lab.thermal.cpufreq) == cpus
