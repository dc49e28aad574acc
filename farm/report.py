"""A run as one self-contained HTML file: plots, tables and provenance, to attach to a CI run.

Everything is inline (CSS, SVG charts from farm.web.svg, data tables); the file loads no script and
no network resource, so it opens the same from an artifact store, a mail or a laptop offline.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from html import escape
from typing import Any

import pandas as pd

from farm import __version__
from farm.analysis.summary import axes_label, summarize
from farm.web import svg

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px auto;max-width:1100px;color:#222;padding:0 16px}
h1{font-size:22px;margin-bottom:4px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}
.meta{color:#555}.warn{background:#fff3e0;border-left:4px solid #fb8c00;padding:6px 10px;margin:10px 0}
table.data{border-collapse:collapse;font-size:12px;margin:6px 0}
table.data th,table.data td{border-bottom:1px solid #eee;padding:3px 8px;text-align:left;white-space:nowrap}
table.data td.num{text-align:right;font-variant-numeric:tabular-nums}
pre{background:#f6f8fa;padding:10px;overflow-x:auto;font-size:12px}
.grid{display:grid;grid-template-columns:1fr;gap:8px}
"""
CHARTS = [  # (metric column of the summary, title, unit, scale)
    ("decode_tps", "Decode tokens/s", "tok/s", 1.0),
    ("prefill_tps", "Prefill tokens/s", "tok/s", 1.0),
    ("decode_j_per_tok", "Decode energy per token", "mJ/tok", 1e3),
    ("prefill_j_per_tok", "Prefill energy per token", "mJ/tok", 1e3),
    ("peak_rss_bytes", "Peak memory", "MiB", 1 / 2**20),
    ("ttft_s", "Time to first token", "ms", 1e3),
]


def _label(r: Any) -> str:
    return f"{r['model']} {r['quant']} {r['test']} t{r['threads']}{axes_label(r)}"


def _num(v: Any, scale: float = 1.0) -> float | None:
    return None if v is None or pd.isna(v) else float(v) * scale


def _charts(summary: pd.DataFrame) -> str:
    parts = []
    labels = list(dict.fromkeys(_label(r) for _, r in summary.iterrows()))
    devices = list(dict.fromkeys(summary["device"]))
    for col, title, unit, scale in CHARTS:
        if summary[f"{col}_mean"].isna().all():
            continue
        series = {d: [None] * len(labels) for d in devices}
        bounds = {d: [None] * len(labels) for d in devices} if f"{col}_bound_mean" in summary else None
        for _, r in summary.iterrows():
            series[r["device"]][labels.index(_label(r))] = _num(r[f"{col}_mean"], scale)
            if bounds is not None:
                bounds[r["device"]][labels.index(_label(r))] = _num(r[f"{col}_bound_mean"], scale)
        parts.append(f"<h3>{escape(title)} (mean over repetitions)</h3>"
                     + svg.bar_chart(labels, series, unit, bounds=bounds))
    if not summary["decode_j_per_tok_mean"].isna().all():
        points = [{"x": _num(r["decode_tps_mean"]), "y": _num(r["decode_j_per_tok_mean"], 1e3),
                   "r": _num(r["peak_rss_bytes_mean"], 1 / 2**20), "label": f"{r['device']} · {_label(r)}",
                   "group": r["device"]} for _, r in summary.iterrows()]
        parts.append("<h3>Pareto: decode tokens/s vs energy per token vs memory</h3>" +
                     svg.scatter(points, "decode tok/s", "decode mJ/tok", "peak MiB"))
    return f'<div class="grid">{"".join(parts)}</div>'


def _summary_rows(summary: pd.DataFrame) -> list[dict[str, Any]]:
    rows = []
    for _, r in summary.iterrows():
        flags = [f for f in ("throttled", "charging", "power_modelled") if r.get(f) is True]
        row = {"device": r["device"], "backend": r["backend"], "model": r["model"], "quant": r["quant"],
               "test": r["test"], "threads": int(r["threads"]), "reps": int(r["reps"])}
        for col, _title, unit, scale in CHARTS:
            mean, sd = _num(r[f"{col}_mean"], scale), _num(r[f"{col}_std"], scale)
            key = f"{col.replace('_bytes', '').replace('_j_per_tok', ' J/tok')} ({unit})"
            row[key] = ("-" if mean is None else f"{svg.fmt(mean)} ± {svg.fmt(sd)}" if sd is not None
                        else svg.fmt(mean))
            if r.get(f"{col}_below_resolution") is True:  # raw value kept, after the bound
                row[key] = f"< {svg.fmt(_num(r[f'{col}_bound_mean'], scale))} (below resolution; raw {row[key]})"
        row["flags"] = ",".join(flags)
        rows.append(row)
    return rows


def _provenance(run: Any, jobs: list[Any]) -> str:
    counts: dict[str, Counter[str]] = {k: Counter() for k in ("engine_commit", "engine_build", "model_sha256")}
    fingerprints: dict[str, dict[str, Any]] = {}
    for j in jobs:
        for key in counts:
            value = (j.provenance or {}).get(key)
            if value:
                counts[key][f"{value} ({j.model} {j.quant})" if key == "model_sha256" else str(value)] += 1
        if j.fingerprint:
            fingerprints.setdefault(j.device, j.fingerprint)
    rows = [{"what": key, "value": value, "jobs": n} for key, c in counts.items() for value, n in c.most_common()]
    extra = sorted({k for j in jobs for k in (j.provenance or {})} - set(counts))
    rows += [{"what": k, "value": ", ".join(sorted({str((j.provenance or {}).get(k)) for j in jobs
                                                    if k in (j.provenance or {})}))[:300], "jobs": ""} for k in extra]
    fp = [{"device": d, **{k: str(v)[:80] for k, v in f.items()}} for d, f in fingerprints.items()]
    return (svg.html_table(rows, ["what", "value", "jobs"]) + "<h3>Device fingerprints</h3>" + svg.html_table(fp)
            + f"<p class='meta'>sweep digest {escape(run.sweep_digest or '-')}</p>")


def render_report(store: Any, run_id: str) -> str:
    """The HTML report of one run of `store`."""
    run = store.get_run(run_id)
    jobs = store.job_rows(run.id)
    df = store.results_frame(run.id)
    summary = summarize(df)
    status = Counter(j.status for j in jobs)
    warn = []
    if (run.meta or {}).get("synthetic"):
        warn.append("This run holds labelled-synthetic figures (seeded test data), not measurements.")
    if not df.empty and df["power_modelled"].fillna(False).astype(bool).any():
        warn.append("Some energy figures are modelled (no power sensor on that device), not measured.")
    below = [p for p in ("prefill", "decode") if f"{p}_j_per_tok_below_resolution" in summary
             and (summary[f"{p}_j_per_tok_below_resolution"] == True).any()]  # noqa: E712 - None-aware
    if below:
        warn.append(f"{' and '.join(below).capitalize()} energy per token is below resolution in some jobs: the "
                    "net energy (after subtracting idle power) is within the noise of the idle baseline, so it is "
                    "shown as '< bound' (2 sd of the idle readings over the phase plus half the sensor step, per "
                    "token) with the raw value beside it.")
    if not df.empty and df["charging"].fillna(False).astype(bool).any():
        warn.append("Some repetitions ran while charging: phone energy figures are unreliable there.")
    if not df.empty and df["throttled"].fillna(False).astype(bool).any():
        warn.append("Some jobs throttled thermally: their speeds understate the device.")
    failed = [{"device": j.device, "model": j.model, "quant": j.quant, "class": j.error_class or "",
               "error": (j.error or "")[:300]} for j in jobs if j.status == "failed"]
    head = (f"<h1>farm run {escape(run.id)} · {escape(run.name)}</h1><p class='meta'>{escape(run.kind)} · "
            f"{escape(run.status)} · executor {escape(run.executor)} · created {svg.fmt(run.created_at)} · "
            f"finished {svg.fmt(run.finished_at)} · jobs {', '.join(f'{k} {v}' for k, v in sorted(status.items()))}"
            f" · {len(df)} repetitions</p>" + "".join(f"<div class='warn'>{escape(w)}</div>" for w in warn))
    body = [head, "<h2>Results</h2>", svg.html_table(_summary_rows(summary)) if len(summary) else "<p>no results</p>"]
    if len(summary):
        body += ["<h2>Charts</h2>", _charts(summary)]
    if failed:
        body += ["<h2>Failed jobs</h2>", svg.html_table(failed)]
    body += ["<h2>Provenance</h2>", _provenance(run, jobs)]
    if run.sweep_yaml:
        body += ["<h2>Sweep</h2>", f"<pre>{escape(run.sweep_yaml)}</pre>"]
    body.append(f"<p class='meta'>farm {__version__} · report made {datetime.now():%Y-%m-%d %H:%M:%S} · every "
                "repetition: <code>farm results RUN --raw --format parquet -o FILE</code></p>")
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>farm run {escape(run.id)}</title>"
            f"<style>{CSS}</style></head><body>{''.join(body)}</body></html>")
