"""A/B comparison of stored repetitions: per cell and metric, a ratio, a CI, a p-value and a verdict.

Owns the table behind ``farm regress``, ``farm noise`` and ``farm compare``: which metrics are compared
and in which direction is better, how repetitions of A and B are paired (the ``pair`` index of the
ABBA schedule, then the repetition inside the job), and the markdown a CI comment shows. The numbers
come from :mod:`farm.analysis.stats`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from farm.analysis import stats
from farm.analysis.summary import axes_label, with_axes

CELL = ["device", "backend", "model", "quant", "test", "threads", "cpus", "power_mode"]


@dataclass(frozen=True)
class Metric:
    column: str
    label: str
    higher_is_better: bool
    unit: str
    scale: float = 1.0
    energy: bool = False  # judged only when power was measured, not modelled
    family: str = ""  # metrics of one family are one hypothesis in the multiple-testing correction


METRICS = [
    Metric("decode_tps", "decode t/s", True, "t/s", family="decode"),
    # The same decodes at their 10th-percentile step time (reference engine): a second look at one
    # question, blind to interference that slows some steps, blind also to a stall in a few steps or
    # to a slowdown of late (long-context) steps only, which the total sees.
    Metric("decode_step_tps", "decode t/s, fast steps (p10)", True, "t/s", family="decode"),
    Metric("prefill_tps", "prefill t/s", True, "t/s", family="prefill"),
    # TTFT is the prefill time plus one token: the same measurement as prefill t/s, not a new chance.
    Metric("ttft_s", "TTFT", False, "ms", 1e3, family="prefill"),
    Metric("peak_rss_bytes", "peak memory", False, "MiB", 1 / 2**20, family="memory"),
    Metric("decode_j_per_tok", "decode energy/token", False, "mJ", 1e3, energy=True, family="decode energy"),
    Metric("prefill_j_per_tok", "prefill energy/token", False, "mJ", 1e3, energy=True, family="prefill energy"),
]


@dataclass
class MetricResult:
    cell: dict[str, Any]
    metric: Metric
    comparison: stats.Comparison | None
    mde: float | None = None
    mde_source: str = ""
    verdict: stats.Verdict | None = None
    note: str = ""
    p_adjusted: float | None = None  # Holm-adjusted over the cell's judged metric families

    def as_dict(self) -> dict[str, Any]:
        return {**self.cell, "metric": self.metric.column, "label": self.metric.label,
                "higher_is_better": self.metric.higher_is_better,
                **(self.comparison.as_dict() if self.comparison else {}),
                "p_adjusted": self.p_adjusted, "mde": self.mde, "mde_source": self.mde_source,
                "verdict": self.verdict.label if self.verdict else ("not judged" if self.comparison else "no data"),
                "reason": self.verdict.reason if self.verdict else self.note}


@dataclass
class Report:
    results: list[MetricResult] = field(default_factory=list)

    @property
    def regressions(self) -> list[MetricResult]:
        return [r for r in self.results if r.verdict and r.verdict.label == "regression"]

    def as_dicts(self) -> list[dict[str, Any]]:
        return [r.as_dict() for r in self.results]


def _usable(df: pd.DataFrame) -> pd.DataFrame:
    df = with_axes(df)
    return df[df["exit_status"].fillna(0) == 0] if "exit_status" in df else df


def _modelled(rows: pd.DataFrame) -> bool:
    return "power_modelled" in rows and bool(rows["power_modelled"].fillna(False).astype(bool).any())


def _below_resolution(rows: pd.DataFrame, metric: Metric) -> bool:
    """Whether a side's energy per token is within the idle baseline's noise (median |value| ≤ median bound)."""
    bound = f"{metric.column}_bound"
    if not metric.energy or bound not in rows or rows[bound].isna().all():
        return False
    return bool(rows[metric.column].abs().median() <= rows[bound].median())


def paired_frames(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    """One row per (cell, pair, rep) with columns a and b: the A and B values that ran side by side."""
    sub = _usable(df)[[*CELL, "pair", "rep", "variant", metric]].dropna(subset=[metric])
    wide = sub.pivot_table(index=[*CELL, "pair", "rep"], columns="variant", values=metric, aggfunc="first")
    if "A" not in wide or "B" not in wide:
        return pd.DataFrame(columns=[*CELL, "pair", "rep", "a", "b"])
    return wide[["A", "B"]].dropna().rename(columns={"A": "a", "B": "b"}).reset_index()


def holm(p_by_family: dict[str, float]) -> dict[str, float]:
    """Holm step-down adjusted p-values: the family-wise error stays ≤ alpha over all the families."""
    order = sorted(p_by_family, key=p_by_family.__getitem__)
    m, running, out = len(order), 0.0, {}
    for i, fam in enumerate(order):
        running = max(running, min(1.0, (m - i) * p_by_family[fam]))
        out[fam] = running
    return out


def hochberg(ps: list[float]) -> list[float]:
    """Hochberg step-up adjusted p-values (valid for positively dependent tests: measures of one quantity)."""
    k = len(ps)
    order = sorted(range(k), key=ps.__getitem__, reverse=True)  # largest p first
    out, running = [1.0] * k, 1.0
    for i, idx in enumerate(order):
        running = min(running, (i + 1) * ps[idx])
        out[idx] = min(1.0, running)
    return out


def _judge(judged: list[tuple[MetricResult, float | None]], *, threshold: float, alpha: float) -> None:
    """Verdicts for one cell's compared metrics: Hochberg within a family, Holm across families.

    A family is one question (did decode get slower?) asked of several measures of the same runs;
    they are positively dependent, so Hochberg's step-up inside it is valid and costs little (two
    near-identical measures such as prefill t/s and TTFT keep their p). The family's p is its
    smallest adjusted member p (the Simes test of "nothing changed in this family"); families are
    Holm-adjusted against each other, and a member's final p is the larger of the two adjustments.
    """
    members: dict[str, list[MetricResult]] = {}
    for r, _ in judged:
        c = r.comparison
        assert c is not None
        if c.p_value >= 1.0 and c.ci_low == c.ci_high:
            continue  # every pair identical (peak memory, typically): no test, no chance of a false alarm
        members.setdefault(r.metric.family, []).append(r)
    within: dict[int, float] = {}
    family_p: dict[str, float] = {}
    for fam, rs in members.items():
        for r, q in zip(rs, hochberg([r.comparison.p_value for r in rs]), strict=True):  # type: ignore[union-attr]
            within[id(r)] = q
        family_p[fam] = min(within[id(r)] for r in rs)
    adjusted = holm(family_p)
    factor = {fam: len(family_p) - i for i, fam in enumerate(sorted(family_p, key=family_p.__getitem__))}
    for r, mde_val in judged:
        assert r.comparison is not None
        fam = r.metric.family
        r.p_adjusted = (max(adjusted[fam], min(1.0, factor[fam] * within[id(r)])) if id(r) in within
                        else r.comparison.p_value)
        r.verdict = stats.verdict(r.comparison, r.metric.higher_is_better, threshold=threshold,
                                  mde_value=mde_val, alpha=alpha, p_value=r.p_adjusted)


def compare_paired(df: pd.DataFrame, *, threshold: float, alpha: float,
                   noise: dict[tuple, float] | None = None) -> Report:
    """Compare variant B with A in a run of ABBA pairs. `noise` maps (cell..., metric) → A/A log-ratio sd.

    Within a cell every judged metric is a chance of a false alarm, so p-values are Holm-adjusted
    over the cell's metric families (decode; prefill with TTFT; memory; energies): an A/A run then
    raises any alarm in a cell with probability ≤ alpha, not alpha per metric. A metric whose pairs are
    all identical (peak memory of one binary) cannot raise one and is not counted (Tarone's rule for
    discrete tests). A clear regression loses nothing: 10 pairs all slower give p ≈ 0.002, ×4 families
    is still ≪ 0.05.
    """
    report = Report()
    usable = _usable(df)
    metrics = [m for m in METRICS if m.column in df]  # a frame from an older store may lack newer metrics
    frames = {m.column: paired_frames(df, m.column) for m in metrics}
    for cell in usable[CELL].drop_duplicates().to_dict("records"):
        measured = usable[(usable[CELL] == pd.Series(cell)).all(axis=1)]
        judged: list[tuple[MetricResult, float | None]] = []  # (result, MDE) awaiting a verdict
        for metric in metrics:
            frame = frames[metric.column]
            rows = frame[(frame[CELL] == pd.Series(cell)).all(axis=1)] if len(frame) else frame
            # Ratios need positive values: net energy can come out ≤ 0 when the idle baseline was noisy.
            rows = rows[(rows["a"] > 0) & (rows["b"] > 0)] if len(rows) else rows
            if len(rows) < 2:
                if measured[metric.column].notna().any():  # measured, but B (or A) is missing: say so
                    report.results.append(MetricResult(cell, metric, None,
                                                       note="fewer than 2 complete A/B pairs with values > 0"))
                continue
            blind = [v for v in ("A", "B") if _below_resolution(measured[measured["variant"] == v], metric)]
            if blind:
                report.results.append(MetricResult(cell, metric, None, note=f"below resolution on "
                                                                            f"{' and '.join(blind)}: not compared"))
                continue
            c = stats.paired(rows["a"].to_numpy(), rows["b"].to_numpy())
            if metric.energy and _modelled(measured):
                # A modelled power figure (no sensor: P from CPU load) shows how load moves, it is not a
                # measurement: comparing it would only add a chance of a false alarm. Shown, not judged.
                report.results.append(MetricResult(cell, metric, c, note="power is modelled on this device: "
                                                                        "shown, not judged"))
                continue
            mde_run = stats.mde(c.noise_sd or 0.0, len(rows), alpha)
            key = (*[cell[k] for k in CELL], metric.column)
            sd_aa = (noise or {}).get(key)
            mde_aa = stats.mde(sd_aa, len(rows), alpha) if sd_aa is not None else None
            # The bar is the larger of the stored A/A noise and this run's own: a run disturbed by a
            # neighbour's compile cannot call a change its own spread does not resolve.
            mde_val, source = (mde_run, "this run") if mde_aa is None or mde_run > mde_aa else (mde_aa, "A/A")
            result = MetricResult(cell, metric, c, mde_val, source)
            report.results.append(result)
            judged.append((result, mde_val))
        _judge(judged, threshold=threshold, alpha=alpha)
    return report


def compare_unpaired(a: pd.DataFrame, b: pd.DataFrame, *, threshold: float, alpha: float) -> Report:
    """Compare two stored runs cell by cell (no pairing across runs): Mann–Whitney and ratio of medians."""
    report = Report()
    a, b = _usable(a), _usable(b)
    common = a[CELL].drop_duplicates().merge(b[CELL].drop_duplicates(), on=CELL)
    for cell in common.to_dict("records"):
        sel_a = (a[CELL] == pd.Series(cell)).all(axis=1)
        sel_b = (b[CELL] == pd.Series(cell)).all(axis=1)
        judged: list[tuple[MetricResult, float | None]] = []
        for metric in (m for m in METRICS if m.column in a and m.column in b):
            va = a.loc[sel_a, metric.column].dropna().to_numpy(dtype=float)
            vb = b.loc[sel_b, metric.column].dropna().to_numpy(dtype=float)
            if len(va) < 2 or len(vb) < 2:
                continue
            blind = [side for side, df, sel in (("A", a, sel_a), ("B", b, sel_b)) if _below_resolution(df[sel], metric)]
            if blind or min(va.min(), vb.min()) <= 0:
                # A ratio of energies inside the idle noise (or ≤ 0 after idle subtraction) means nothing.
                report.results.append(MetricResult(cell, metric, None, note="below resolution on "
                                                   + (" and ".join(blind) or "a side") + ": not compared"))
                continue
            mde_val = stats.mde_unpaired(va, vb, alpha)
            result = MetricResult(cell, metric, stats.unpaired(va, vb), mde_val, "this run")
            report.results.append(result)
            judged.append((result, mde_val))
        _judge(judged, threshold=threshold, alpha=alpha)
    return report


def noise_table(report: Report) -> list[dict[str, Any]]:
    """From an A/A comparison: per cell and metric the log-ratio sd and the MDE at the run's pair count."""
    out = []
    for r in report.results:
        if r.comparison is None or r.comparison.noise_sd is None or not math.isfinite(r.comparison.noise_sd):
            continue
        out.append({**r.cell, "metric": r.metric.column, "noise_sd": r.comparison.noise_sd,
                    "n_pairs": r.comparison.n_a, "mde": r.mde if r.mde_source == "this run" else
                    stats.mde(r.comparison.noise_sd, r.comparison.n_a),
                    "aa_change": r.comparison.change, "aa_p": r.comparison.p_value})
    return out


_ICON = {"regression": "❌ regression", "improvement": "✅ improvement", "within noise": "〰 within noise",
         "no change": "· no change", "inconclusive": "? inconclusive"}


def _fmt(v: float | None, m: Metric) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    x = v * m.scale
    return f"{x:.0f}" if abs(x) >= 1000 else (f"{x:.1f}" if abs(x) >= 10 else f"{x:.3g}")


def pct(x: float) -> str:
    """A relative size for humans: beyond ±100% the digits mean nothing more than "huge"."""
    if not math.isfinite(x):
        return "∞"
    return ">100%" if x > 1 else f"{x:.1%}"


def markdown(report: Report, title: str, header_lines: list[str]) -> str:
    """The CI comment: a headline, context lines, and one table row per cell × metric."""
    statistics = sorted({r.comparison.statistic for r in report.results if r.comparison and r.comparison.statistic})
    inconclusive = [r for r in report.results if r.verdict and r.verdict.label == "inconclusive"]
    notes = [f"base, head and change: {s}" for s in statistics]
    if inconclusive:  # say in words what the "?" rows mean: no evidence either way, not evidence of none
        worst = max(r.mde if r.mde is not None else math.inf for r in inconclusive)
        notes.append(f"? inconclusive ({len(inconclusive)} row(s)): not significant, but the test could not have "
                     f"seen a change below its MDE (up to {pct(worst)}); more repetitions resolve smaller changes")
    lines = [f"### {title}", "", *header_lines, *notes, "",
             "| device | cell | metric | base | head | change | 95% CI | p (Holm) | MDE | verdict |",
             "|---|---|---|---:|---:|---:|---|---:|---:|---|"]
    for r in report.results:
        cell = f"{r.cell['backend']} {r.cell['model']} {r.cell['quant']} {r.cell['test']} t{r.cell['threads']}"
        cell += axes_label(r.cell)
        c = r.comparison
        if c is None:
            dashes = " | ".join("-" * 6)
            lines.append(f"| {r.cell['device']} | {cell} | {r.metric.label} | {dashes} | no data: {r.note} |")
            continue
        mde = "-" if r.mde is None else pct(r.mde) + (f" ({r.mde_source})" if r.mde_source else "")
        lines.append(
            f"| {r.cell['device']} | {cell} | {r.metric.label} ({r.metric.unit}) | {_fmt(c.base, r.metric)} | "
            f"{_fmt(c.head, r.metric)} | {c.change:+.1%} | [{c.ci_low - 1:+.1%}, {c.ci_high - 1:+.1%}] | "
            f"{c.p_value if r.p_adjusted is None else r.p_adjusted:.2g} | {mde} | "
            f"{_ICON[r.verdict.label] if r.verdict else '· not judged: ' + r.note} |")
    return "\n".join(lines) + "\n"
