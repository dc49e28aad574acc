"""`farm dashboard`: a read-only HTTP server of the dashboard panels over any store.

Standard library only (``http.server``): a page, its script and style, and JSON endpoints whose
SQL is the panel SQL Grafana runs (farm.web.queries). It opens the database read-only (SQLite
``mode=ro``; Postgres ``default_transaction_read_only``), answers GET only, and binds to
127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import json
import threading
from datetime import datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url

from farm.store.db import resolve_url
from farm.web import panels
from farm.web.queries import BY_NAME, FILTERS, OPTIONS, QUERIES, run_query

STATIC = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8"),
          "/style.css": ("style.css", "text/css; charset=utf-8")}


def read_only_engine(url: str | None) -> Engine:
    """An engine that cannot write, whatever a query tried."""
    url = resolve_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database or ""
        engine = create_engine(f"sqlite:///file:{path}?mode=ro&uri=true", connect_args={"timeout": 30})

        def pragmas(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.execute("PRAGMA busy_timeout=30000")
            dbapi_conn.execute("PRAGMA query_only=ON")

        event.listen(engine, "connect", pragmas)
        return engine
    # jit off: compiling a plan costs more than these small rollup queries take to run; custom plans:
    # psycopg prepares a statement run 5 times, and Postgres' generic plan for it guesses the time range
    # instead of reading it (seen: 2x slower panels)
    return create_engine(url, pool_pre_ping=True, pool_size=4, max_overflow=4, connect_args={
        "options": "-c default_transaction_read_only=on -c jit=off -c plan_cache_mode=force_custom_plan"})


class BadRequest(ValueError):
    """A malformed query parameter: answered 400, never 500."""


def _time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{value!r} is not an ISO 8601 date/time") from None
    if not 1970 <= t.year <= 9999:  # 0001-01-01 overflows timezone arithmetic and epoch conversions
        raise BadRequest(f"{value!r} is outside 1970-9999")
    return t


LOOPBACK_NAMES = ("127.0.0.1", "localhost", "[::1]")


def host_allowed(host_header: str | None, bound_host: str, bound_port: int) -> bool:
    """Whether a request's Host header may be served (DNS rebinding guard).

    A server bound to a loopback address answers only requests addressed to a loopback name and its
    own port: a web page that rebinds evil.example to 127.0.0.1 sends ``Host: evil.example:PORT``
    and is refused. A server bound to another address (the user chose to expose it) is not checked.
    """
    if bound_host not in ("127.0.0.1", "::1", "localhost"):
        return True
    return host_header is not None and host_header.lower() in {f"{n}:{bound_port}" for n in LOOPBACK_NAMES}


class Dashboard:
    """The application: routes a GET path and query string to (status, content type, body)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def panel(self, name: str, args: dict[str, list[str]]) -> dict[str, Any]:
        q = BY_NAME[name]
        filters = {v: args.get(v, []) for v in FILTERS}
        t_from, t_to = _time(args.get("from", [None])[0]), _time(args.get("to", [None])[0])
        with self.engine.connect() as conn:
            rows = run_query(conn, q, filters, t_from, t_to)
            markers = run_query(conn, BY_NAME["regressions"], filters, t_from, t_to) if q.chart == "series" else []
        rows = panels.clean(rows)
        return {"name": q.name, "title": q.title, "chart": q.chart, "rows": rows, "html": panels.render(q, rows,
                                                                                                         markers)}

    def options(self, args: dict[str, list[str]]) -> dict[str, list[Any]]:
        t_from, t_to = _time(args.get("from", [None])[0]), _time(args.get("to", [None])[0])
        with self.engine.connect() as conn:
            return {q.name.removeprefix("options_"): [r["value"] for r in run_query(conn, q, {}, t_from, t_to)]
                    for q in OPTIONS}

    def handle(self, path: str, query: str) -> tuple[int, str, bytes]:
        try:
            return self._route(path, parse_qs(query))
        except BadRequest as exc:
            return _json({"error": str(exc)}, 400)

    def _route(self, path: str, args: dict[str, list[str]]) -> tuple[int, str, bytes]:
        if path in STATIC:
            name, ctype = STATIC[path]
            return 200, ctype, resources.files("farm.web").joinpath("static", name).read_bytes()
        if path == "/api/panels":
            return _json([{"name": q.name, "title": q.title, "chart": q.chart} for q in QUERIES])
        if path == "/api/options":
            return _json(self.options(args))
        if path.startswith("/api/panel/"):
            name = path.removeprefix("/api/panel/")
            if name not in BY_NAME:
                return _json({"error": f"no panel {name!r}"}, 404)
            try:
                return _json(self.panel(name, args))
            except ValueError as exc:  # a malformed from/to
                return _json({"error": str(exc)}, 400)
        return _json({"error": f"no route {path}"}, 404)


def _json(body: Any, status: int = 200) -> tuple[int, str, bytes]:
    return status, "application/json", json.dumps(body, default=str).encode()


class _Handler(BaseHTTPRequestHandler):
    app: Dashboard
    quiet = True

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        host, port = self.server.server_address[:2]
        if not host_allowed(self.headers.get("Host"), str(host), int(port)):
            status, ctype, body = _json({"error": "Host header is not this loopback server's address"}, 403)
        else:
            try:
                status, ctype, body = self.app.handle(parts.path, parts.query)
            except Exception as exc:  # the server stays up; the page shows the error in the panel
                status, ctype, body = _json({"error": f"{type(exc).__name__}: {exc}"}, 500)
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def _refuse(self) -> None:
        self.send_error(HTTPStatus.METHOD_NOT_ALLOWED, "the dashboard is read-only")

    do_POST = do_PUT = do_DELETE = do_PATCH = _refuse

    def log_message(self, format: str, *args: Any) -> None:
        if not self.quiet:
            super().log_message(format, *args)


def make_server(url: str | None, host: str = "127.0.0.1", port: int = 8765, quiet: bool = True) -> ThreadingHTTPServer:
    """A bound server (port 0 picks a free one: see ``server.server_address``); call serve_forever()."""
    handler = type("Handler", (_Handler,), {"app": Dashboard(read_only_engine(url)), "quiet": quiet})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def serve_in_thread(url: str | None, host: str = "127.0.0.1", port: int = 0) -> tuple[ThreadingHTTPServer, str]:
    """Start a server in a daemon thread (tests, notebooks); returns it and its base URL."""
    server = make_server(url, host, port)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    h, p = server.server_address[:2]
    return server, f"http://{h}:{p}"
