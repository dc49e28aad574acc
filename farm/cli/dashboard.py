"""`farm dashboard`: serve the dashboard panels as a web page, read-only, from the store."""

from __future__ import annotations

import click

from farm.cli._common import console, db_option
from farm.errors import ConfigError


@click.command("dashboard")
@db_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. The page has no login: keep it on loopback unless behind a proxy.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535),
              help="Port (0 picks a free one).")
@click.option("--verbose", is_flag=True, help="Log every request.")
def command(db_url: str | None, host: str, port: int, verbose: bool) -> None:
    """The Grafana dashboards' views (tokens/s, prefill vs decode, energy, memory, TTFT, engine commits
    with regression markers, Pareto, device health) as a web page, filtered by device, model, quant,
    backend, KV depth, cores, power mode and engine commit. Works on SQLite and PostgreSQL stores; never
    writes to them."""
    from farm.store.db import make_engine, migrate, resolve_url
    from farm.web.server import make_server

    url = resolve_url(db_url)
    engine = make_engine(url)
    migrate(engine)  # the panels read result_rollup: bring an older store's schema up first (no data changes)
    engine.dispose()
    try:
        server = make_server(url, host, port, quiet=not verbose)
    except OSError as exc:  # port in use, an address this host does not have
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    h, p = server.server_address[:2]
    console.print(f"farm dashboard on http://{h}:{p}/ (store {engine.url.render_as_string(hide_password=True)}, "
                  "read-only) · Ctrl-C stops")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
