"""What an A/B run left in the store, read back for a verdict: pairs, failures, noise, builds, JSON.

Noise. ``farm noise`` is the regression schedule with one build on both sides (A/A); the spread of its
pair log ratios is stored in the run's meta and turned into the minimum detectable effect at the
pair count of each later ``farm regress`` on that device.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import pandas as pd

from farm.analysis import compare
from farm.analysis.summary import AXIS_DEFAULTS
from farm.store import Store


def record_builds(store: Store, backend: str, builds: dict[str, dict[str, Any]]) -> None:
    """One engine_builds row per (backend, commit, target, flags) this run used (idempotent)."""
    rows = []
    for prov in builds.values():
        flags = prov.get("build_flags") or ""
        flags = flags if isinstance(flags, str) else " ".join(flags)
        key = hashlib.sha256(json.dumps([backend, prov.get("engine_commit"), prov.get("target"), flags])
                             .encode()).hexdigest()[:32]
        rows.append({"id": key, "backend": backend, "source_commit": prov.get("engine_commit"),
                     "target": str(prov.get("target")), "flags": flags, "compiler": prov.get("compiler") or ""})
    store.record_engine_builds(rows)


def results_with_pairs(store: Store, run_id: str) -> pd.DataFrame:
    """The run's repetitions with the ABBA pair index of their job; a lock-step job's rows (rep = 2·i + side)
    get their index i back, so A's and B's i-th repetitions line up as in a pair of jobs."""
    df = store.results_frame(run_id)
    jobs = store.jobs(run_id)
    pair = {j.job_id: int(j.tags.get("pair", -1)) for j in jobs}
    step = {j.job_id for j in jobs if j.tags.get("interleave") == "step"}
    if df.empty:
        return df.assign(pair=pd.Series(dtype=int))
    return df.assign(pair=df["job_id"].map(pair), rep=df["rep"].where(~df["job_id"].isin(step), df["rep"] // 2))


def analyse(store: Store, run_id: str, *, threshold: float, alpha: float,
            noise: dict[tuple, float] | None = None) -> compare.Report:
    return compare.compare_paired(results_with_pairs(store, run_id), threshold=threshold, alpha=alpha, noise=noise)


def save_noise(store: Store, run_id: str, table: list[dict[str, Any]]) -> None:
    """Keep an A/A run's noise figures in its meta, where later regressions look them up."""
    store.update_run_meta(run_id, noise=_jsonable(table))


def load_noise(store: Store, devices: set[str], interleave: str = "process", limit: int = 200) -> dict[tuple, float]:
    """The newest A/A log-ratio sd per (cell..., metric) among finished noise runs on `devices` that used
    the same interleaving (a step-interleaved A/A says nothing about process-level noise, and back)."""
    found: dict[tuple, float] = {}
    for run in store.runs(limit=limit):  # newest first: the first hit per key wins
        if run.kind != "noise" or (run.meta or {}).get("interleave", "process") != interleave:
            continue
        for row in (run.meta or {}).get("noise", []):
            if row.get("device") not in devices:
                continue
            # rows saved before the cpus / power_mode axes lack them: theirs were the defaults
            key = (*[row.get(k, AXIS_DEFAULTS.get(k)) for k in compare.CELL], row["metric"])
            if key not in found and row.get("noise_sd") is not None and math.isfinite(row["noise_sd"]):
                found[key] = float(row["noise_sd"])
    return found


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def failed_jobs(store: Store, run_id: str) -> dict[str, list[str]]:
    """Errors of failed jobs per variant (a head that crashes where the base ran is a regression)."""
    out: dict[str, list[str]] = {}
    variant = {j.job_id: j.tags.get("variant", "?") for j in store.jobs(run_id)}
    for row in store.job_rows(run_id):
        if row.status == "failed":
            side = variant.get(row.id, "?")
            if side == "AB":  # a lock-step job: its error names the build that failed ("B: ...")
                side = (row.error or "")[:1] if (row.error or "")[1:3] == ": " else "AB"
            out.setdefault(side, []).append(f"{row.device}: {row.error_class}: {row.error}")
    return out


def report_json(report: compare.Report, **context: Any) -> dict[str, Any]:
    return _jsonable({**context, "regressions": len(report.regressions), "results": report.as_dicts()})
