"""Charts as plain SVG text: grouped bars, time series with markers, scatter; and HTML tables.

Drawn on the server so `farm dashboard` and `farm report` show the same pictures, work offline and
need no chart library. Every data mark carries ``class="pt"`` and a ``<title>`` (the browser's
tooltip), which is also how the browser test counts what was drawn.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from datetime import datetime
from html import escape
from typing import Any

PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#bab0ac"]
FONT = 'font-family="system-ui, sans-serif" font-size="11"'


def color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def fmt(v: Any, digits: int = 3) -> str:
    """A number with `digits` significant figures, '-' for missing."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, bool | str):
        return str(v)
    if isinstance(v, datetime):
        return v.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(v, numbers.Integral):
        return str(v)
    v = float(v)
    if v == 0 or 1e-3 <= abs(v) < 1e6:
        return f"{v:.{max(0, digits - 1 - math.floor(math.log10(abs(v)))) if v else 0}f}"
    return f"{v:.{digits - 1}e}"


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    if hi <= lo:
        hi = lo + 1
    step = 10 ** math.floor(math.log10((hi - lo) / n))
    for m in (1, 2, 5, 10):
        if (hi - lo) / (step * m) <= n:
            step *= m
            break
    start = math.floor(lo / step) * step
    # the last tick reaches hi: charts scale to it, and a point above it would be drawn outside the plot
    return [start + i * step for i in range(math.ceil((hi - start) / step - 1e-9) + 1)]


def _legend(names: Sequence[str], x: float, y: float, width: float) -> tuple[str, float]:
    """Colour keys in rows that wrap at `width`; returns the SVG and the y below the last row."""
    parts, cx = [], x
    for i, name in enumerate(names):
        w = 24 + 6.4 * len(name)
        if cx + w > width and cx > x:
            cx, y = x, y + 15
        parts.append(f'<rect x="{cx:.1f}" y="{y - 9}" width="10" height="10" fill="{color(i)}"/>'
                     f'<text x="{cx + 14:.1f}" y="{y}" {FONT}>{escape(name)}</text>')
        cx += w
    return "".join(parts), y + 14


def _clip(label: str, n: int = 48) -> str:
    return label if len(label) <= n else label[: n - 1] + "…"


def _empty(width: int, message: str = "no data for these filters") -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="chart empty" width="{width}" height="60">'
            f'<text x="10" y="34" {FONT} fill="#777">{escape(message)}</text></svg>')


def bar_chart(groups: Sequence[str], series: dict[str, Sequence[float | None]], unit: str = "",
              width: int = 760, bounds: dict[str, Sequence[float | None]] | None = None) -> str:
    """Horizontal grouped bars: one block per group label, one bar per series (e.g. device).

    `bounds` (same shape as `series`): a value whose magnitude is within its bound is below resolution
    (energy per token inside the idle baseline's noise): its bar is grey and labelled "< bound"."""
    values = [v for vs in series.values() for v in vs if v is not None]
    if not groups or not values:
        return _empty(width)
    label_w = 14 + 6.8 * max(len(_clip(g)) for g in groups)
    bar_h, gap = 11, 8
    legend, top = _legend(list(series), 8, 14, width)
    plot_w = width - label_w - 70
    lo = min(0.0, min(values) * 1.05)  # a modelled energy can come out below zero: show it, don't hide it
    hi = max(0.0, max(values) * 1.05) or 1.0
    ticks = nice_ticks(lo, hi)
    lo, hi = min(lo, ticks[0]), max(hi, ticks[-1])

    def px(v: float) -> float:
        return label_w + plot_w * (v - lo) / (hi - lo)

    height = top + len(groups) * (len(series) * bar_h + gap) + 24
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart bars" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}">', legend]
    for t in ticks:
        x = px(t)
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top - 4}" y2="{height - 20}" stroke="#e4e4e4"/>'
                   f'<text x="{x:.1f}" y="{height - 6}" {FONT} text-anchor="middle">{fmt(t)}</text>')
    y = top
    for gi, g in enumerate(groups):
        out.append(f'<text x="{label_w - 6}" y="{y + len(series) * bar_h / 2 + 4:.1f}" {FONT} '
                   f'text-anchor="end">{escape(_clip(g))}<title>{escape(g)}</title></text>')
        for si, (name, vs) in enumerate(series.items()):
            v = vs[gi]
            b = (bounds or {}).get(name, [None] * len(groups))[gi]
            if v is not None and b is not None and abs(float(v)) <= float(b):
                # below resolution: a grey bar of the bound, its text saying so, the raw value in the tooltip
                x0, x1 = sorted((px(0.0), px(float(b))))
                out.append(f'<rect class="pt below" x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 0.5):.1f}" '
                           f'height="{bar_h - 1}" fill="#d0d0d0"><title>{escape(name)} · {escape(g)}: below '
                           f'resolution, &lt; {fmt(b)} {unit} (raw {fmt(v)})</title></rect>'
                           f'<text x="{x1 + 4:.1f}" y="{y + bar_h - 2}" {FONT} fill="#555">&lt; {fmt(b)} below '
                           f'resolution</text>')
            elif v is not None:
                x0, x1 = sorted((px(0.0), px(float(v))))
                out.append(f'<rect class="pt" x="{x0:.1f}" y="{y}" width="{max(x1 - x0, 0.5):.1f}" '
                           f'height="{bar_h - 1}" '
                           f'fill="{color(si)}"><title>{escape(name)} · {escape(g)}: {fmt(v)} {unit}</title></rect>')
            y += bar_h
        y += gap
    out.append(f'<text x="{width - 4}" y="{height - 6}" {FONT} text-anchor="end">{escape(unit)}</text></svg>')
    return "".join(out)


def _time(v: Any) -> float:
    if isinstance(v, datetime):
        return v.timestamp()
    return datetime.fromisoformat(str(v).replace("Z", "+00:00")).timestamp()


# Steps a time axis may tick at (seconds), and the label format each calls for.
_TIME_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
               172800, 604800, 1209600, 2592000]


def time_ticks(t0: float, t1: float, n: int = 6) -> tuple[list[float], str]:
    """Round instants (epoch s) inside [t0, t1], about `n` of them, and the strftime format their step
    needs: seconds for a run of a few minutes, minutes within a day, dates beyond. Every label differs."""
    span = max(t1 - t0, 1.0)
    step = next((s for s in _TIME_STEPS if span / s <= n), _TIME_STEPS[-1])
    first = math.ceil(t0 / step) * step
    ticks = [first + i * step for i in range(int((t1 - first) / step) + 1)]
    fmt_ = "%H:%M:%S" if step < 60 else "%H:%M" if step < 86400 else "%Y-%m-%d"
    return ticks, fmt_


def line_chart(series: dict[str, Sequence[tuple[Any, float | None, str]]], markers: Sequence[tuple[Any, str]] = (),
               unit: str = "", width: int = 760, height: int = 300) -> str:
    """Time series (x = timestamp, y, point label), with vertical markers (timestamp, text)."""
    pts = [(_time(t), y) for s in series.values() for t, y, _ in s if y is not None]
    if not pts:
        return _empty(width)
    xs = [p[0] for p in pts] + [_time(t) for t, _ in markers]
    x0, x1 = min(xs), max(xs)
    x1 = x1 if x1 > x0 else x0 + 3600
    ticks = nice_ticks(0, max(p[1] for p in pts) * 1.05)
    hi = ticks[-1] or 1.0
    left, right, top, bottom = 52, 12, 14, 40
    legend, h = _legend([_clip(n, 60) for n in series], left, height + 2, width)
    pw, ph = width - left - right, height - top - bottom

    def px(t: float) -> float:
        return left + pw * (t - x0) / (x1 - x0)

    def py(y: float) -> float:
        return top + ph * (1 - y / hi)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart series" width="{width}" height="{h}" '
           f'viewBox="0 0 {width} {h}">']
    for t in ticks:
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{py(t):.1f}" y2="{py(t):.1f}" stroke="#e4e4e4"/>'
                   f'<text x="{left - 4}" y="{py(t) + 4:.1f}" {FONT} text-anchor="end">{fmt(t)}</text>')
    ticks_t, tfmt = time_ticks(x0, x1)
    last_day = None
    for t in ticks_t:
        when = datetime.fromtimestamp(t)
        x = px(t)
        anchor = "start" if x < left + 30 else "end" if x > width - right - 30 else "middle"
        out.append(f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{top + ph}" y2="{top + ph + 4}" stroke="#999"/>'
                   f'<text class="tick" x="{x:.1f}" y="{top + ph + 14}" {FONT} text-anchor="{anchor}">'
                   f'{when.strftime(tfmt)}</text>')
        if "%d" not in tfmt and when.date() != last_day:  # the date under the first tick of each day
            out.append(f'<text x="{x:.1f}" y="{top + ph + 26}" {FONT} fill="#666" text-anchor="{anchor}">'
                       f'{when:%Y-%m-%d}</text>')
            last_day = when.date()
    for t, text in markers:
        x = px(_time(t))
        out.append(f'<line class="marker" x1="{x:.1f}" x2="{x:.1f}" y1="{top}" y2="{top + ph}" stroke="#d62728" '
                   f'stroke-dasharray="4 3"><title>{escape(text)}</title></line>')
    for i, (name, s) in enumerate(series.items()):
        xy = [(px(_time(t)), py(y), label, y) for t, y, label in s if y is not None]
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in xy)
        out.append(f'<polyline fill="none" stroke="{color(i)}" stroke-width="1.5" points="{path}"/>')
        out.extend(f'<circle class="pt" cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{color(i)}"><title>{escape(name)} · '
                   f'{escape(label)}: {fmt(v)} {unit}</title></circle>' for x, y, label, v in xy)
    out.append(legend + "</svg>")
    return "".join(out)


def pareto_front(points: Sequence[dict[str, Any]]) -> set[int]:
    """Indices of points no other point beats on all of: higher x, lower y, lower r (ties allowed)."""
    front = set()
    for i, p in enumerate(points):
        dominated = any(q["x"] >= p["x"] and q["y"] <= p["y"] and q["r"] <= p["r"] and
                        (q["x"], q["y"], q["r"]) != (p["x"], p["y"], p["r"]) for q in points)
        if not dominated:
            front.add(i)
    return front


def scatter(points: Sequence[dict[str, Any]], x_label: str, y_label: str, r_label: str,
            width: int = 760, height: int = 380) -> str:
    """Points {x, y, r, label, group}: area ∝ r, colour by group, Pareto-optimal points outlined."""
    points = [p for p in points if p["x"] is not None and p["y"] is not None and p["r"] is not None]
    if not points:
        return _empty(width)
    groups = list(dict.fromkeys(p["group"] for p in points))
    front = pareto_front(points)
    legend, top = _legend(groups, 56, 14, width)
    left, right, bottom = 56, 16, 36
    height += top - 28
    pw, ph = width - left - right, height - top - bottom
    ys = [p["y"] for p in points]
    xt, yt = nice_ticks(0, max(p["x"] for p in points) * 1.08), nice_ticks(min(0, min(ys) * 1.08), max(ys) * 1.08)
    xh, rmax = xt[-1] or 1.0, max(p["r"] for p in points) or 1.0
    yl, yh = yt[0], (yt[-1] if yt[-1] > yt[0] else yt[0] + 1.0)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart scatter" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}">', legend]
    for t in yt:
        y = top + ph * (1 - (t - yl) / (yh - yl))
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e4e4e4"/>'
                   f'<text x="{left - 4}" y="{y + 4:.1f}" {FONT} text-anchor="end">{fmt(t)}</text>')
    for t in xt:
        x = left + pw * t / xh
        out.append(f'<text x="{x:.1f}" y="{top + ph + 14}" {FONT} text-anchor="middle">{fmt(t)}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{height - 4}" {FONT} text-anchor="middle">{escape(x_label)} → '
               f'(outlined: Pareto-optimal; area ∝ {escape(r_label)})</text>'
               f'<text x="12" y="{top + ph / 2}" {FONT} transform="rotate(-90 12 {top + ph / 2})" '
               f'text-anchor="middle">{escape(y_label)}</text>')
    marks = []  # (x, y, r) of every point, for placing the labels
    for i in sorted(range(len(points)), key=lambda i: -points[i]["r"]):  # small points drawn on top
        p = points[i]
        x, y = left + pw * p["x"] / xh, top + ph * (1 - (p["y"] - yl) / (yh - yl))
        r = 3 + 11 * math.sqrt(p["r"] / rmax)
        marks.append((i, x, y, r))
        edge = ' stroke="#111" stroke-width="2"' if i in front else ""
        out.append(f'<circle class="pt{" front" if edge else ""}" cx="{x:.1f}" cy="{y:.1f}" r="{r:.1f}" '
                   f'fill="{color(groups.index(p["group"]))}" fill-opacity="0.7"{edge}><title>{escape(p["label"])}: '
                   f'{fmt(p["x"])} {escape(x_label)}, {fmt(p["y"])} {escape(y_label)}, {fmt(p["r"])} '
                   f'{escape(r_label)}{" · Pareto-optimal" if edge else ""}</title></circle>')
    names = short_labels([p["label"] for p in points], [p["group"] for p in points])
    placed, hidden = _place_labels(marks, names, front, (left, top, width - right, top + ph))
    out.extend(placed)
    if hidden:
        out.append(f'<text x="{width - right}" y="{top - 4}" {FONT} fill="#777" text-anchor="end">{hidden} label(s) '
                   "hidden where points crowd: hover a point</text>")
    out.append("</svg>")
    return "".join(out)


def short_labels(labels: Sequence[str], groups: Sequence[str]) -> list[str]:
    """Point labels without what the chart already says: the group (the colour's legend) and the words
    every label shares (a sweep's one test shape or thread count)."""
    words = [[w for w in lab.replace(g, " ").split() if w not in ("·", "-")] for lab, g in zip(labels, groups,
                                                                                              strict=True)]
    common = set.intersection(*(set(w) for w in words)) if len(words) > 1 else set()
    return [" ".join(w for w in ws if w not in common) or lab for ws, lab in zip(words, labels, strict=True)]


def _place_labels(marks: Sequence[tuple[int, float, float, float]], names: Sequence[str], front: set[int],
                  box: tuple[float, float, float, float]) -> tuple[list[str], int]:
    """Text next to each point where it overlaps no other label and stays in the plot (right, left, above,
    below) and covers no point; Pareto-optimal points choose first. Returns the SVG texts and how many found no room."""
    # the points themselves are taken too: a label over another point hides it
    taken: list[tuple[float, float, float, float]] = [(x - r, y - r, x + r, y + r) for _, x, y, r in marks]
    out, hidden = [], 0
    order = sorted(marks, key=lambda m: (m[0] not in front, m[1]))
    for i, x, y, r in order:
        w, h = 6.0 * len(names[i]), 11.0
        for ax, ay, anchor in ((x + r + 3, y + 4, "start"), (x - r - 3, y + 4, "end"),
                               (x, y - r - 4, "middle"), (x, y + r + 12, "middle")):
            x0 = ax if anchor == "start" else ax - w if anchor == "end" else ax - w / 2
            rect = (x0, ay - h + 2, x0 + w, ay + 2)
            inside = rect[0] >= box[0] and rect[2] <= box[2] and rect[1] >= box[1] - 12 and rect[3] <= box[3]
            if inside and not any(rect[0] < t[2] and t[0] < rect[2] and rect[1] < t[3] and t[1] < rect[3]
                                  for t in taken):
                taken.append(rect)
                out.append(f'<text class="pt-label" x="{ax:.1f}" y="{ay:.1f}" {FONT} fill="#333" '
                           f'text-anchor="{anchor}">{escape(names[i])}</text>')
                break
        else:
            hidden += 1
    return out, hidden


def html_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None, limit: int = 500) -> str:
    if not rows:
        return '<p class="empty">no rows</p>'
    columns = list(columns or rows[0].keys())
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f'<td class="{"num" if isinstance(r.get(c), int | float) else ""}">'
                                    f"{escape(fmt(r.get(c)))}</td>" for c in columns) + "</tr>"
                   for r in rows[:limit])
    more = f'<p class="more">{len(rows) - limit} more rows not shown</p>' if len(rows) > limit else ""
    return f'<table class="data"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}'
