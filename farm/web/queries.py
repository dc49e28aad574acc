"""The one definition of every dashboard query, rendered for Grafana and for SQLAlchemy.

Each panel's SQL is written once, in the dialect-neutral subset that SQLite and PostgreSQL share,
with three placeholders:

- ``[[where]]``: the time range (bucket overlap on ``result_rollup``) and every filter of the query;
- ``[[between:COL]]``: the time range on a plain timestamp column;
- ``[[in:VAR:COL]]``: one filter on a column of another table.

Grafana gets ``$__timeFrom()``/``$__timeTo()``/``$__timeFilter(COL)`` macros and multi-value
``$device``-style variables; `farm dashboard` gets bound parameters, and an empty filter means
"all". Panels read ``result_rollup`` (see migration 0003), whose day buckets carry first/last
timestamps, so a time range keeps a bucket when they overlap.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import DateTime, bindparam, text
from sqlalchemy.engine import Connection

# filter variable -> column of result_rollup
FILTERS: dict[str, str] = {"device": "device", "model": "model", "quant": "quant", "backend": "backend",
                           "depth": "n_depth", "cpus": "cpus", "power_mode": "power_mode", "commit": "engine_commit"}
INTEGER_FILTERS = {"depth"}  # URL values are text: bound as integers so both dialects compare numbers
REGRESSION_DROP = 0.05  # a commit is marked when its mean decode t/s falls >5 % below the previous commit's


@dataclass(frozen=True)
class Query:
    """A panel's query: a name (URL and test id), a title, SQL with placeholders, and a chart kind."""

    name: str
    title: str
    sql: str
    chart: str  # bars | phases | series | scatter | table | annotations | options
    unit: str = ""
    filters: tuple[str, ...] = tuple(FILTERS)


def mean(metric: str) -> str:
    """Exact mean of a metric over rollup rows (sums and counts add; means do not)."""
    return f"SUM(s_{metric}) / NULLIF(SUM(n_{metric}), 0)"


def _varies(col: str) -> str:
    """True when the rows of the panel hold more than one value of `col` (a window over the result)."""
    return f"MIN({col}) OVER () <> MAX({col}) OVER ()"


# the axes a label names only when they vary in what the panel shows: a page of "cpus=all power=default"
# says nothing. Depth reads like llama-bench's test suffix; farm's test names already carry it when > 0.
_DEPTH = (f"CASE WHEN {_varies('n_depth')} AND test NOT LIKE '%@d%' "
          "THEN '@d' || CAST(n_depth AS VARCHAR(12)) ELSE '' END")
_CORES_POWER = (f"CASE WHEN {_varies('cpus')} THEN ' cpus=' || cpus ELSE '' END || "
                f"CASE WHEN {_varies('power_mode')} THEN ' power=' || power_mode ELSE '' END")
_AXES = "n_depth, cpus, power_mode"

# a cell is what llama-bench prints one line for: threads, depth, cores and power mode change the figures
# as much as the test does
_CELL = f"device, model, quant, backend, test, threads, {_AXES}"
_LABEL = f"model || ' ' || quant || ' ' || test || {_DEPTH} || ' t' || CAST(threads AS VARCHAR(8)) || {_CORES_POWER}"


def _resolved(phase: str) -> str:
    """A phase's energy split for charts that cannot grey a bar (Grafana): ``<phase>_mj_measured`` is the mean
    when it is outside the idle noise, ``<phase>_mj_below`` the bound when it is not (never a negative bar)."""
    v, b = f"{phase}_mj_per_tok", f"{phase}_mj_bound"
    below = f"{b} IS NOT NULL AND ABS({v}) <= {b}"
    return (f"CASE WHEN {below} THEN NULL ELSE {v} END AS {phase}_mj_measured, "
            f"CASE WHEN {below} THEN {b} END AS {phase}_mj_below")


def _cells(metrics: str) -> str:
    return (f"SELECT {_CELL}, {_LABEL} AS label, {metrics}, SUM(n_ok) AS reps FROM result_rollup [[where]] "
            f"GROUP BY {_CELL} ORDER BY {_CELL}")


# per commit, one series per cell without threads (their mean): a sweep runs the same thread counts
# on every commit, so the trend holds, and a chart of every thread count would be unreadable
_SERIES = f"device, model, quant, backend, test, {_AXES}"
_SERIES_LABEL = f"model || ' ' || quant || ' ' || test || {_DEPTH} || {_CORES_POWER}"
_PER_COMMIT = (f"SELECT {_SERIES}, engine_commit, MIN(first_at) AS time, {mean('decode_tps')} AS decode_tps "
               f"FROM result_rollup [[where]] GROUP BY {_SERIES}, engine_commit")
_WINDOW = f"OVER (PARTITION BY {_SERIES} ORDER BY time)"

QUERIES: list[Query] = [
    Query("throughput", "Decode tokens/s by model × quant", _cells(
        f"{mean('prefill_tps')} AS prefill_tps, {mean('decode_tps')} AS decode_tps"), "bars", "tok/s"),
    Query("phases", "Prefill vs decode tokens/s", _cells(
        f"{mean('prefill_tps')} AS prefill_tps, {mean('decode_tps')} AS decode_tps"), "phases", "tok/s"),
    Query("energy", "Energy per token (mJ)", f"SELECT e.*, {_resolved('prefill')}, {_resolved('decode')} FROM ("
          + _cells(
        f"1000 * {mean('prefill_j_per_tok')} AS prefill_mj_per_tok, 1000 * {mean('decode_j_per_tok')} "
        f"AS decode_mj_per_tok, {mean('decode_avg_w')} AS decode_avg_w, "
        # resolution of the means above: |value| ≤ bound is within the idle baseline's noise (farm.power.energy)
        f"1000 * {mean('prefill_j_per_tok_bound')} AS prefill_mj_bound, "
        f"1000 * {mean('decode_j_per_tok_bound')} AS decode_mj_bound, "
        f"1.0 * SUM(n_modelled) / SUM(n_rows) AS modelled_share") + f") AS e ORDER BY {_CELL}", "bars", "mJ/tok"),
    Query("memory", "Peak memory (MiB)", _cells(
        f"{mean('peak_rss_bytes')} / 1048576.0 AS peak_rss_mib"), "bars", "MiB"),
    Query("ttft", "Time to first token (ms)", _cells(f"1000 * {mean('ttft_s')} AS ttft_ms"), "bars", "ms"),
    Query("commit_series", "Decode tokens/s by engine commit",
          f"SELECT time, engine_commit, device || ' · ' || {_SERIES_LABEL} AS metric, "
          f"decode_tps FROM ({_PER_COMMIT}) AS c ORDER BY time, metric", "series", "tok/s"),
    Query("regressions", f"Commits whose decode t/s fell > {REGRESSION_DROP:.0%} below the previous commit",
          f"SELECT time, {_SERIES}, engine_commit, prev_commit, decode_tps, prev_decode_tps, "
          "decode_tps / prev_decode_tps - 1 AS change, "
          "'decode ' || CAST(ROUND(CAST(100 * (decode_tps / prev_decode_tps - 1) AS NUMERIC), 1) AS TEXT) || "
          "'% on ' || device || ' ' || label || ' at ' || SUBSTR(engine_commit, 1, 10) AS text, "
          "'regression,' || device AS tags "
          f"FROM (SELECT *, LAG(decode_tps) {_WINDOW} AS prev_decode_tps, LAG(engine_commit) {_WINDOW} "
          # labelled before the WHERE: an axis that varies among the series is named on every marker
          f"AS prev_commit, {_SERIES_LABEL} AS label FROM ({_PER_COMMIT}) AS c) AS l "
          f"WHERE decode_tps < prev_decode_tps * {1 - REGRESSION_DROP} ORDER BY time", "annotations"),
    Query("pareto", "Pareto: decode tokens/s vs energy per token vs memory", _cells(
        f"{mean('decode_tps')} AS decode_tps, 1000 * {mean('decode_j_per_tok')} AS decode_mj_per_tok, "
        f"{mean('peak_rss_bytes')} / 1048576.0 AS peak_rss_mib"), "scatter"),
    Query("device_health", "Device health",
          "WITH agg AS (SELECT device, SUM(n_rows) AS reps, SUM(n_failed) AS failed_reps, "
          "1.0 * SUM(n_throttled) / SUM(n_rows) AS throttled_share, 1.0 * SUM(n_charging) / SUM(n_rows) "
          "AS charging_share, MAX(last_at) AS last_result FROM result_rollup [[where]] GROUP BY device), "
          "fails AS (SELECT device, COUNT(*) AS failed_jobs, MAX(finished_at) AS last_failure FROM jobs "
          "WHERE status = 'failed' AND [[between:finished_at]] AND [[in:device:device]] GROUP BY device), "
          "names AS (SELECT name AS device FROM devices WHERE [[in:device:name]] "
          "UNION SELECT device FROM agg UNION SELECT device FROM fails) "
          "SELECT n.device, d.profile, COALESCE(d.status, 'unregistered') AS status, d.failures AS failures_in_row, "
          "d.quarantine_reason, d.last_seen, COALESCE(a.reps, 0) AS reps, COALESCE(a.failed_reps, 0) AS failed_reps, "
          "COALESCE(f.failed_jobs, 0) AS failed_jobs, a.throttled_share, a.charging_share, a.last_result, "
          "f.last_failure FROM names AS n LEFT JOIN devices AS d ON d.name = n.device "
          "LEFT JOIN agg AS a ON a.device = n.device LEFT JOIN fails AS f ON f.device = n.device "
          "ORDER BY n.device", "table", filters=("device",)),
]
# what the filter drop-downs (Grafana variables) offer: values seen in the time range
OPTIONS: list[Query] = [
    Query(f"options_{var}", var, f"SELECT {col} AS value FROM result_rollup [[where]] GROUP BY {col} "
          f"ORDER BY {'MAX(last_at) DESC' if var == 'commit' else col}", "options", filters=())
    for var, col in FILTERS.items()
]
BY_NAME: dict[str, Query] = {q.name: q for q in [*QUERIES, *OPTIONS]}

_TOKEN = re.compile(r"\[\[(where|between:(\w+)|in:(\w+):(\w+))\]\]")


def _render(q: Query, time_on: str, between: Any, in_: Any, filt: Any) -> str:
    def sub(m: re.Match[str]) -> str:
        if m.group(1) == "where":
            return "WHERE " + " AND ".join([time_on, *(c for c in (filt(v, FILTERS[v]) for v in q.filters) if c)])
        if m.group(2):
            return between(m.group(2))
        return in_(m.group(3), m.group(4)) or "1=1"

    return _TOKEN.sub(sub, q.sql)


def grafana_sql(q: Query) -> str:
    """The panel SQL Grafana's Postgres datasource expands (macros and multi-value variables)."""
    return _render(q, "bucket >= $__timeFrom()::timestamptz - INTERVAL '1 day' AND bucket <= $__timeTo() AND "
                      "last_at >= $__timeFrom() AND first_at <= $__timeTo()",
                   lambda col: f"$__timeFilter({col})", lambda var, col: f"{col} IN (${var})",
                   lambda var, col: f"{col} IN (${var})")


def bound_sql(q: Query, filters: Mapping[str, Sequence[str]], has_time: bool) -> tuple[Any, dict[str, Any]]:
    """A SQLAlchemy text() with bound parameters; variables with no values do not filter."""
    params: dict[str, Any] = {}
    expanding = []

    def filt(var: str, col: str) -> str:
        values: list[Any] = [v for v in filters.get(var, ()) if v != ""]
        if not values:
            return ""
        if var in INTEGER_FILTERS:
            try:
                values = [int(v) for v in values]
            except ValueError:
                raise ValueError(f"{var} takes whole numbers, not {values!r}") from None
        params[f"f_{var}"] = list(values)
        expanding.append(f"f_{var}")
        return f"{col} IN :f_{var}"

    time_on = ("bucket >= :b_from AND bucket <= :t_to AND last_at >= :t_from AND first_at <= :t_to"
               if has_time else "1=1")
    sql = _render(q, time_on, lambda col: f"{col} BETWEEN :t_from AND :t_to" if has_time else "1=1", filt, filt)
    clause = text(sql)
    binds = [bindparam(name, expanding=True) for name in dict.fromkeys(expanding)]
    if has_time:
        binds += [bindparam(n, type_=DateTime(timezone=True)) for n in ("t_from", "t_to", "b_from")]
    return (clause.bindparams(*binds) if binds else clause), params


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def run_query(conn: Connection, q: Query, filters: Mapping[str, Sequence[str]] | None = None,
              t_from: datetime | None = None, t_to: datetime | None = None) -> list[dict[str, Any]]:
    """Rows of a panel as dicts; no time range means all time."""
    has_time = t_from is not None or t_to is not None
    clause, params = bound_sql(q, filters or {}, has_time)
    if has_time:
        params["t_from"] = _utc(t_from or datetime(1970, 1, 1, tzinfo=UTC))
        params["t_to"] = _utc(t_to or datetime(9999, 1, 1, tzinfo=UTC))
        params["b_from"] = params["t_from"] - timedelta(days=1)  # the day bucket holding t_from starts before it
    if conn.dialect.name == "sqlite" and has_time:
        # SQLite compares the stored naive-UTC text; an aware value would render with an offset
        for name in ("t_from", "t_to", "b_from"):
            params[name] = params[name].replace(tzinfo=None)
    result = conn.execute(clause, params)
    return [dict(row._mapping) for row in result]
