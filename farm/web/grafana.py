"""Grafana dashboards generated from the shared panel queries (farm.web.queries).

``python -m farm.web.grafana dashboards/`` writes ``dashboards/*.json``; a test checks the
committed files equal this output, so a query changed in one place changes Grafana too. The
panels target Grafana 11 (barchart, timeseries with "partition by values", xychart, table) and the
provisioned datasource ``farm-postgres``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from farm.web.queries import BY_NAME, FILTERS, OPTIONS, grafana_sql

DATASOURCE = {"type": "grafana-postgresql-datasource", "uid": "farm-postgres"}
GRID_W = 24


def _target(name: str, fmt: str = "table") -> dict[str, Any]:
    return {"refId": "A", "datasource": DATASOURCE, "editorMode": "code", "format": fmt, "rawQuery": True,
            "rawSql": grafana_sql(BY_NAME[name])}


def _keep(fields: list[str]) -> list[dict[str, Any]]:
    """A transformation keeping only `fields` (in that order): Grafana would otherwise draw every number."""
    return [{"id": "filterFieldsByName", "options": {"include": {"names": fields}}}]


def _panel(pid: int, title: str, kind: str, query: str, pos: tuple[int, int, int, int], *,
           fields: list[str] | None = None, unit: str = "", options: dict[str, Any] | None = None,
           repeat: str | None = None, transformations: list[dict[str, Any]] | None = None,
           description: str = "") -> dict[str, Any]:
    x, y, w, h = pos
    panel: dict[str, Any] = {
        "id": pid, "type": kind, "title": title, "description": description or BY_NAME[query].title,
        "datasource": DATASOURCE, "gridPos": {"x": x, "y": y, "w": w, "h": h}, "targets": [_target(query)],
        "fieldConfig": {"defaults": {"unit": unit} if unit else {}, "overrides": []},
        "options": options or {}, "transformations": (transformations or []) + (_keep(fields) if fields else []),
    }
    if repeat:
        panel.update(repeat=repeat, repeatDirection="h", maxPerRow=2)
    return panel


def _variables() -> list[dict[str, Any]]:
    return [{"name": var, "label": var, "type": "query", "datasource": DATASOURCE,
             "query": grafana_sql(BY_NAME[f"options_{var}"]), "definition": grafana_sql(BY_NAME[f"options_{var}"]),
             "refresh": 2, "multi": True, "includeAll": True, "current": {"text": ["All"], "value": ["$__all"]},
             "sort": 0, "options": []} for var in FILTERS if f"options_{var}" in {q.name for q in OPTIONS}]


def _dashboard(uid: str, title: str, panels: list[dict[str, Any]], *, annotations: list[dict[str, Any]] = (),
               days: int = 30) -> dict[str, Any]:
    return {
        "uid": uid, "title": title, "tags": ["farm"], "timezone": "utc", "schemaVersion": 39, "version": 1,
        "editable": True, "graphTooltip": 1, "refresh": "", "time": {"from": f"now-{days}d", "to": "now"},
        "templating": {"list": _variables()},
        "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                  "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                                  "name": "Annotations & Alerts", "type": "dashboard"}, *annotations]},
        "links": [{"type": "dashboards", "tags": ["farm"], "asDropdown": True, "title": "farm dashboards"}],
        "panels": panels,
    }


def _bars() -> dict[str, Any]:
    return {"xField": "label", "orientation": "horizontal", "showValue": "never", "groupWidth": 0.8,
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}}


def _energy_panel() -> dict[str, Any]:
    """Energy bars; a phase whose net energy is within the idle baseline's noise is a grey bar of the bound,
    named "below resolution", never a (possibly negative) value: as the table, the report and farm's page."""
    panel = _panel(3, "Energy per token (mJ) — $device", "barchart", "energy", (0, 24, 12, 12),
                   fields=["label", "prefill_mj_measured", "decode_mj_measured", "prefill_mj_below",
                           "decode_mj_below"], options={**_bars(), "stacking": "none"}, repeat="device",
                   description="Net energy per token (idle power subtracted). Grey: below resolution, the net "
                               "energy is within the idle baseline's noise; the bar is that bound, the raw "
                               "value is in the table and in farm results --raw.")
    names = {"prefill_mj_measured": ("prefill mJ/tok", None), "decode_mj_measured": ("decode mJ/tok", None),
             "prefill_mj_below": ("prefill: below resolution (< bound)", "#c8c8c8"),
             "decode_mj_below": ("decode: below resolution (< bound)", "#8f8f8f")}
    panel["fieldConfig"]["overrides"] = [
        {"matcher": {"id": "byName", "options": field},
         "properties": [{"id": "displayName", "value": name},
                        *([{"id": "color", "value": {"mode": "fixed", "fixedColor": grey}}] if grey else [])]}
        for field, (name, grey) in names.items()]
    return panel


def dashboards() -> dict[str, dict[str, Any]]:
    """File name → dashboard JSON."""
    perf = [
        _panel(1, "Decode tokens/s by model × quant — $device", "barchart", "throughput", (0, 0, 12, 12),
               fields=["label", "decode_tps"], unit="short", options=_bars(), repeat="device"),
        _panel(2, "Prefill vs decode tokens/s — $device", "barchart", "phases", (0, 12, 12, 12),
               fields=["label", "prefill_tps", "decode_tps"], unit="short", options=_bars(), repeat="device"),
        _energy_panel(),
        _panel(4, "Peak memory (MiB) — $device", "barchart", "memory", (0, 36, 12, 12),
               fields=["label", "peak_rss_mib"], unit="mbytes", options=_bars(), repeat="device"),
        _panel(5, "Time to first token (ms) — $device", "barchart", "ttft", (0, 48, 12, 12),
               fields=["label", "ttft_ms"], unit="ms", options=_bars(), repeat="device"),
        _panel(6, "All cells (mean over repetitions)", "table", "throughput", (0, 60, 24, 10)),
    ]
    series = {"id": "partitionByValues", "options": {"fields": ["metric"], "keepFields": False}}
    regress = [
        _panel(1, "Decode tokens/s by engine commit", "timeseries", "commit_series", (0, 0, 24, 12),
               unit="short", transformations=[{"id": "organize", "options": {"excludeByName": {"engine_commit": True}}},
                                              series],
               options={"legend": {"displayMode": "table", "placement": "right", "showLegend": True},
                        "tooltip": {"mode": "multi"}}),
        _panel(2, "Regression markers", "table", "regressions", (0, 12, 24, 8)),
    ]
    marker = {"name": "regressions", "enable": True, "iconColor": "red", "datasource": DATASOURCE,
              "target": {"refId": "Anno", "rawQuery": True, "format": "table", "editorMode": "code",
                         "rawSql": grafana_sql(BY_NAME["regressions"])}}
    pareto = [
        _panel(1, "Pareto: decode tokens/s vs mJ/token (size: peak MiB)", "xychart", "pareto", (0, 0, 24, 14),
               options={"mapping": "manual", "series": [{
                   "frame": {"matcher": {"id": "byIndex", "options": 0}},
                   "x": {"matcher": {"id": "byName", "options": "decode_tps"}},
                   "y": {"matcher": {"id": "byName", "options": "decode_mj_per_tok"}},
                   "size": {"matcher": {"id": "byName", "options": "peak_rss_mib"}},
                   "color": {"matcher": {"id": "byName", "options": "device"}}}],
                   "legend": {"showLegend": True}, "tooltip": {"mode": "single"}}),
        _panel(2, "Pareto cells", "table", "pareto", (0, 14, 24, 10)),
    ]
    health = [_panel(1, "Device health", "table", "device_health", (0, 0, 24, 12))]
    return {
        "farm-performance.json": _dashboard("farm-performance", "farm · performance", perf),
        "farm-regressions.json": _dashboard("farm-regressions", "farm · engine commits", regress,
                                            annotations=[marker], days=90),
        "farm-pareto.json": _dashboard("farm-pareto", "farm · Pareto", pareto),
        "farm-devices.json": _dashboard("farm-devices", "farm · device health", health, days=7),
    }


def panel_sql(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, SQL) of every query a dashboard runs: panels, variables, annotations."""
    out = [(f"panel {p['title']!r}", t["rawSql"]) for p in dashboard["panels"] for t in p.get("targets", [])]
    out += [(f"variable ${v['name']}", v["query"]) for v in dashboard["templating"]["list"]]
    out += [(f"annotation {a['name']!r}", a["target"]["rawSql"]) for a in dashboard["annotations"]["list"]
            if "target" in a]
    return out


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, board in dashboards().items():
        path = directory / name
        path.write_text(json.dumps(board, indent=2, ensure_ascii=False) + "\n")
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write(Path(sys.argv[1] if len(sys.argv) > 1 else "dashboards")):
        print(p)
