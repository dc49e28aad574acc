"""`farm report RUN --html out.html`: a self-contained HTML report of a run."""

from __future__ import annotations

from pathlib import Path

import click

from farm.cli._common import check_output_path, console, db_option, open_store
from farm.errors import ConfigError


@click.command("report")
@click.argument("run_id", metavar="RUN")
@db_option
@click.option("--html", "html_path", required=True, type=click.Path(dir_okay=False),
              help="Where to write the report (one file: inline charts and styles, no network).")
def command(run_id: str, db_url: str | None, html_path: str) -> None:
    """Plots, tables and provenance of a run in one HTML file, e.g. to attach to a CI run."""
    from farm.report import render_report

    check_output_path(html_path)
    store = open_store(db_url)
    html = render_report(store, run_id)
    try:
        Path(html_path).write_text(html, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{html_path}: cannot write: {exc.strerror or exc}") from None
    console.print(f"wrote {html_path} ({len(html) / 1024:.0f} KiB)")
