"""Per-job summaries of repetitions: mean ± standard deviation, llama-bench style."""

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


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per job: mean and std of each metric over its repetitions, plus flags."""
    if df.empty:
        return pd.DataFrame(columns=[*KEYS, "reps"])
    df = with_axes(df)
    ok = df[df["exit_status"].fillna(0) == 0]
    grouped = ok.groupby(KEYS, sort=False, dropna=False)
    out = grouped.size().rename("reps").to_frame()
    for col in METRICS:
        out[f"{col}_mean"] = grouped[col].mean()
        out[f"{col}_std"] = grouped[col].std(ddof=1)
    for flag in ("throttled", "charging", "power_modelled"):
        out[flag] = grouped[flag].max() if flag in ok else None
    return out.reset_index()


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


def fmt_energy(mean: float | None, std: float | None) -> str:
    """Energy per token in mJ (J/token is awkwardly small on phones)."""
    if mean is None or pd.isna(mean):
        return "-"
    return fmt_pm(mean * 1e3, None if std is None or pd.isna(std) else std * 1e3, 2)
