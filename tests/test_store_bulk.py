"""Store.save_results (the bulk path) and the result_rollup triggers, on SQLite and Postgres."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from farm.store import Store
from farm.web.seed import SeedSpec, synthetic_runs

ROLLUP_VS_RAW = ("SELECT (SELECT COUNT(*) FROM results), (SELECT SUM(n_rows) FROM result_rollup), "
                 "(SELECT AVG(decode_tps) FROM results WHERE exit_status = 0), "
                 "(SELECT SUM(s_decode_tps) / SUM(n_decode_tps) FROM result_rollup)")


def _check(store: Store, rows: int) -> None:
    with store.engine.connect() as conn:
        n, rolled, raw_mean, rolled_mean = conn.execute(text(ROLLUP_VS_RAW)).one()
    assert n == rows and int(rolled or 0) == rows
    if rows:
        assert float(rolled_mean) == pytest.approx(raw_mean, rel=1e-9)


def test_bulk_save_is_idempotent_and_keeps_the_rollup_exact(store_url: str) -> None:
    store = Store(store_url)
    spec = SeedSpec(runs=1, devices=["synthetic-pixel-8", "synthetic-rpi5"], repetitions=4,
                    end=datetime(2026, 1, 2, tzinfo=UTC))
    run_id, jobs, results = next(synthetic_runs(spec))
    store.create_run("bulk", jobs, run_id=run_id)
    store.save_results(results, jobs)
    _check(store, len(jobs) * 4)
    store.save_results(results + results[:3])  # a redelivered batch, and a job twice in one batch
    _check(store, len(jobs) * 4)
    for r in results[:5]:
        r.repetitions = r.repetitions[:2]  # a re-run job with fewer repetitions replaces the old ones
        r.repetitions[0].decode_s = (r.repetitions[0].decode_s or 1) * 3
    store.save_results(results[:5], jobs[:5])
    _check(store, len(jobs) * 4 - 5 * 2)
    assert {j.status for j in store.job_rows(run_id)} == {"done"}
    store.save_result(results[6], jobs[6])  # the single-job path agrees with the bulk one
    _check(store, len(jobs) * 4 - 5 * 2)
    with store.engine.begin() as conn:
        conn.execute(text("DELETE FROM runs WHERE id = :r"), {"r": run_id})  # cascades to jobs and results
    _check(store, 0)
