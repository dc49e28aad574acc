"""Every Grafana panel's SQL, macros and variables expanded as Grafana does, run on a real Postgres
holding a seeded store: a schema change that breaks a panel fails here, not in front of a user."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from farm.web import grafana
from farm.web.queries import BY_NAME, FILTERS, QUERIES, run_query
from tests.web_support import SEED_DEVICES, Seeded, grafana_expand, seeded_pg  # noqa: F401

REPO = Path(__file__).resolve().parent.parent
BOARDS = sorted((REPO / "dashboards").glob("*.json"))
SQL = [(path.name, where, sql) for path in BOARDS for where, sql in grafana.panel_sql(json.loads(path.read_text()))]


def _rows(seeded: Seeded, sql: str) -> list[dict[str, Any]]:
    with seeded.store.engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(text(sql))]


def _all_values(seeded: Seeded) -> dict[str, list[str]]:
    """What Grafana's "All" expands to: every value the variable's own query returns."""
    out = {}
    for path in BOARDS[:1]:
        for var in json.loads(path.read_text())["templating"]["list"]:
            out[var["name"]] = [r["value"] for r in _rows(seeded, grafana_expand(var["query"], {}))]
    return out


def test_committed_dashboards_match_the_shared_queries() -> None:
    generated = grafana.dashboards()
    assert sorted(generated) == [p.name for p in BOARDS]
    for path in BOARDS:
        assert json.loads(path.read_text()) == generated[path.name], (
            f"{path} is stale: run `python -m farm.web.grafana dashboards`")


def test_every_dashboard_uses_the_provisioned_datasource_and_variables() -> None:
    import yaml

    ds = yaml.safe_load((REPO / "dashboards/provisioning/datasources/farm.yaml").read_text())["datasources"][0]
    for path in BOARDS:
        board = json.loads(path.read_text())
        assert {v["name"] for v in board["templating"]["list"]} == set(FILTERS)
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] == ds["uid"] and panel["datasource"]["type"] == ds["type"]
    assert {q.name for q in QUERIES} <= {t for p in BOARDS for t in _query_names(json.loads(p.read_text()))}


def test_every_variable_a_query_uses_is_defined_and_the_axes_are_filters() -> None:
    import re as _re

    for path in BOARDS:
        board = json.loads(path.read_text())
        defined = {v["name"] for v in board["templating"]["list"]}
        assert {"depth", "cpus", "power_mode"} <= defined, path.name
        for where, sql in grafana.panel_sql(board):
            used = set(_re.findall(r"\$\{?(\w+)", sql)) - {m for m in _re.findall(r"\$(__\w+)", sql)}
            assert used <= defined, f"{path.name} {where} uses undefined {used - defined}"
        for panel in board["panels"]:  # every title's variable too ("— $device" on repeated panels)
            assert set(_re.findall(r"\$\{?(\w+)", panel["title"])) <= defined, panel["title"]
    perf = json.loads((REPO / "dashboards/farm-performance.json").read_text())
    cells = perf["panels"][0]["targets"][0]["rawSql"]
    for column in ("n_depth IN ($depth)", "cpus IN ($cpus)", "power_mode IN ($power_mode)", "' cpus=' || cpus",
                   "' power=' || power_mode", "'@d' || CAST(n_depth"):
        assert column in cells  # filtered on, and named in the bar labels (the legend's x field)


def _query_names(board: dict[str, Any]) -> set[str]:
    from farm.web.queries import grafana_sql

    sqls = {sql for _, sql in grafana.panel_sql(board)}
    return {q.name for q in QUERIES if grafana_sql(q) in sqls}


@pytest.mark.postgres
@pytest.mark.parametrize(("board", "where", "sql"), SQL, ids=[f"{b}:{w}" for b, w, _ in SQL])
def test_panel_sql_runs_on_postgres_with_all_selected(seeded_pg: Seeded, board: str, where: str, sql: str) -> None:  # noqa: F811
    rows = _rows(seeded_pg, grafana_expand(sql, _all_values(seeded_pg)))
    assert rows, f"{board} {where} returned no rows from the seeded store"


@pytest.mark.postgres
def test_panel_fields_exist_in_their_query_results(seeded_pg: Seeded) -> None:  # noqa: F811
    """Transformations and chart options name columns: a renamed column must fail here."""
    values = _all_values(seeded_pg)
    for path in BOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            rows = _rows(seeded_pg, grafana_expand(panel["targets"][0]["rawSql"], values))
            cols = set(rows[0])
            named = set()
            for t in panel["transformations"]:
                named |= set(t["options"].get("include", {}).get("names", []))
                named |= set(t["options"].get("excludeByName", {})) | set(t["options"].get("fields", []))
            named.add(panel["options"].get("xField", "label") if panel["type"] == "barchart" else next(iter(cols)))
            for series in panel["options"].get("series", []):
                named |= {series[k]["matcher"]["options"] for k in ("x", "y", "size", "color") if k in series}
            assert named <= cols, f"{path.name} panel {panel['title']!r} names {named - cols} not in {cols}"
            if panel["type"] == "timeseries":
                assert isinstance(rows[0]["time"], datetime) and "metric" in cols


@pytest.mark.postgres
def test_repeated_panels_with_one_device_show_only_that_device(seeded_pg: Seeded) -> None:  # noqa: F811
    values = _all_values(seeded_pg)
    device = SEED_DEVICES[1]
    sql = grafana_expand(grafana.grafana_sql(BY_NAME["throughput"]), {**values, "device": [device]})
    rows = _rows(seeded_pg, sql)
    assert rows and {r["device"] for r in rows} == {device}


@pytest.mark.postgres
def test_regression_annotations_mark_the_injected_regression(seeded_pg: Seeded) -> None:  # noqa: F811
    rows = _rows(seeded_pg, grafana_expand(grafana.grafana_sql(BY_NAME["regressions"]), _all_values(seeded_pg)))
    assert {"time", "text", "tags"} <= set(rows[0])
    # the seed slows decode by 15 % on its first device from run 3 on: every cell of it is marked there
    first = [r for r in rows if r["device"] == SEED_DEVICES[0]]
    assert len(first) >= 12 and all(-0.25 < r["change"] < -0.05 for r in first)


@pytest.mark.postgres
def test_grafana_and_farm_dashboard_run_the_same_query(seeded_pg: Seeded) -> None:  # noqa: F811
    values = _all_values(seeded_pg)
    t0, t1 = datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC)
    with seeded_pg.store.engine.connect() as conn:
        for q in QUERIES:
            chosen = {**values, "device": SEED_DEVICES[:2], "quant": ["q4_0"]}
            g = _rows(seeded_pg, grafana_expand(grafana.grafana_sql(q), chosen, (t0, t1)))
            w = run_query(conn, q, {"device": SEED_DEVICES[:2], "quant": ["q4_0"]}, t0, t1)
            assert g == w, q.name


@pytest.mark.postgres
def test_rollup_means_equal_raw_means(seeded_pg: Seeded) -> None:  # noqa: F811
    """result_rollup is kept by triggers; its exact means must equal AVG over the raw repetitions."""
    raw = {(r["device"], r["model"], r["quant"]): r for r in _rows(seeded_pg, (
        "SELECT device, model, quant, AVG(decode_tps) AS d, AVG(prefill_j_per_tok) AS e, COUNT(*) AS n "
        "FROM results WHERE exit_status = 0 GROUP BY device, model, quant"))}
    with seeded_pg.store.engine.connect() as conn:
        cells = run_query(conn, BY_NAME["energy"])
        tps = {(r["device"], r["model"], r["quant"]): r for r in run_query(conn, BY_NAME["throughput"])}
    assert len(cells) == len(raw)
    for c in cells:
        r = raw[(c["device"], c["model"], c["quant"])]
        assert c["prefill_mj_per_tok"] == pytest.approx(1000 * r["e"], rel=1e-9)
        assert tps[(c["device"], c["model"], c["quant"])]["decode_tps"] == pytest.approx(r["d"], rel=1e-9)
        assert int(c["reps"]) == r["n"]


def test_compose_grafana_service_matches_the_provisioning() -> None:
    """The datasource's ${FARM_PG_*} are set, and the provider's path is where the JSON is mounted."""
    import re as _re

    import yaml

    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    grafana_svc = compose["services"]["grafana"]
    ds_text = _re.sub(r"#.*", "", (REPO / "dashboards/provisioning/datasources/farm.yaml").read_text())
    assert set(_re.findall(r"\$\{(\w+)\}", ds_text)) <= set(grafana_svc["environment"])
    provider = yaml.safe_load((REPO / "dashboards/provisioning/dashboards/farm.yaml").read_text())["providers"][0]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in grafana_svc["volumes"]}
    assert mounts[provider["options"]["path"]] == "./dashboards"
    pg = compose["services"]["postgres"]["environment"]
    env = grafana_svc["environment"]
    assert (env["FARM_PG_USER"], env["FARM_PG_PASSWORD"], env["FARM_PG_DB"]) == (
        pg["POSTGRES_USER"], pg["POSTGRES_PASSWORD"], pg["POSTGRES_DB"])
    assert all(str(p).startswith("127.0.0.1:") for p in grafana_svc["ports"])



@pytest.mark.postgres
def test_grafana_energy_bars_never_draw_a_value_below_resolution(pg_url: str) -> None:
    """Grafana cannot grey one bar: the energy query splits each phase into the measured mean (outside the
    idle noise) and the bound (inside it); the panel draws both columns and names the grey one."""
    from tests.web_support import store_with_pairs

    board = json.loads((REPO / "dashboards" / "farm-performance.json").read_text())
    panel = next(p for p in board["panels"] if p["targets"][0]["rawSql"] == grafana.grafana_sql(BY_NAME["energy"]))
    drawn = panel["transformations"][-1]["options"]["include"]["names"]
    assert "decode_mj_per_tok" not in drawn and {"decode_mj_measured", "decode_mj_below"} <= set(drawn)
    shown = {o["matcher"]["options"]: o["properties"][0]["value"] for o in panel["fieldConfig"]["overrides"]}
    assert "below resolution" in shown["decode_mj_below"]
    # two cells; on the "big" cores one the decode energy is within the idle noise (bound 2x the value,
    # as a fuel gauge's coarse steps give), through the UPDATE trigger path of the rollup
    store = store_with_pairs(pg_url, "cpus", "big", runs=1)
    with store.engine.begin() as conn:
        conn.execute(text("UPDATE results SET decode_j_per_tok_bound = 2 * ABS(decode_j_per_tok), "
                          "prefill_j_per_tok_bound = 0.01 * prefill_j_per_tok WHERE cpus = 'big'"))
        conn.execute(text("UPDATE results SET decode_j_per_tok_bound = 0.01 * decode_j_per_tok, "
                          "prefill_j_per_tok_bound = 0.01 * prefill_j_per_tok WHERE cpus <> 'big'"))
    span = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 4, 1, tzinfo=UTC))  # store_with_pairs' dates
    with store.engine.connect() as conn:
        variables = {v["name"]: [r[0] for r in conn.execute(text(grafana_expand(v["query"], {}, span)))]
                     for v in board["templating"]["list"]}
        rows = {r.cpus: dict(r._mapping)
                for r in conn.execute(text(grafana_expand(panel["targets"][0]["rawSql"], variables, span)))}
    big, all_ = rows["big"], rows["all"]
    assert big["decode_mj_measured"] is None and big["decode_mj_below"] == pytest.approx(big["decode_mj_bound"])
    assert big["prefill_mj_below"] is None and big["prefill_mj_measured"] == pytest.approx(big["prefill_mj_per_tok"])
    assert all_["decode_mj_below"] is None and all_["decode_mj_measured"] == pytest.approx(all_["decode_mj_per_tok"])
