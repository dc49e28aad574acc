"""`farm dashboard`'s HTTP endpoints on a seeded SQLite and a seeded Postgres store."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from farm.web.queries import QUERIES
from farm.web.server import read_only_engine, serve_in_thread
from tests.web_support import SEED_DEVICES, Seeded, seeded, seeded_pg, seeded_sqlite  # noqa: F401

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def site(seeded: Seeded) -> Iterator[str]:  # noqa: F811
    server, base = serve_in_thread(seeded.url)
    yield base
    server.shutdown()
    server.server_close()


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            body = r.read()
            return r.status, json.loads(body) if r.headers["Content-Type"] == "application/json" else body
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def test_page_and_assets_are_served_without_external_resources(site: str) -> None:
    status, page = get(site + "/")
    assert status == 200 and b'<script src="app.js">' in page
    for asset in ("/app.js", "/style.css"):
        status, body = get(site + asset)
        assert status == 200 and body
        assert not re.search(rb"https?://", body), f"{asset} loads something from the network"
    assert not re.search(rb"(src|href)=\"https?://", page)


def test_every_panel_returns_rows_and_a_drawing(site: str) -> None:
    status, listing = get(site + "/api/panels")
    assert status == 200 and [p["name"] for p in listing] == [q.name for q in QUERIES]
    for q in QUERIES:
        status, body = get(f"{site}/api/panel/{q.name}")
        assert status == 200, body
        assert body["rows"], q.name
        if q.chart in ("bars", "phases", "series", "scatter"):
            assert body["html"].startswith(("<svg", "<h4")) and body["html"].count('class="pt') >= len(body["rows"]) / 2
        elif q.chart == "table":
            assert "<table" in body["html"]


def test_filters_and_time_range_change_the_rows(site: str) -> None:
    _, every = get(f"{site}/api/panel/throughput")
    _, one = get(f"{site}/api/panel/throughput?device={SEED_DEVICES[2]}&quant=q8_0")
    assert {r["device"] for r in every["rows"]} == set(SEED_DEVICES)
    assert {(r["device"], r["quant"]) for r in one["rows"]} == {(SEED_DEVICES[2], "q8_0")}
    _, two = get(f"{site}/api/panel/pareto?device={SEED_DEVICES[0]}&device={SEED_DEVICES[1]}")
    assert {r["device"] for r in two["rows"]} == set(SEED_DEVICES[:2])
    _, options = get(f"{site}/api/options")
    assert set(SEED_DEVICES) <= set(options["device"]) and len(options["commit"]) == 6
    _, commits = get(f"{site}/api/panel/commit_series?commit={options['commit'][0]}")
    assert {r["engine_commit"] for r in commits["rows"]} == {options["commit"][0]}
    _, future = get(f"{site}/api/panel/throughput?from=2999-01-01T00:00:00Z&to=2999-02-01T00:00:00Z")
    assert future["rows"] == [] and "no data" in future["html"]


def test_device_health_shows_failures_and_idle_devices(site: str, seeded: Seeded) -> None:  # noqa: F811
    _, body = get(f"{site}/api/panel/device_health")
    by = {r["device"]: r for r in body["rows"]}
    assert by[seeded.failed_device]["failed_jobs"] == 1
    assert by["synthetic-spare"]["reps"] == 0 and by["synthetic-spare"]["status"] == "online"


def test_errors_and_writes_are_refused(site: str) -> None:
    assert get(f"{site}/api/panel/nope")[0] == 404
    assert get(f"{site}/api/panel/throughput?from=yesterday")[0] == 400
    req = urllib.request.Request(f"{site}/api/panel/throughput", data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 405
    assert site.startswith("http://127.0.0.1:")


def test_the_server_engine_cannot_write(seeded: Seeded) -> None:  # noqa: F811
    engine = read_only_engine(seeded.url)
    with pytest.raises(Exception, match=r"(?i)read.?only"), engine.begin() as conn:
        conn.execute(text("DELETE FROM results"))
    engine.dispose()
    with seeded.store.engine.connect() as conn:
        assert conn.execute(text("SELECT COUNT(*) FROM results")).scalar()


def test_farm_dashboard_command_serves_on_loopback(seeded_sqlite: Seeded) -> None:  # noqa: F811
    proc = subprocess.Popen([sys.executable, "-m", "farm.cli.main", "dashboard", "--db", seeded_sqlite.url,
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=REPO, env={**os.environ, "COLUMNS": "200"})
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        url = re.search(r"http://127\.0\.0\.1:\d+/", line)
        assert url, line
        status, body = get(url.group(0) + "api/panel/memory")
        assert status == 200 and body["rows"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize("query", ["/api/panel/throughput?from=0001-01-01", "/api/panel/throughput?to=99999-01-01",
                                   "/api/options?from=0001-01-01", "/api/options?to=yesterday",
                                   "/api/panel/memory?from=2024-13-45"])
def test_a_malformed_time_range_is_400_not_500(site: str, query: str) -> None:
    status, body = get(site + query)
    assert status == 400 and "error" in body, (status, body)


@pytest.mark.parametrize(("host", "status"), [("evil.example:{port}", 403), ("127.0.0.1:1", 403),
                                              ("evil.example", 403), (None, 403),
                                              ("127.0.0.1:{port}", 200), ("localhost:{port}", 200)])
def test_a_foreign_host_header_is_refused(site: str, host: str | None, status: int) -> None:
    """DNS rebinding: a page at evil.example rebound to 127.0.0.1 still sends its own name as Host."""
    import http.client

    port = int(site.rsplit(":", 1)[1])
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.putrequest("GET", "/api/panels", skip_host=True)
    if host is not None:
        conn.putheader("Host", host.format(port=port))
    conn.endheaders()
    resp = conn.getresponse()
    resp.read()
    conn.close()
    assert resp.status == status
