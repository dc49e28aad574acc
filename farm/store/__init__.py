"""The central store (SQLAlchemy: SQLite by default, PostgreSQL by URL)."""

from farm.store.store import BUSY, TERMINAL, Store, new_run_id

__all__ = ["BUSY", "TERMINAL", "Store", "new_run_id"]
