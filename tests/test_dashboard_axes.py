"""Depth, cores and power mode on the dashboards: cells that differ only in one of them are separate
rollup rows, separate points and series, with labels that say which is which; and migration 0010
rebuilds the rollup of an existing store with them (and 0009 gets its shape back). SQLite and Postgres."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from alembic import command
from alembic.config import Config
from sqlalchemy import inspect, text

from farm.jobs import Job
from farm.store import Store
from farm.store.db import MIGRATIONS, make_engine
from farm.web import grafana
from farm.web.queries import BY_NAME, run_query
from tests.web_support import REPS, SHAPE_TEST, grafana_expand, store_with_pairs

# filter variable -> (Job field = results/rollup column, the value of the second cell, what its label says)
AXES: dict[str, tuple[str, Any, str]] = {"depth": ("n_depth", 512, "@d512"), "cpus": ("cpus", "big", "cpus=big"),
                                         "power_mode": ("power_mode", "15W", "power=15W")}


def _rollup(store: Store, column: str) -> dict[Any, int]:
    with store.engine.connect() as conn:
        rows = conn.execute(text(f"SELECT {column}, SUM(n_rows) FROM result_rollup GROUP BY {column}")).all()
    return {k: int(n) for k, n in rows}


@pytest.mark.parametrize("var", list(AXES))
def test_cells_differing_in_one_axis_stay_apart(store_url: str, var: str) -> None:
    field, value, marker = AXES[var]
    store = store_with_pairs(store_url, field, value)
    default = Job.model_fields[field].default
    assert _rollup(store, field) == {default: 2 * REPS, value: 2 * REPS}
    with store.engine.connect() as conn:
        cells = run_query(conn, BY_NAME["throughput"])
        series = run_query(conn, BY_NAME["commit_series"])
        only = run_query(conn, BY_NAME["throughput"], {var: [str(value)]})
    assert {c[field] for c in cells} == {default, value}
    assert len(cells) == 2 and all(int(c["reps"]) == 2 * REPS for c in cells)
    labels = {c[field]: c["label"] for c in cells}
    assert marker in labels[value] and marker not in labels[default], labels
    metrics = {r["metric"] for r in series}
    assert len(metrics) == 2 and len(series) == 4, series  # two series, a point per commit each
    # filtered to one value, the axis no longer varies: the label does not name it
    assert [c[field] for c in only] == [value] and marker not in only[0]["label"], only
    if var != "depth":  # the depth stays in its test name
        assert only[0]["label"] == f"smollm2-360m q4_0 {SHAPE_TEST} t4"


@pytest.mark.postgres
@pytest.mark.parametrize("var", list(AXES))
def test_grafana_panels_keep_the_cells_apart(pg_url: str, var: str) -> None:
    field, value, marker = AXES[var]
    store = store_with_pairs(pg_url, field, value)
    board = grafana.dashboards()["farm-performance.json"]
    with store.engine.connect() as conn:
        def rows(sql: str, chosen: dict[str, list[str]]) -> list[dict[str, Any]]:
            return [dict(r._mapping) for r in conn.execute(text(grafana_expand(sql, chosen, (
                datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC)))))]

        everything = {v["name"]: [r["value"] for r in rows(v["query"], {})] for v in board["templating"]["list"]}
        assert sorted(map(str, everything[var])) == sorted(map(str, [Job.model_fields[field].default, value]))
        cells = rows(grafana.grafana_sql(BY_NAME["throughput"]), everything)
        series = rows(grafana.grafana_sql(BY_NAME["commit_series"]), everything)
        chosen = rows(grafana.grafana_sql(BY_NAME["throughput"]), {**everything, var: [str(value)]})
    assert len({c["label"] for c in cells}) == 2 and any(marker in c["label"] for c in cells)
    assert len({r["metric"] for r in series}) == 2
    assert [c[field] for c in chosen] == [value]


def test_a_depth_filter_that_is_not_a_number_is_refused(sqlite_url: str) -> None:
    store = store_with_pairs(sqlite_url, "n_depth", 512, runs=1)
    with store.engine.connect() as conn, pytest.raises(ValueError, match="whole numbers"):
        run_query(conn, BY_NAME["throughput"], {"depth": ["deep"]})


def _alembic(url: str, action: str, revision: str) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    engine = make_engine(url)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        getattr(command, action)(cfg, revision)
    engine.dispose()


def _keys(store: Store) -> list[str]:
    with store.engine.connect() as conn:
        return inspect(conn).get_pk_constraint("result_rollup")["constrained_columns"]


def test_migration_0010_backfills_a_stored_rollup_and_0009_gets_its_shape_back(store_url: str) -> None:
    store = store_with_pairs(store_url, "power_mode", "15W")
    assert {"n_depth", "cpus", "power_mode"} <= set(_keys(store))
    _alembic(store_url, "downgrade", "0009")
    assert not {"n_depth", "cpus", "power_mode"} & set(_keys(store))
    with store.engine.begin() as conn:  # written under 0009's triggers: the pairs are one rollup row per run
        assert conn.execute(text("SELECT COUNT(*), SUM(n_rows) FROM result_rollup")).one() == (2, 4 * REPS)
        conn.execute(text("UPDATE results SET cpus = 'little' WHERE power_mode = '15W' AND rep = 0"))
    _alembic(store_url, "upgrade", "0010")
    assert _rollup(store, "power_mode") == {"default": 2 * REPS, "15W": 2 * REPS}
    assert _rollup(store, "cpus") == {"all": 4 * REPS - 2, "little": 2}
    with store.engine.connect() as conn:
        raw = conn.execute(text("SELECT n_depth, cpus, power_mode, COUNT(*), AVG(decode_tps) FROM results "
                                "GROUP BY n_depth, cpus, power_mode ORDER BY 1, 2, 3")).all()
        rolled = conn.execute(text("SELECT n_depth, cpus, power_mode, SUM(n_rows), SUM(s_decode_tps) / "
                                   "SUM(n_decode_tps) FROM result_rollup GROUP BY n_depth, cpus, power_mode "
                                   "ORDER BY 1, 2, 3")).all()
    assert [r[:4] for r in rolled] == [tuple(r[:4]) for r in raw] and len(raw) == 3
    assert [float(r[4]) for r in rolled] == pytest.approx([r[4] for r in raw], rel=1e-9)
    with store.engine.begin() as conn:  # the rebuilt triggers keep it exact: a delete takes its rows out
        conn.execute(text("DELETE FROM results WHERE cpus = 'little'"))
    assert _rollup(store, "cpus") == {"all": 4 * REPS - 2}


def test_the_page_draws_a_series_per_depth_inside_the_plot(sqlite_url: str) -> None:
    """What `farm dashboard` serves for a run at depths 0 and 512: two series, every point on the chart
    (the top y tick once fell below the highest point: depth 0, the faster one, was drawn off the plot)."""
    import json
    import re
    import urllib.request

    from farm.web.server import serve_in_thread

    store_with_pairs(sqlite_url, "n_depth", 512)
    server, base = serve_in_thread(sqlite_url)
    try:
        with urllib.request.urlopen(f"{base}/api/panel/commit_series", timeout=30) as r:
            html = json.loads(r.read())["html"]
    finally:
        server.shutdown()
        server.server_close()
    titles = re.findall(r'<circle class="pt"[^>]*><title>([^<]*) · ', html)
    assert sorted(set(titles)) == ["synthetic-pixel-8 · smollm2-360m q4_0 pp512+tg128@d0",
                                   "synthetic-pixel-8 · smollm2-360m q4_0 pp512+tg128@d512"], titles
    plot_top = 14  # svg.line_chart's top margin; the y axis is at 0, its bottom
    ys = [float(y) for y in re.findall(r'<circle class="pt" cx="[^"]*" cy="([^"]*)"', html)]
    assert len(ys) == 4 and all(y >= plot_top for y in ys), ys
