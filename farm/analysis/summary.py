"""Per-job summaries of repetitions: mean ± standard deviation, llama-bench style.

Energy per token carries its resolution (``*_j_per_tok_bound``, see :mod:`farm.power.energy`): a job
whose mean |J/token| is within the mean bound is *below resolution* (``*_j_per_tok_below_resolution``);
tables then print "<bound" and exports keep the raw value next to the bound and the flag.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

KEYS = ["job_id", "device", "backend", "model", "quant", "test", "threads", "cpus", "cpu_mask", "power_mode"]
# the axes older rows (and frames built by hand) lack: their value when absent
AXIS_DEFAULTS = {"cpus": "all", "cpu_mask": None, "power_mode": "default"}
METRICS = {
    "prefill_tps": "prefill t/s",
    "decode_tps": "decode t/s",
    "ttft_s": "TTFT s",
    "peak_rss_bytes": "peak RSS",
    "prefill_j_per_tok": "prefill J/tok",
    "decode_j_per_tok": "decode J/tok",
}


ENERGY = ("prefill", "decode")


def summarize(df: pd.DataFrame, raw: bool = False) -> pd.DataFrame:
    """One row per job: mean and std of each metric over its repetitions, plus flags.

    `raw`: one row per repetition instead (the same columns, with `rep`; std is empty), so a table or
    an export of every repetition reads like the summary."""
    keys = [*KEYS, "rep"] if raw else KEYS
    if df.empty:
        return pd.DataFrame(columns=[*keys, "reps"])
    df = with_axes(df)
    ok = df[df["exit_status"].fillna(0) == 0]
    grouped = ok.groupby(keys, sort=False, dropna=False)
    out = grouped.size().rename("reps").to_frame()
    for col in METRICS:
        out[f"{col}_mean"] = grouped[col].mean()
        out[f"{col}_std"] = grouped[col].std(ddof=1)
    for phase in ENERGY:
        bound = f"{phase}_j_per_tok_bound"
        out[f"{bound}_mean"] = grouped[bound].mean() if bound in ok else float("nan")
        out[f"{phase}_j_per_tok_below_resolution"] = below_resolution(out[f"{phase}_j_per_tok_mean"],
                                                                      out[f"{bound}_mean"])
    for flag in ("throttled", "charging", "power_modelled"):
        out[flag] = grouped[flag].max() if flag in ok else None
    return out.reset_index()


def with_resolution(df: pd.DataFrame) -> pd.DataFrame:
    """Every repetition with its below-resolution flag per phase next to the raw J/token and its bound."""
    out = df.copy()
    for phase in ENERGY:
        col, bound = f"{phase}_j_per_tok", f"{phase}_j_per_tok_bound"
        if col in out and bound in out:
            out[f"{col}_below_resolution"] = below_resolution(out[col], out[bound])
    return out


def below_resolution(value: pd.Series, bound: pd.Series) -> pd.Series:
    """True where |value| ≤ bound, False where both are known and it is not, None where either is unknown."""
    value, bound = pd.to_numeric(value, errors="coerce"), pd.to_numeric(bound, errors="coerce")  # None → NaN
    known = value.notna() & bound.notna()
    return (value.abs() <= bound).where(known, None).astype(object).where(known, None)


def with_axes(df: pd.DataFrame) -> pd.DataFrame:
    """`df` with the cpus / power_mode columns present (their defaults where a frame predates them)."""
    missing = {k: v for k, v in AXIS_DEFAULTS.items() if k not in df.columns}
    return df.assign(**missing) if missing else df


def axes_label(r: Any) -> str:
    """` cpus=big mode=nvpmodel:1` for a row (or cell dict) off the default cores and power mode; else ''."""
    cpus, mode = r.get("cpus"), r.get("power_mode")
    out = f" cpus={cpus}" if cpus not in (None, "all") and not pd.isna(cpus) else ""
    return out + (f" mode={mode}" if mode not in (None, "default") and not pd.isna(mode) else "")


def fmt_pm(mean: float | None, std: float | None, digits: int = 2) -> str:
    if mean is None or pd.isna(mean):
        return "-"
    if std is None or pd.isna(std):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def fmt_energy(mean: float | None, std: float | None, bound: float | None = None) -> str:
    """Energy per token in mJ (J/token is awkwardly small on phones); "<bound" when below resolution."""
    if mean is None or pd.isna(mean):
        return "-"
    if bound is not None and not pd.isna(bound) and abs(mean) <= bound:
        return f"<{bound * 1e3:.2g}"
    return fmt_pm(mean * 1e3, None if std is None or pd.isna(std) else std * 1e3, 2)
