"""From a panel query's rows to its picture (SVG or table), the same way for every front end."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from html import escape
from typing import Any

from farm.web import svg
from farm.web.queries import Query

# the metric a bar panel draws (its table keeps the rest)
PRIMARY = {"throughput": "decode_tps", "energy": "decode_mj_per_tok", "memory": "peak_rss_mib", "ttft": "ttft_ms"}


def plain(v: Any) -> Any:
    """Values JSON and SVG can use: Decimal (Postgres SUM) → float."""
    return float(v) if isinstance(v, Decimal) else v


def clean(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: plain(v) for k, v in r.items()} for r in rows]


def _pivot(rows: Sequence[dict[str, Any]], group: str, series: str, value: str) -> tuple[list[str], dict[str, list]]:
    groups = list(dict.fromkeys(r[group] for r in rows))
    names = list(dict.fromkeys(r[series] for r in rows))
    table: dict[str, list[Any]] = {n: [None] * len(groups) for n in names}
    for r in rows:
        table[r[series]][groups.index(r[group])] = r[value]
    return groups, table


def render(q: Query, rows: Sequence[dict[str, Any]], markers: Sequence[dict[str, Any]] = ()) -> str:
    """HTML for one panel: an SVG chart for chart kinds, a table for tables."""
    rows = clean(rows)
    if q.chart == "bars":
        groups, table = _pivot(rows, "label", "device", PRIMARY[q.name])
        bounds = _pivot(rows, "label", "device", "decode_mj_bound")[1] if q.name == "energy" else None
        return svg.bar_chart(groups, table, q.unit, bounds=bounds)
    if q.chart == "phases":
        parts = []  # small multiples: one chart per device keeps labels short and scales comparable
        for device in dict.fromkeys(r["device"] for r in rows):
            mine = [r for r in rows if r["device"] == device]
            parts.append(f'<h4 class="small">{escape(device)}</h4>' + svg.bar_chart(
                [r["label"] for r in mine], {"prefill": [r["prefill_tps"] for r in mine],
                                             "decode": [r["decode_tps"] for r in mine]}, q.unit))
        return "".join(parts) or svg.bar_chart([], {}, q.unit)
    if q.chart == "series":
        series: dict[str, list[tuple[Any, Any, str]]] = {}
        for r in rows:
            series.setdefault(r["metric"], []).append((r["time"], r["decode_tps"], str(r["engine_commit"])[:10]))
        return svg.line_chart(series, [(m["time"], m["text"]) for m in markers], q.unit)
    if q.chart == "scatter":
        points = [{"x": r["decode_tps"], "y": r["decode_mj_per_tok"], "r": r["peak_rss_mib"],
                   "label": f"{r['device']} · {r['label']}", "group": r["device"]} for r in rows]
        return svg.scatter(points, "decode tok/s", "decode mJ/tok", "peak MiB")
    return svg.html_table(rows)
