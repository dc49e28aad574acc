"""Connecting to the store: URL resolution, engines, and schema migrations with Alembic.

SQLite (a file in the user's data dir) by default, PostgreSQL by URL (``--db`` or
``FARM_DB_URL``). Opening a store brings its schema to the newest migration.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError

from farm.errors import ConfigError, InfraError
from farm.paths import data_dir

MIGRATIONS = Path(__file__).parent / "migrations"
_migrated: set[str] = set()
_lock = threading.Lock()


def resolve_url(url: str | None = None) -> str:
    """``url``, else $FARM_DB_URL, else the SQLite file in the user's data dir."""
    url = url or os.environ.get("FARM_DB_URL")
    if not url:
        return f"sqlite:///{data_dir() / 'farm.db'}"
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    elif url.startswith("postgres://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgres://")
    return url


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")  # readers (dashboard) never block the writer
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")  # several agents on one host may share a SQLite store
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def make_engine(url: str | None = None) -> Engine:
    url = resolve_url(url)
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(f"store URL {url!r} is not a database URL: {exc}") from None
    shown = parsed.render_as_string(hide_password=True)
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise ConfigError(f"store URL {shown!r}: {backend!r} databases are not supported; "
                          f"use sqlite:///PATH or postgresql://USER@HOST/DB")
    if backend == "sqlite":
        # No file (sqlite:///, sqlite://) or :memory: is one private database per connection: the
        # coordinator's threads would each see an empty store and wait for each other forever.
        if not parsed.database or parsed.database == ":memory:":
            raise ConfigError(f"store URL {shown!r} names no file; use sqlite:///PATH (sqlite:////abs/path)")
        try:
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"store URL {shown!r}: cannot create its directory: {exc.strerror or exc}") from None
        engine = create_engine(url, connect_args={"timeout": 30})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # No pre-ping: it would cost a round trip per transaction. A pooled connection the server dropped
    # fails its first statement instead, with InfraError, which every store caller already retries
    # (agents, reapers, spool flushes); SQLAlchemy then replaces the pool's connections.
    try:
        return create_engine(url, pool_size=5, max_overflow=10)
    except (NoSuchModuleError, ImportError) as exc:
        raise ConfigError(f"store URL {shown!r}: its driver is not installed ({exc}); "
                          f"use postgresql://… (psycopg 3)") from None


@contextlib.contextmanager
def _migration_lock(engine: Engine) -> Iterator[None]:
    """Two processes opening a new SQLite store at once must not both create its tables: an exclusive
    lock file beside the database serialises them (PostgreSQL uses an advisory lock instead)."""
    path = engine.url.database if engine.url.get_backend_name() == "sqlite" else None
    if not path or path == ":memory:":
        yield
        return
    with open(f"{Path(path).expanduser()}.migrate.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def migrate(engine: Engine) -> None:
    """Upgrade the schema to the newest Alembic revision (once per process per URL)."""
    key = str(engine.url)
    with _lock:
        if key in _migrated:
            return
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        try:
            with _migration_lock(engine), engine.begin() as conn:
                if conn.dialect.name == "postgresql":  # held to the end of this transaction
                    conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7265747)")  # any fixed key: farm's
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        except OperationalError as exc:
            raise InfraError(f"store {engine.url.render_as_string(hide_password=True)} unreachable: "
                             f"{str(exc.orig).strip().splitlines()[0]}") from exc
        _migrated.add(key)
