"""The dashboard read without the table beside it, in real headless Chromium: a run of a few minutes
gets time labels that differ, and every point of the Pareto chart says what it is (or why not)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from farm.web.server import serve_in_thread
from tests.support import need

TICKS = "[...document.querySelectorAll('#panel-commit_series svg text.tick')].map(t => t.textContent)"
PARETO = """(() => { const s = document.querySelector('#panel-pareto svg');
  const hidden = [...s.querySelectorAll('text')].map(t => t.textContent).find(t => t.includes('hidden')) || '';
  return {points: s.querySelectorAll('circle.pt').length,
          labels: [...s.querySelectorAll('text.pt-label')].map(t => t.textContent),
          boxes: [...s.querySelectorAll('text.pt-label')].map(t => {
            const b = t.getBBox(); return [b.x, b.y, b.x + b.width, b.y + b.height]; }),
          hidden: parseInt(hidden) || 0}; })()"""


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    need(shutil.which("chromium") is not None or Path("/usr/bin/chromium").exists(), "Debian chromium")
    from tests.cdp import Browser

    b = Browser(tmp_path_factory.mktemp("chromium-profile"))
    yield b
    b.close()


def test_a_run_of_minutes_reads_without_the_table(browser, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from farm.store import Store
    from farm.web.seed import DEVICES, SeedSpec, seed_store

    url = f"sqlite:///{tmp_path / 'farm.db'}"
    # six engine commits 15 s apart: a regression run of a minute and a half
    seed_store(Store(url), SeedSpec(runs=6, every=timedelta(seconds=15), devices=list(DEVICES)[:3],
                                    models=["smollm2-360m", "qwen2.5-0.5b"], quants=["q4_0", "q8_0"]))
    server, base = serve_in_thread(url)
    try:
        browser.goto(base + "/?range=")
        browser.wait_for("document.body.dataset.state === 'ready'")
        ticks = browser.eval(TICKS)
        assert len(ticks) >= 3 and len(set(ticks)) == len(ticks), ticks  # before: "12-06 00:12" twice
        assert all(t.count(":") == 2 for t in ticks), ticks  # seconds shown: the span is under two minutes
        pareto = browser.eval(PARETO)
        assert pareto["points"] == 12 and len(pareto["labels"]) + pareto["hidden"] == pareto["points"], pareto
        assert len(pareto["labels"]) >= 8  # most points carry their label; the rest say so
        assert all(lab.split()[0] in ("smollm2-360m", "qwen2.5-0.5b") and lab.split()[1] in ("q4_0", "q8_0")
                   for lab in pareto["labels"]), pareto["labels"]
        boxes = pareto["boxes"]
        overlaps = [(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1:]
                    if a[0] < b[2] - 1 and b[0] < a[2] - 1 and a[1] < b[3] - 1 and b[1] < a[3] - 1]
        assert not overlaps, overlaps  # measured by the browser's own text layout
        shot = tmp_path / "dashboard.png"
        browser.screenshot(shot)
        assert shot.stat().st_size > 10_000
    finally:
        server.shutdown()
