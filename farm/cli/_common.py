"""Options and rendering shared by the CLI commands."""

from __future__ import annotations

import sys
from typing import Any

import click
import pandas as pd
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

# Piped output (CI logs, `| less`) gets a wide fixed width instead of rich's 80 columns.
# markup=False: device names, device-reported models, model names, errors are untrusted text; a device
# calling itself `i3[/bold]` is printed as such (table cells included). farm's own styling goes
# through `styled`, which escapes what it interpolates.
console = Console(highlight=False, markup=False, width=None if sys.stdout.isatty() else 180)


def plain_console(**kwargs: Any) -> Console:
    """Another console (stderr, fixed width) with the same rule: no markup in printed text."""
    return Console(highlight=False, markup=False, **kwargs)


def styled(template: str, **values: Any) -> Text:
    """farm's own rich markup in `template`, with the untrusted `values` filled in literally.

    ``styled("run [bold]{run}[/]: {status}", run=run_id, status=s)``; format specs work (``{name:<16}``).
    """
    return Text.from_markup(template.format(**{k: _Escaped(v) for k, v in values.items()}))


class _Escaped(str):
    """A value whose formatted text is markup-escaped (after padding, so widths count what is shown)."""

    def __new__(cls, value: Any) -> _Escaped:
        return super().__new__(cls, str(value))

    def __format__(self, spec: str) -> str:
        return escape(format(str(self), spec))

db_option = click.option("--db", "db_url", envvar="FARM_DB_URL", default=None,
                         help="Store URL (sqlite:///path or postgresql://...). Default: $FARM_DB_URL or "
                              "a SQLite file in the user data dir.")
devices_option = click.option("--devices", "devices_path", envvar="FARM_DEVICES", default=None,
                              type=click.Path(dir_okay=False),
                              help="Inventory YAML of devices (default: $FARM_DEVICES, else just `local`).")


def check_output_path(path: str) -> None:
    """An output file's directory must exist and be writable, checked before any work is done."""
    import os
    from pathlib import Path

    from farm.errors import ConfigError

    parent = Path(path).expanduser().parent
    if not parent.is_dir():
        raise ConfigError(f"{path}: directory {str(parent)!r} does not exist")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"{path}: directory {str(parent)!r} is not writable")


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
    for col, justify in [("device", "left"), ("backend", "left"), ("model", "left"), ("quant", "left"),
                         ("test", "left"), ("t", "right"), ("prefill t/s", "right"), ("decode t/s", "right"),
                         ("TTFT ms", "right"), ("peak MiB", "right"), ("prefill mJ/tok", "right"),
                         ("decode mJ/tok", "right"), ("reps", "right"), ("flags", "left")]:
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for _, r in summary.iterrows():
        flags = [name for name, col in (("throttled", "throttled"), ("charging", "charging"),
                                        ("modelled-power", "power_modelled")) if r.get(col) is True]
        rss = r.get("peak_rss_bytes_mean")
        table.add_row(
            r["device"], r["backend"], r["model"], r["quant"], r["test"], str(r["threads"]),
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
