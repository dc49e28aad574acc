"""Power parsers against the real tool outputs in tests/data/samples (copied verbatim)."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from farm.power.android_battery import charger_online, detect_sign
from farm.power.jetson_ina3221 import rail_watts, rails_from_listing
from farm.power.monsoon import monsoon_trace, parse_monsoon_csv
from farm.power.rapl import rapl_power
from farm.power.rpi5_pmic import parse_pmic, rail_power
from farm.power.tegrastats import parse_rails, parse_temps
from farm.power.trace import (
    SamplerOutput,
    counter_rates,
    current_unit,
    parse_labels,
    parse_sampler_output,
    voltage_unit,
)

SAMPLES = Path(__file__).parent / "data" / "samples"


def sample(name: str) -> str:
    return (SAMPLES / name).read_text()


@pytest.mark.parametrize(("name", "level", "voltage", "charging"), [
    ("dumpsys_battery_emulator.txt", "89", "0", True),
    ("dumpsys_battery_pixel_c.txt", "19", "3764", True),
    ("dumpsys_battery_android14.txt", "80", "4200", True),
    ("dumpsys_battery_samsung.txt", "100", "4312", True),  # USB powered
    ("dumpsys_battery_hyperos.txt", "80", "4228", True),  # first voltage, not the broadcast one
])
def test_dumpsys_battery_variants(name: str, level: str, voltage: str, charging: bool) -> None:
    info = parse_labels(sample(name))
    assert info["level"] == level
    assert info["voltage"] == voltage
    assert info["scale"] == "100"
    assert charger_online(info) is charging


def test_dumpsys_order_independent_and_unplugged() -> None:
    lines = sample("dumpsys_battery_android14.txt").splitlines()
    body = [ln.replace("AC powered: true", "AC powered: false") for ln in lines[1:]]
    random.Random(4).shuffle(body)
    info = parse_labels("\n".join([lines[0], *body]))
    assert info["level"] == "80" and info["dock powered"] == "false"
    assert charger_online(info) is False
    assert charger_online(parse_labels("Current Battery Service state:\n  level: 50\n")) is None


def test_samsung_vendor_lines_are_harmless() -> None:
    info = parse_labels(sample("dumpsys_battery_samsung.txt"))
    assert info["usb powered"] == "true" and info["current now"] == "0"
    assert info["charge counter"] == "2967000"  # both spellings collapse onto one lower-cased key


def test_tegrastats_orin_jp6() -> None:
    line = sample("tegrastats_orin_nano_jp6.txt").strip()
    rails = parse_rails(line)
    assert rails == {"VDD_IN": (4556, 4556), "VDD_CPU_GPU_CV": (483, 483), "VDD_SOC": (1451, 1451)}
    assert parse_temps(line)["tj"] == pytest.approx(48.625)


def test_tegrastats_tx2_instant_not_average() -> None:
    first, second = sample("tegrastats_tx2.txt").strip().splitlines()
    assert parse_rails(first)["VDD_IN"] == (1931, 1931)
    assert parse_rails(second)["VDD_IN"] == (1776, 1853)  # 1776 mW now, 1853 mW running average
    assert "RAM" not in parse_rails(second) and "SWAP" not in parse_rails(second)
    assert parse_temps(second)["Tdiode"] == pytest.approx(37.25)


def test_tegrastats_tx2_other_rails() -> None:
    rails = parse_rails(sample("tegrastats_tx2_other_rails.txt"))
    assert rails["VDD_IN"] == (3140, 3208)
    assert set(rails) == {"VDD_SYS_GPU", "VDD_SYS_SOC", "VDD_4V0_WIFI", "VDD_IN", "VDD_SYS_CPU", "VDD_SYS_DDR"}


def test_tegrastats_tx1_has_no_power() -> None:
    assert parse_rails(sample("tegrastats_tx1.txt")) == {}


def test_rpi5_pmic_pairs_by_name() -> None:
    amps, volts = parse_pmic(sample("rpi5_pmic_read_adc.txt").splitlines())
    assert amps["0V8_AON"] == pytest.approx(0.00305250)  # current(16)
    assert volts["0V8_AON"] == pytest.approx(0.80029220)  # volt(19)
    assert "EXT5V" in volts and "EXT5V" not in amps and "BATT" not in amps
    power = rail_power(amps, volts)
    assert "EXT5V" not in power and len(power) == 12
    assert power["VDD_CORE"] == pytest.approx(6.22421 * 0.861733)
    assert sum(power.values()) == pytest.approx(7.2398188, rel=1e-6)
    shuffled = sample("rpi5_pmic_read_adc.txt").splitlines()
    random.Random(1).shuffle(shuffled)
    assert sum(rail_power(*parse_pmic(shuffled)).values()) == pytest.approx(sum(power.values()))


def test_rapl_wraparound() -> None:
    wrap = 1_000_000.0  # µJ
    t = np.arange(0, 50) * 20_000_000  # 50 Hz
    energy = (np.arange(0, 50) * 60_000.0 + 900_000.0) % wrap  # 3 W, wraps several times
    out = SamplerOutput(mode="files", rows=[(int(ti), [str(int(e))]) for ti, e in zip(t, energy, strict=True)])
    trace = rapl_power(out, [wrap])
    assert len(trace) == 49
    assert np.allclose(trace.w, 3.0)
    mid, rate = counter_rates(np.array([0, 10**9]), np.array([wrap - 10, 90.0]), wrap)
    assert rate[0] == pytest.approx(100.0) and mid[0] == 500_000_000


def test_units_on_real_looking_sequences() -> None:
    assert current_unit(np.array([-326171, -330050, -318002])) == "uA"  # Mi 8 uevent
    assert current_unit(np.array([-34179, -35002])) == "uA"  # Pixel 3a on USB
    assert current_unit(np.array([412, 388, 1330])) == "mA"  # OnePlus-style mA
    assert voltage_unit(np.array([3888173, 3887000])) == "uV"
    assert voltage_unit(np.array([4228, 4230])) == "mV"


def test_sign_detection() -> None:
    rng = np.random.default_rng(0)
    kernel_idle, kernel_load = -300_000 + rng.normal(0, 5000, 40), -900_000 + rng.normal(0, 5000, 40)
    assert detect_sign(kernel_idle, kernel_load, False)[0] == "negative-discharge"
    vendor_idle, vendor_load = 250_000 + rng.normal(0, 5000, 40), 800_000 + rng.normal(0, 5000, 40)
    assert detect_sign(vendor_idle, vendor_load, False)[0] == "positive-discharge"
    # Mi 8: negative while charging; load eats into the charge current, pushing it towards positive
    mi8_idle, mi8_load = -326_171 + rng.normal(0, 3000, 40), -120_000 + rng.normal(0, 3000, 40)
    assert detect_sign(mi8_idle, mi8_load, True)[0] == "positive-discharge"
    # a gauge that barely moves: unplugged, so the idle sign is the discharge sign
    flat = 400 + rng.normal(0, 2, 40)
    assert detect_sign(flat, flat + 1, False)[0] == "positive-discharge"
    assert detect_sign(flat, flat + 1, None)[0] is None


def test_ina3221_listing_and_watts() -> None:
    listing = ("/sys/class/hwmon/hwmon1/in1_label\tVDD_IN\n/sys/class/hwmon/hwmon1/in2_label\tVDD_CPU_GPU_CV\n"
               "/sys/class/hwmon/hwmon1/in7_label\tsum of shunt voltages\n")
    rails = rails_from_listing(listing)
    assert rails["VDD_IN"] == ("/sys/class/hwmon/hwmon1/in1_input", "/sys/class/hwmon/hwmon1/curr1_input")
    assert len(rails) == 2
    out = SamplerOutput(rows=[(1, ["5000", "912", "5000", "300"]), (2, ["5000", "NA", "5000", "310"])])
    _t, w = rail_watts(out, 2)
    assert w[0, 0] == pytest.approx(4.56) and np.isnan(w[1, 0]) and w[1, 1] == pytest.approx(1.55)


def test_sampler_output_parsing() -> None:
    text = ("# farm-sampler 1 mode=files rate_hz=50 clock=monotonic\n100\t-300000\t3850000\n"
            "120\t-310000\t3850000\n# end samples=2 missed=1\n")
    out = parse_sampler_output(text)
    assert out.mode == "files" and out.rate_hz == 50 and out.ended and out.missed == 1
    assert out.rows == [(100, ["-300000", "3850000"]), (120, ["-310000", "3850000"])]
    truncated = parse_sampler_output(text.split("# end")[0] + "140\t-3")
    assert len(truncated.rows) == 2 and not truncated.ended


def test_monsoon_csv() -> None:
    csv = "Time(ms),Main(mA),Main Voltage(V)\n" + "".join(f"{i * 0.2},{500.0},{4.0}\n" for i in range(5001))
    elapsed, watts = parse_monsoon_csv(csv)
    assert elapsed[-1] == pytest.approx(1.0) and np.allclose(watts, 2.0)
    trace = monsoon_trace(elapsed, watts, start_host_ns=10**9, offset_ns=5)
    assert trace.t_ns[0] == 10**9 + 5 and trace.rate_hz() == pytest.approx(5000, rel=1e-3)
