"""Options and rendering shared by the CLI commands."""

from __future__ import annotations

import sys
from typing import Any

import click
import pandas as pd
from rich.console import Console
from rich.table import Table

# Piped output (CI logs, `| less`) gets a wide fixed width instead of rich's 80 columns.
console = Console(highlight=False, width=None if sys.stdout.isatty() else 180)

db_option = click.option("--db", "db_url", envvar="FARM_DB_URL", default=None,
                         help="Store URL (sqlite:///path or postgresql://...). Default: $FARM_DB_URL or "
                              "a SQLite file in the user data dir.")
devices_option = click.option("--devices", "devices_path", envvar="FARM_DEVICES", default=None,
                              type=click.Path(dir_okay=False),
                              help="Inventory YAML of devices (default: $FARM_DEVICES, else just `local`).")


def open_store(db_url: str | None):  # -> farm.store.Store
    """The store, with in-process runs whose process died marked interrupted (any command reaps them)."""
    from farm.dispatch.reaper import reap_abandoned
    from farm.store import Store

    store = Store(db_url)
    reap_abandoned(store)
    return store


def results_table(df: pd.DataFrame, title: str = "") -> Table:
    """The llama-bench-like table of a run: one line per job, mean ± sd over repetitions."""
    from farm.analysis.summary import fmt_energy, fmt_pm, summarize

    summary = summarize(df)
    table = Table(title=title or None, show_lines=False)
    # the cores and the power mode: columns only when some job ran off the defaults
    pinned = bool(summary["cpu_mask"].notna().any()) if len(summary) else False
    moded = bool((summary["power_mode"] != "default").any()) if len(summary) else False
    axes = [("cpus", "left")] * pinned + [("mode", "left")] * moded
    for col, justify in [("device", "left"), ("backend", "left"), ("model", "left"), ("quant", "left"),
                         ("test", "left"), ("t", "right"), *axes, ("prefill t/s", "right"), ("decode t/s", "right"),
                         ("TTFT ms", "right"), ("peak MiB", "right"), ("prefill mJ/tok", "right"),
                         ("decode mJ/tok", "right"), ("reps", "right"), ("flags", "left")]:
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for _, r in summary.iterrows():
        flags = [name for name, col in (("throttled", "throttled"), ("charging", "charging"),
                                        ("modelled-power", "power_modelled")) if r.get(col) is True]
        rss = r.get("peak_rss_bytes_mean")
        table.add_row(
            r["device"], r["backend"], r["model"], r["quant"], r["test"], str(r["threads"]),
            *([f"{r['cpus']} {r['cpu_mask']}"] if pinned else []), *([str(r["power_mode"])] if moded else []),
            fmt_pm(r["prefill_tps_mean"], r["prefill_tps_std"]), fmt_pm(r["decode_tps_mean"], r["decode_tps_std"]),
            fmt_pm(_ms(r["ttft_s_mean"]), _ms(r["ttft_s_std"]), 1),
            "-" if pd.isna(rss) else f"{rss / 2**20:.0f}",
            fmt_energy(r["prefill_j_per_tok_mean"], r["prefill_j_per_tok_std"]),
            fmt_energy(r["decode_j_per_tok_mean"], r["decode_j_per_tok_std"]),
            str(r["reps"]), ",".join(flags))
    return table


def _ms(v: Any) -> Any:
    return None if v is None or pd.isna(v) else v * 1e3


def failures_table(store: Any, run_id: str) -> Table | None:
    rows = [j for j in store.job_rows(run_id) if j.status == "failed"]
    if not rows:
        return None
    table = Table(title="failed jobs")
    for col in ("device", "model", "quant", "test", "class", "error"):
        table.add_column(col)
    for j in rows:
        test = f"pp{j.n_prompt}" if j.n_gen == 0 else (f"tg{j.n_gen}" if j.n_prompt == 0 else
                                                        f"pp{j.n_prompt}+tg{j.n_gen}")
        table.add_row(j.device, j.model, j.quant, test, j.error_class or "", (j.error or "")[:200])
    return table
