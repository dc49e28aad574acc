"""The dashboard page in real headless Chromium (Debian `chromium`, driven over the DevTools
protocol): it loads, every chart draws data points, a filter redraws them, and a screenshot is kept."""

from __future__ import annotations

import os
import shutil
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from farm.web.server import serve_in_thread
from tests.support import need
from tests.web_support import SEED_DEVICES, Seeded, seeded, seeded_pg, seeded_sqlite  # noqa: F401

COUNTS = """Object.fromEntries([...document.querySelectorAll('section.panel')].map(s => [s.id.slice(6),
  {points: s.querySelectorAll('.pt').length, rows: s.querySelector('.body').dataset.rows,
   errors: s.querySelectorAll('.error').length,
   titles: [...s.querySelectorAll('.pt title')].map(t => t.textContent)}]))"""


def png_pixels(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, decompressed scanlines) of a PNG, checking its structure on the way."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, width, height = 8, b"", 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", chunk[:8])
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    return width, height, zlib.decompress(idat)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    need(shutil.which("chromium") is not None or Path("/usr/bin/chromium").exists(), "Debian chromium")
    try:
        import websocket  # noqa: F401
    except ImportError:
        need(False, "the websocket-client package")
    from tests.cdp import Browser

    b = Browser(tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


def test_page_renders_charts_and_a_filter_changes_them(browser, seeded: Seeded, tmp_path: Path) -> None:  # noqa: F811
    server, base = serve_in_thread(seeded.url)
    try:
        browser.goto(base + "/")
        browser.wait_for("document.body.dataset.state === 'ready'")
        before = browser.eval(COUNTS)
        charts = ["throughput", "phases", "energy", "memory", "ttft", "commit_series", "pareto"]
        for name in charts:
            assert before[name]["errors"] == 0 and before[name]["points"] > 0, (name, before[name])
        assert before["device_health"]["rows"] == str(len(SEED_DEVICES) + 1)
        assert browser.eval("document.querySelectorAll('#panel-commit_series line.marker').length") > 0
        devices = {t.split(" · ")[0] for t in before["throughput"]["titles"]}
        assert devices == set(SEED_DEVICES)

        generation = int(browser.eval("document.body.dataset.generation"))
        browser.eval(f"""(() => {{ const s = document.getElementById('f-device');
            for (const o of s.options) o.selected = o.value === {SEED_DEVICES[0]!r};
            s.dispatchEvent(new Event('change')); }})()""")
        browser.wait_for(f"document.body.dataset.state === 'ready' && "
                         f"Number(document.body.dataset.generation) > {generation}")
        after = browser.eval(COUNTS)
        for name in charts:
            assert 0 < after[name]["points"] < before[name]["points"], (name, before[name]["points"], after[name])
        assert {t.split(" · ")[0] for t in after["throughput"]["titles"]} == {SEED_DEVICES[0]}
        assert after["device_health"]["rows"] == "1"
        assert f"device={SEED_DEVICES[0]}" in browser.eval("location.search")  # a shareable link

        shot = Path(os.environ.get("FARM_TEST_ARTIFACTS", tmp_path)) / f"dashboard-{seeded.store.dialect}.png"
        shot.parent.mkdir(parents=True, exist_ok=True)
        width, height, pixels = png_pixels(browser.screenshot(shot))
        assert width >= 1000 and height >= 1000
        assert len(set(pixels)) > 50, "the screenshot is blank"
        assert pixels.count(pixels[1:4]) < len(pixels) / 3 * 0.9  # not one colour almost everywhere

        browser.goto(base + f"/?device={SEED_DEVICES[1]}")  # the link restores the filter
        browser.wait_for("document.body.dataset.state === 'ready'")
        again = browser.eval(COUNTS)
        assert {t.split(" · ")[0] for t in again["throughput"]["titles"]} == {SEED_DEVICES[1]}
    finally:
        server.shutdown()
        server.server_close()


def test_a_run_at_two_depths_shows_two_series_and_the_depth_filter_keeps_one(browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from tests.web_support import store_with_pairs

    url = f"sqlite:///{tmp_path / 'farm.db'}"
    store_with_pairs(url, "n_depth", 512, depth_in_test=True)
    server, base = serve_in_thread(url)
    try:
        browser.goto(base + "/")
        browser.wait_for("document.body.dataset.state === 'ready'")
        series = browser.eval(COUNTS)["commit_series"]
        names = {t.split(" · ")[1] for t in series["titles"]}
        assert names == {"smollm2-360m q4_0 pp512+tg128@d0", "smollm2-360m q4_0 pp512+tg128@d512"}, series
        depths = browser.eval("[...document.getElementById('f-depth').options].map(o => o.value)")
        assert depths == ["0", "512"]
        assert "cpus=" not in " ".join(series["titles"])  # cores and power mode do not vary: not named
        generation = int(browser.eval("document.body.dataset.generation"))
        browser.eval("""(() => { const s = document.getElementById('f-depth');
            for (const o of s.options) o.selected = o.value === '512'; s.dispatchEvent(new Event('change')); })()""")
        browser.wait_for(f"document.body.dataset.state === 'ready' && "
                         f"Number(document.body.dataset.generation) > {generation}")
        after = browser.eval(COUNTS)
        assert {t.split(" · ")[1] for t in after["commit_series"]["titles"]} == {"smollm2-360m q4_0 pp512+tg128@d512"}
        assert after["throughput"]["points"] == 1 and "depth=512" in browser.eval("location.search")
    finally:
        server.shutdown()
        server.server_close()
