"""The central store (SQLAlchemy: SQLite by default, PostgreSQL by URL)."""

from farm.store.store import TERMINAL, Store, new_run_id

__all__ = ["TERMINAL", "Store", "new_run_id"]
