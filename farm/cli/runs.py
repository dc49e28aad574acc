"""`farm runs`, `farm status RUN [--watch]`, `farm results RUN`, `farm cancel RUN`."""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any

import click
from rich.live import Live
from rich.table import Table

from farm.cli._common import check_output_path, console, db_option, failures_table, open_store, results_table
from farm.errors import ConfigError


@click.command("runs")
@db_option
@click.option("-n", "--limit", default=20, show_default=True)
def runs_cmd(db_url: str | None, limit: int) -> None:
    """List recent runs."""
    store = open_store(db_url)
    runs = store.runs(limit)
    table = Table()
    # the run id is what a user copies into the next command: never cut, never wrapped
    table.add_column("run", no_wrap=True, min_width=max((len(r.id) for r in runs), default=3))
    table.add_column("name", overflow="fold")
    kinds = any(r.kind != "sweep" for r in runs)  # regress / noise / ingest runs: say which
    if kinds:
        table.add_column("kind", overflow="fold")
    table.add_column("executor", overflow="fold")
    table.add_column("status", no_wrap=True, min_width=max((len(r.status) for r in runs), default=6))
    table.add_column("jobs", justify="right")
    table.add_column("created", no_wrap=True)
    for r in runs:
        table.add_row(r.id, r.name, *([r.kind] if kinds else []), r.executor, r.status, str(r.n_jobs),
                      r.created_at.strftime("%m-%d %H:%M"))
    console.print(table)


def status_table(store: Any, run_id: str) -> Table:
    run = store.get_run(run_id)
    rows = store.job_rows(run.id)
    counts: dict[str, int] = {}
    for j in rows:
        counts[j.status] = counts.get(j.status, 0) + 1
    remaining = sum(j.est_s for j in rows if j.status in ("queued", "running"))
    done = sum(counts.get(s, 0) for s in ("done", "failed", "cancelled"))
    table = Table(title=f"run {run.id} ({run.name}) · {run.status} · {done}/{len(rows)} ended · "
                        f"≈{remaining:.0f} s of work left")
    for col in ("device", "status", "job", "agent", "attempts", "error"):
        table.add_column(col)
    for j in rows:
        if j.status in ("running", "failed") or (j.status == "queued" and j.attempts):
            table.add_row(j.device, j.status, f"{j.model} {j.quant} pp{j.n_prompt}/tg{j.n_gen} t{j.threads}",
                          j.agent or "", str(j.attempts), (j.error or "")[:80])
    summary = ", ".join(f"{k}={v}" for k, v in sorted(counts.items()))
    table.caption = summary
    return table


def watch(store: Any, run_id: str, interval: float = 1.0) -> str:
    """Refresh the status table until the run ends; returns its final status."""
    with Live(status_table(store, run_id), console=console, refresh_per_second=2) as live:
        while True:
            final = store.finish_run_if_complete(store.get_run(run_id).id)
            live.update(status_table(store, run_id))
            if final:
                return final
            time.sleep(interval)


@click.command("status")
@click.argument("run_id", metavar="RUN")
@db_option
@click.option("--watch", "-w", "follow", is_flag=True, help="Refresh until the run ends.")
def status_cmd(run_id: str, db_url: str | None, follow: bool) -> None:
    """Progress of a run: jobs by status, what is running where, failures."""
    store = open_store(db_url)
    if follow:
        watch(store, run_id)
    else:
        console.print(status_table(store, run_id))
    run = store.get_run(run_id)
    if run.status == "interrupted":
        console.print(f"continue it with: farm resume {run.id}", markup=False)


@click.command("results")
@click.argument("run_id", metavar="RUN")
@db_option
@click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "parquet"]), default="table",
              show_default=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to a file (required for parquet).")
@click.option("--raw", is_flag=True, help="Every repetition instead of one row per job (every format).")
def results_cmd(run_id: str, db_url: str | None, fmt: str, output: str | None, raw: bool) -> None:
    """Results of a run: a table, or csv/json/parquet for notebooks.

    Every format has one row per job (mean and sd over its repetitions) unless --raw, which gives one row
    per repetition with every stored column. Energy per token comes with its resolution bound and a
    below-resolution flag; the raw value is always kept."""
    from farm.analysis.summary import summarize, with_resolution

    if output:
        check_output_path(output)
    store = open_store(db_url)
    run = store.get_run(run_id)
    df = store.results_frame(run.id)
    if fmt == "table":
        console.print(results_table(df, title=f"{run.name} · run {run.id} · {run.status}", raw=raw))
        failed = failures_table(store, run.id)
        if failed is not None:
            console.print(failed)
        return
    df = with_resolution(df) if raw else summarize(df)
    if fmt == "parquet":
        if not output:
            raise ConfigError("--format parquet needs -o FILE")
        with _writing(output):
            df.to_parquet(output, index=False)
        console.print(f"wrote {len(df)} rows to {output}")
        return
    text = df.to_csv(index=False) if fmt == "csv" else df.to_json(orient="records", date_format="iso", indent=1)
    if output:
        with _writing(output), open(output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")


@click.command("cancel")
@click.argument("run_id", metavar="RUN")
@db_option
def cancel_cmd(run_id: str, db_url: str | None) -> None:
    """Cancel a run: queued jobs never start; a running job finishes and is kept."""
    store = open_store(db_url)
    run = store.get_run(run_id)
    n = store.cancel(run.id)
    console.print(f"run {run.id}: cancelled {n} job(s)")


commands = [runs_cmd, status_cmd, results_cmd, cancel_cmd]


@contextlib.contextmanager
def _writing(path: str) -> Iterator[None]:
    """A file that cannot be written (disk full, permissions) is one line, not a traceback."""
    try:
        yield
    except OSError as exc:
        raise ConfigError(f"{path}: cannot write: {exc.strerror or exc}") from None
