"""Shared fixtures: an isolated FARM_HOME per session, and real database servers.

Tests that need a server (PostgreSQL, Redis, adb, sshd) use a real one. When it is missing they
skip on a developer machine, but fail under CI (``CI=true``): a missing part is a failure there.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.lab_fixtures import lab, lab_transport  # noqa: F401  (registered here, once: see lab_fixtures)
from tests.support import need, throwaway_database

# One FARM_HOME for the whole session: engine builds and zoo models are cached across tests,
# and nothing touches the user's real store or caches.
_SESSION_HOME = Path(tempfile.mkdtemp(prefix="farm-test-home-"))
if "FARM_HOME" not in os.environ:
    os.environ["FARM_HOME"] = str(_SESSION_HOME)
    # llama-bench takes ~3.5 min to build: the session home shares the user's llama.cpp build cache
    # (a link, so the builds themselves still go through FARM_HOME's cache path).
    import platformdirs

    _shared = Path(platformdirs.user_cache_dir("farm")) / "llamacpp"
    _shared.mkdir(parents=True, exist_ok=True)
    (_SESSION_HOME / "cache").mkdir(parents=True, exist_ok=True)
    (_SESSION_HOME / "cache" / "llamacpp").symlink_to(_shared, target_is_directory=True)
os.environ.pop("FARM_DB_URL", None)
os.environ.pop("FARM_DEVICES", None)

PG_ADMIN_URL = os.environ.get("FARM_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The admin URL of a reachable PostgreSQL server."""
    from sqlalchemy import create_engine, text

    try:
        engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
        ok = True
    except Exception:
        ok = False
    need(ok, f"PostgreSQL at {PG_ADMIN_URL}")
    return PG_ADMIN_URL


@pytest.fixture()
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    with throwaway_database(pg_server) as url:
        yield url


@pytest.fixture()
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'farm.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Both store dialects: every store test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'farm.db'}"
    return request.getfixturevalue("pg_url")


# ---- programs several test modules run (built once per session, cached across sessions) ----------------

@pytest.fixture(scope="session")
def engine() -> Path:
    """farm-engine, the host build (AVX2 where the CPU has it)."""
    from farm.engine.build import build

    return build().path


@pytest.fixture(scope="session")
def llama_logits() -> Path:
    """farm-llama-logits against the llama.cpp farm builds; llama-quantize lies beside it. .ci/run builds it
    before the tests; a developer machine without the build skips (CI never does)."""
    from farm.backends import llamacpp_build as lb
    from tests.support import IN_CI

    if lb.logits_cached() is None and not IN_CI:
        pytest.skip("llama.cpp's library not built yet (python -m farm.backends.llamacpp_build, ~4 min)")
    return lb.logits_program()


@pytest.fixture(scope="session")
def llama_quantize(llama_logits: Path) -> Path:
    return llama_logits.with_name("llama-quantize")
