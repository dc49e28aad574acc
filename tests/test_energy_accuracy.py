"""Energy check: farm's ∫P dt against the exact integral of an analytic power model (within 2 %).

P(t) = a + b·sin(ωt) on CLOCK_MONOTONIC is written into a fuel gauge by the lab's PowerFeeder; the
real farm-sampler reads it on the "device" while the CPUs are kept busy, and the session integrates
the phases. Run on the local transport (a temp dir) and on a virtual phone over the real adb server.
"""

from __future__ import annotations

from pathlib import Path

from farm.devices import PowerConfig, host_profile, load_profile
from farm.lab.powerfeed import AnalyticModel, AndroidGauge, PowerFeeder
from farm.power import Phase, open_session
from farm.transports.local import LocalTransport
from tests.support import need

MODEL = AnalyticModel(a=2.5, b=1.2, omega=2 * 3.14159 * 0.6)
TOLERANCE = 0.02


def check(session, busy) -> None:
    """Sample through a busy window; compare prefill-like and decode-like phases with the model."""
    session.measure_idle(0.5)
    session.start()
    sampler = session.source.sampler
    t0 = sampler.now_ns()
    busy(2.5)
    t1 = sampler.now_ns()
    session.stop()
    mid = t0 + (t1 - t0) // 3
    report = session.report([Phase("prefill", 0, t0, mid, 64), Phase("decode", 0, mid, t1, 32)])
    for phase in report.phases:
        truth = MODEL.energy_j(phase.start_ns, phase.end_ns)
        err = phase.energy_j / truth - 1
        print(f"{session.source.transport.kind}: {phase.name} {phase.duration_s:.2f} s: farm {phase.energy_j:.4f} J"
              f" vs analytic {truth:.4f} J -> {err * 100:+.3f} % (rate {report.rate_hz_achieved:.1f} Hz, "
              f"unit {report.unit}, sign {report.sign})")
        assert abs(err) < TOLERANCE


def test_energy_local(tmp_path: Path) -> None:
    root = tmp_path / "dev"
    with PowerFeeder(root, MODEL, rate_hz=500, android=AndroidGauge(unit="uA", sign="negative-discharge")):
        profile = host_profile().model_copy(update={"power": PowerConfig(
            source="android_battery", rate_hz=50, options={"root": str(root)})})
        session = open_session(LocalTransport(), profile, str(tmp_path / "work"))
        check(session, lambda s: session.source.busy_load(s))


def test_energy_virtual_phone(tmp_path: Path) -> None:
    from farm.lab.lab import Lab, tools_missing

    missing = tools_missing()
    need(not missing, f"farm lab ({', '.join(missing)})")
    from farm.transports import open_transport

    with Lab(tmp_path / "lab", phones=1, boards=0, phone_profiles=("pixel-8",)) as lab:
        phone = lab.device("phone1")
        fs = phone.root / "fs"
        profile = load_profile("lab-pixel-8", [str(lab.profile_dir)])
        profile = profile.model_copy(update={"power": profile.power.model_copy(update={"rate_hz": 50})})
        with PowerFeeder(fs, MODEL, rate_hz=500, android=AndroidGauge(unit="uA", sign="negative-discharge")):
            opts = {k: v for k, v in phone.transport.items() if k != "kind"}
            transport = open_transport("adb", **opts)
            try:
                session = open_session(transport, profile, profile.workdir)
                check(session, lambda s: session.source.busy_load(s))
            finally:
                transport.close()


