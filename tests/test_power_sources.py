"""Contract: every registered power source, end to end through a session on the local transport.

The device is a sandbox kept up to date by the lab's PowerFeeder (analytic model), so each source
reads the real file layouts / tool formats with the real on-device sampler, and its energy for a
window is compared with the model's exact integral.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from farm.devices import PowerConfig, host_profile
from farm.errors import InfraError
from farm.lab.powerfeed import AnalyticModel, AndroidGauge, Ina3221, PowerFeeder, RaplCounter
from farm.power import POWER_SOURCES, Phase, PowerReport, decode_trace, open_session
from farm.transports.local import LocalTransport

MODEL = AnalyticModel(a=3.0, b=1.0)


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("device")
    feeder = PowerFeeder(root, MODEL, rate_hz=400,
                         android=AndroidGauge(unit="mA", sign="positive-discharge", voltage_v=4.1),
                         ina3221=Ina3221(), rapl=RaplCounter(max_range_uj=2_000_000), tools="bin")
    with feeder:
        yield root


def options(name: str, root: Path) -> dict:
    return {
        "android_battery": {"root": str(root), "chargers": ["/sys/class/power_supply/usb/online"]},
        "jetson_ina3221": {"root": str(root)},
        "tegrastats": {"command": str(root / "bin" / "tegrastats")},
        "rpi5_pmic": {"command": str(root / "bin" / "vcgencmd")},
        "rapl": {"root": str(root), "domains": ["/sys/class/powercap/intel-rapl:0/energy_uj"]},
        "nvml": {"module": "tests.fake_nvml"},
    }.get(name, {})


def run_session(name: str, root: Path, tmp_path: Path, rate: float = 50.0) -> tuple[PowerReport, float]:
    profile = host_profile().model_copy(update={"power": PowerConfig(source=name, rate_hz=rate,
                                                                     options=options(name, root))})
    session = open_session(LocalTransport(), profile, str(tmp_path / "work"))
    session.measure_idle(0.5)
    session.start()
    time.sleep(0.2)
    t0 = time.monotonic_ns()  # the local transport's device clock is this process's CLOCK_MONOTONIC
    time.sleep(1.5)
    t1 = time.monotonic_ns()
    time.sleep(0.2)
    session.stop()
    report = session.report([Phase("decode", 0, t0, t1, 30)])
    truth = (model_for(name)).energy_j(t0, t1)
    return PowerReport.model_validate_json(report.model_dump_json()), truth


def model_for(name: str) -> AnalyticModel:
    if name == "nvml":
        from tests import fake_nvml
        return fake_nvml.MODEL
    return MODEL


MEASURED = ["android_battery", "jetson_ina3221", "tegrastats", "rpi5_pmic", "rapl", "nvml"]


@pytest.mark.parametrize("name", MEASURED)
def test_measured_source(name: str, sandbox: Path, tmp_path: Path) -> None:
    report, truth = run_session(name, sandbox, tmp_path)
    phase = report.phases[0]
    print(f"{name}: {phase.energy_j:.4f} J vs analytic {truth:.4f} J "
          f"({(phase.energy_j / truth - 1) * 100:+.2f} %), rate {report.rate_hz_achieved:.1f} Hz, unit {report.unit}")
    assert not report.modelled
    assert report.rate_hz_achieved > 3
    assert phase.energy_j == pytest.approx(truth, rel=0.05)
    assert phase.avg_w == pytest.approx(truth / phase.duration_s, rel=0.05)
    assert report.idle_w is not None and phase.net_energy_j == pytest.approx(
        phase.energy_j - report.idle_w * phase.duration_s)
    assert phase.j_per_token == pytest.approx(phase.net_energy_j / 30)
    assert len(decode_trace(report.trace_zlib_b64)) >= 5


def test_android_units_and_sign_recorded(sandbox: Path, tmp_path: Path) -> None:
    report, _ = run_session("android_battery", sandbox, tmp_path)
    assert report.unit == "mA,mV" and report.sign == "positive-discharge"
    assert report.charging is False
    stored = (tmp_path / "work" / "power" / "android_battery.json").read_text()
    assert "positive-discharge" in stored


def test_cpu_model_is_labelled(sandbox: Path, tmp_path: Path) -> None:
    report, _ = run_session("cpu_model", sandbox, tmp_path)
    assert report.modelled and any("MODELLED" in w for w in report.warnings)
    assert report.phases[0].energy_j is not None and report.rate_hz_target == 20.0


def test_none_reports_empty(sandbox: Path, tmp_path: Path) -> None:
    report, _ = run_session("none", sandbox, tmp_path)
    assert report.phases[0].energy_j is None and report.warnings


def test_monsoon_without_meter_is_infra_error(sandbox: Path, tmp_path: Path) -> None:
    with pytest.raises(InfraError, match="monsoon"):
        run_session("monsoon", sandbox, tmp_path)


def test_tegrastats_tx1_refused(tmp_path: Path) -> None:
    tool = tmp_path / "tegrastats"
    line = (Path(__file__).parent / "data" / "samples" / "tegrastats_tx1.txt").read_text().strip()
    tool.write_text(f"#!/bin/sh\nwhile :; do echo '{line}'; sleep 0.1; done\n")
    tool.chmod(0o755)
    profile = host_profile().model_copy(update={"power": PowerConfig(source="tegrastats",
                                                                     options={"command": str(tool)})})
    with pytest.raises(InfraError, match="no power rails"):
        open_session(LocalTransport(), profile, str(tmp_path / "w")).start()


def test_charging_phone_marked_invalid(tmp_path: Path) -> None:
    with PowerFeeder(tmp_path / "dev", MODEL, android=AndroidGauge(charging=True)):
        report, _ = run_session("android_battery", tmp_path / "dev", tmp_path)
    assert report.charging is True
    assert report.phases[0].energy_j is None
    assert any("charger" in w for w in report.warnings)


def test_every_registered_source_is_covered() -> None:
    assert set(POWER_SOURCES.names()) == {*MEASURED, "cpu_model", "none", "monsoon"}
