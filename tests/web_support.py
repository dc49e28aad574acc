"""Fixtures of the dashboard tests: seeded stores (SQLite and a throwaway Postgres database) and
Grafana's expansion of macros and template variables, done the way Grafana's Postgres datasource does."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text

from farm.dispatch import failed_result
from farm.jobs import Job
from farm.store import Store
from farm.web.seed import DEVICES, SeedSpec, seed_store, synthetic_runs
from tests.support import throwaway_database


@dataclass
class Seeded:
    url: str
    store: Store
    run_ids: list[str]
    failed_device: str


def _seed(url: str) -> Seeded:
    store = Store(url)
    run_ids = seed_store(store, SeedSpec(runs=6))
    # a failed job and a registered device without results, so device health has both to show
    last = store.jobs(run_ids[-1])[0]
    failed = Job.model_validate({**last.model_dump(), "job_id": last.job_id + "-f", "index": 999, "threads": 2})
    store.create_run("synthetic-failures", [failed], run_id="synthetic-failures", executor="synthetic",
                     meta={"synthetic": True})
    store.save_result(failed_result(failed, "infra", "device went offline during staging (synthetic)"), failed)
    store.upsert_device("synthetic-spare", "pixel-8", "synthetic", agent="synthetic")
    return Seeded(url, store, run_ids, failed.device)


@pytest.fixture(scope="session")
def seeded_pg(pg_server: str) -> Iterator[Seeded]:
    """A throwaway Postgres database for the whole session, migrated and seeded; dropped at the end."""
    with throwaway_database(pg_server, "farm_web") as url:
        seeded = _seed(url)
        yield seeded
        seeded.store.engine.dispose()


@pytest.fixture(scope="session")
def seeded_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Seeded:
    path: Path = tmp_path_factory.mktemp("web") / "farm.db"
    return _seed(f"sqlite:///{path}")


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def seeded(request: pytest.FixtureRequest) -> Seeded:
    return request.getfixturevalue("seeded_sqlite" if request.param == "sqlite" else "seeded_pg")


def grafana_range() -> tuple[datetime, datetime]:
    """The dashboards' default range (now-30d .. now, plus a margin), read at call time: a constant taken at
    import ended before stores seeded later in a long session, and dropped their newest run."""
    now = datetime.now(UTC)
    return now - timedelta(days=30), now + timedelta(minutes=5)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def grafana_expand(sql: str, variables: Mapping[str, Sequence[str]],
                   time_range: tuple[datetime, datetime] | None = None) -> str:
    """What Grafana sends to Postgres: time macros as quoted RFC 3339 literals and multi-value
    variables as comma-separated single-quoted strings (quotes doubled)."""
    t0, t1 = time_range or grafana_range()
    sql = re.sub(r"\$__timeFilter\((\w+)\)", lambda m: f"{m[1]} BETWEEN '{_iso(t0)}' AND '{_iso(t1)}'", sql)
    sql = sql.replace("$__timeFrom()", f"'{_iso(t0)}'").replace("$__timeTo()", f"'{_iso(t1)}'")
    for var, values in variables.items():
        quoted = ",".join("'" + str(v).replace("'", "''") + "'" for v in values)
        sql = re.sub(r"\$\{" + var + r"\}|\$" + var + r"\b", lambda _m, q=quoted: q, sql)
    leftover = re.findall(r"\$\{?\w+", sql)
    assert not leftover, f"unexpanded Grafana macros or variables {leftover} in: {sql}"
    return sql


SEED_DEVICES = list(DEVICES)


SHAPE_TEST = "pp512+tg128"
REPS = 3


def store_with_pairs(url: str, field: str, value: Any, runs: int = 2, depth_in_test: bool = False) -> Store:
    """`runs` engine commits, each with two cells that differ only in `field` (for n_depth, only in the
    column unless `depth_in_test`: then also in the test name, pp512+tg128@d512, as farm's runs store it)."""
    store = Store(url)
    spec = SeedSpec(runs=runs, devices=["synthetic-pixel-8"], models=["smollm2-360m"], quants=["q4_0"],
                    repetitions=REPS, end=datetime(2026, 3, 2, tzinfo=UTC))
    for run_id, (job,), (result,) in synthetic_runs(spec):
        other = Job.model_validate({**job.model_dump(), "job_id": job.job_id + "-x", "index": 1, field: value})
        store.create_run(run_id, [job, other], run_id=run_id, executor="synthetic")
        store.save_results([result, result.model_copy(update={"job_id": other.job_id})], [job, other])
    if field == "n_depth" and not depth_in_test:
        # the rollup must split the cells by the column, not only by a test name that happens to carry the
        # depth (an import whose names do not). Also takes the UPDATE trigger path.
        with store.engine.begin() as conn:
            conn.execute(text("UPDATE results SET test = :t"), {"t": SHAPE_TEST})
    return store
