"""Options and rendering shared by the CLI commands."""

from __future__ import annotations

import os
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
# A COLUMNS set by the user (or a test) is honoured in both cases.
console = Console(highlight=False, markup=False,
                  width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 180)


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


# (header, short header, key in the summary or None) of the results table, in order; see results_table.
_IDENTITY = ["device", "backend", "model", "quant", "test", "threads", "rep"]
_DROP_ORDER = ["TTFT ms", "peak MiB", "prefill mJ/tok", "prefill t/s"]  # first to go when even short cells overflow
_SHORT = {"prefill t/s": "pp t/s", "decode t/s": "tg t/s", "peak MiB": "MiB",
          "prefill mJ/tok": "pp mJ/t", "decode mJ/tok": "tg mJ/t"}


def _table_width(columns: dict[str, list[str]]) -> int:
    """What rich needs for these columns, unwrapped: cells + one space of padding each side + borders."""
    return sum(max([len(h), *map(len, cells)]) + 3 for h, cells in columns.items()) + 1


def results_table(df: pd.DataFrame, title: str = "", raw: bool = False, width: int | None = None) -> Table:
    """The llama-bench-like table of a run: one line per job (per repetition with `raw`), mean ± sd.

    It fits `width` (default: the console's) the way llama-bench's markdown does: columns whose value is
    the same on every line move into the title, then headers shorten, then "± sd" goes, then the least
    needed columns go; a caption says what was left out and where to find it."""
    from farm.analysis.summary import fmt_energy, fmt_pm, summarize

    width = width or console.width
    summary = summarize(df, raw=raw)
    # the cores and the power mode: columns only when some job ran off the defaults
    pinned = bool(summary["cpu_mask"].notna().any()) if len(summary) else False
    moded = bool((summary["power_mode"] != "default").any()) if len(summary) else False
    cols: dict[str, list[str]] = {}
    plain: dict[str, list[str]] = {}  # the same cells without "± sd"
    for _, r in summary.iterrows():
        flags = [name for name, col in (("throttled", "throttled"), ("charging", "charging"),
                                        ("modelled-power", "power_modelled")) if r.get(col) is True]
        rss = r.get("peak_rss_bytes_mean")
        ident = {("t" if k == "threads" else k): str(r[k]) for k in _IDENTITY if k in r}
        if pinned:
            ident["cpus"] = f"{r['cpus']} {r['cpu_mask']}"
        if moded:
            ident["mode"] = str(r["power_mode"])
        cells = {
            **ident,
            "prefill t/s": (r["prefill_tps_mean"], r["prefill_tps_std"], 2),
            "decode t/s": (r["decode_tps_mean"], r["decode_tps_std"], 2),
            "TTFT ms": (_ms(r["ttft_s_mean"]), _ms(r["ttft_s_std"]), 1),
            "peak MiB": "-" if pd.isna(rss) else f"{rss / 2**20:.0f}",
            "prefill mJ/tok": ("energy", "prefill"), "decode mJ/tok": ("energy", "decode"),
            **({} if raw else {"reps": str(r["reps"])}), "flags": ",".join(flags)}
        for name, v in cells.items():
            if isinstance(v, tuple) and v[0] == "energy":
                m, sd, b = (r[f"{v[1]}_j_per_tok_mean"], r[f"{v[1]}_j_per_tok_std"], r[f"{v[1]}_j_per_tok_bound_mean"])
                full, short = fmt_energy(m, sd, b), fmt_energy(m, None, b)
            elif isinstance(v, tuple):
                full, short = fmt_pm(v[0], v[1], v[2]), fmt_pm(v[0], None, v[2])
            else:
                full = short = v
            cols.setdefault(name, []).append(full)
            plain.setdefault(name, []).append(short)
    below = any(c.startswith("<") for name in ("prefill mJ/tok", "decode mJ/tok") for c in cols.get(name, []))
    notes: list[str] = []
    moved: list[str] = []
    if not any(cols.get("flags", [])):
        cols.pop("flags", None)
    if _table_width(cols) > width and len(summary) > 0:
        for key in ("device", "backend", "quant", "t", "test", "model", "reps", "flags"):
            values = set(cols.get(key, []))
            if len(values) == 1 and key in cols:
                moved.append(f"{'t' if key == 't' else ''}{values.pop()}" + (" reps" if key == "reps" else ""))
                del cols[key]
    headers = {h: h for h in cols}
    if _table_width(cols) > width:
        headers = {h: _SHORT.get(h, h) for h in cols}
        cols = {headers[h]: v for h, v in cols.items()}
        plain = {headers.get(h, _SHORT.get(h, h)): v for h, v in plain.items()}
    if _table_width(cols) > width:
        cols = {h: plain[h] for h in cols}
        notes.append("± sd left out for width")
    dropped = []
    for name in _DROP_ORDER:
        h = _SHORT.get(name, name) if name not in cols else name
        if _table_width(cols) <= width:
            break
        if h in cols:
            del cols[h]
            dropped.append(h)
    if dropped:
        notes.append(f"left out for width: {', '.join(dropped)}")
    if notes:
        notes.append("all columns: farm results RUN --format csv")
    if below:
        notes.insert(0, "<x: below resolution (net energy within the idle baseline's noise); raw value in csv/json")
    head = " · ".join([title, " ".join(moved)] if moved and title else [title or " ".join(moved)])
    table = Table(title=head or None, show_lines=False, caption="; ".join(notes) or None)
    for h in cols:
        numeric = h not in (*_IDENTITY, "cpus", "mode", "flags")  # "t" (threads) is a number too
        table.add_column(h, justify="right" if numeric else "left", no_wrap=True)
    for i in range(len(summary)):
        table.add_row(*(cols[h][i] for h in cols))
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
