"""Store benchmark: ingest rate through the bulk path, and each dashboard query's latency at scale.

    python bench/store.py                       # 1M rows into a throwaway Postgres database
    python bench/store.py --rows 200000 --db postgresql://postgres@127.0.0.1:5432/mydb --keep

Rows are labelled-synthetic (farm.web.seed) and go through ``Store.create_run`` +
``Store.save_results``, the path agents use, so triggers (the dashboard rollup), indexes and
constraints all cost what they cost in production. Then every dashboard query runs as Grafana
sends it (macros expanded, every variable at "All", server defaults incl. JIT) and as
`farm dashboard` runs it (bound parameters, read-only, JIT off), each ``--samples`` times after
warm-up; p50/p95/max are printed and written as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy import create_engine, text

from farm.store import Store
from farm.web.queries import OPTIONS, QUERIES, grafana_sql, run_query
from farm.web.seed import SeedSpec, synthetic_runs
from farm.web.server import read_only_engine

ADMIN = os.environ.get("FARM_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def ingest(store: Store, rows: int) -> dict[str, Any]:
    per_run = 5 * 4 * 3 * 2 * 4 * 10  # devices × models × quants × shapes × threads × repetitions
    runs = max(1, -(-rows // per_run))
    spec = SeedSpec(runs=runs, threads=[1, 2, 4, 8], shapes=[(512, 128), (128, 32)], repetitions=10,
                    every=timedelta(hours=2), runs_per_commit=4, regression_run=runs // 8,
                    end=datetime.now(UTC))
    saved = save_s = total_s = 0.0
    started = time.perf_counter()
    for i, (run_id, jobs, results) in enumerate(synthetic_runs(spec)):
        t0 = time.perf_counter()
        store.create_run(f"synthetic-bench-{i}", jobs, run_id=run_id, executor="synthetic",
                         meta={"synthetic": True, "note": "bench/store.py"})
        t1 = time.perf_counter()
        store.save_results(results, jobs)
        t2 = time.perf_counter()
        save_s += t2 - t1
        total_s += t2 - t0
        saved += sum(len(r.repetitions) for r in results)
        if i % 20 == 0 or i == runs - 1:
            print(f"  {saved:>9,.0f} rows · {saved / save_s:,.0f} rows/s (save_results) · "
                  f"{time.perf_counter() - started:.0f} s", flush=True)
    return {"rows": int(saved), "runs": runs, "save_results_rows_per_s": saved / save_s,
            "with_create_run_rows_per_s": saved / total_s}


def _expand(sql: str, values: dict[str, list[str]], t0: datetime, t1: datetime) -> str:
    """Grafana's expansion (see tests/web_support.grafana_expand): quoted literals, "All" = every value."""
    iso = [t.astimezone(UTC).strftime("'%Y-%m-%dT%H:%M:%SZ'") for t in (t0, t1)]
    sql = sql.replace("$__timeFrom()", iso[0]).replace("$__timeTo()", iso[1])
    import re

    sql = re.sub(r"\$__timeFilter\((\w+)\)", lambda m: f"{m[1]} BETWEEN {iso[0]} AND {iso[1]}", sql)
    for var, vals in values.items():
        sql = sql.replace(f"(${var})", "(" + ",".join("'" + v.replace("'", "''") + "'" for v in vals) + ")")
    return sql


def _stats(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {"p50_ms": statistics.median(samples) * 1e3, "p95_ms": samples[int(0.95 * (len(samples) - 1))] * 1e3,
            "max_ms": samples[-1] * 1e3}


def latency(url: str, samples: int, days: int) -> dict[str, dict[str, Any]]:
    t1 = datetime.now(UTC) + timedelta(minutes=1)
    t0 = t1 - timedelta(days=days)
    grafana_engine = create_engine(url)  # Grafana's connection: server defaults
    web_engine = read_only_engine(url)
    out: dict[str, dict[str, Any]] = {}
    with grafana_engine.connect() as g, web_engine.connect() as w:
        values = {q.name.removeprefix("options_"): [r["value"] for r in run_query(w, q, {}, t0, t1)]
                  for q in OPTIONS}
        for q in [*QUERIES, *OPTIONS]:
            sql = text(_expand(grafana_sql(q), values, t0, t1))
            times: dict[str, list[float]] = {"grafana": [], "web": []}
            for i in range(samples + 3):  # 3 warm-up runs
                a = time.perf_counter()
                n = len(g.execute(sql).all())
                b = time.perf_counter()
                run_query(w, q, {}, t0, t1)
                c = time.perf_counter()
                if i >= 3:
                    times["grafana"].append(b - a)
                    times["web"].append(c - b)
            out[q.name] = {"rows": n, "grafana": _stats(times["grafana"]), "web": _stats(times["web"])}
            print(f"  {q.name:<16} {n:>6} rows · Grafana p95 {out[q.name]['grafana']['p95_ms']:6.1f} ms · "
                  f"farm dashboard p95 {out[q.name]['web']['p95_ms']:6.1f} ms", flush=True)
    grafana_engine.dispose()
    web_engine.dispose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", help="Postgres URL to fill (default: a throwaway database on 127.0.0.1:5432)")
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows to ingest (0: only time the queries of --db)")
    ap.add_argument("--samples", type=int, default=40, help="timed runs of each query")
    ap.add_argument("--days", type=int, default=30, help="dashboard time range (the default in Grafana)")
    ap.add_argument("--keep", action="store_true", help="keep the throwaway database")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    admin = create_engine(ADMIN, isolation_level="AUTOCOMMIT")
    name = None
    url = args.db
    if url is None:
        name = f"farm_bench_{secrets.token_hex(4)}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        url = ADMIN.rsplit("/", 1)[0] + f"/{name}"
    try:
        store = Store(url)
        print(f"ingest {args.rows:,} rows into {store.engine.url.render_as_string(hide_password=True)}")
        figures: dict[str, Any] = {"ingest": ingest(store, args.rows) if args.rows else None}
        with store.engine.connect() as conn:
            figures["rollup_rows"] = conn.execute(text("SELECT COUNT(*) FROM result_rollup")).scalar()
            figures["results_rows"] = conn.execute(text("SELECT COUNT(*) FROM results")).scalar()
        store.engine.dispose()
        vacuum = create_engine(url, isolation_level="AUTOCOMMIT")
        # right after the load (ANALYZE only: the rollup still holds the dead versions of its
        # updated rows), then as autovacuum leaves it
        for state, sql in (("fresh", "ANALYZE"), ("vacuumed", "VACUUM (ANALYZE)")):
            with vacuum.connect() as conn:
                conn.execute(text(sql))
            print(f"query latency, {state} ({args.samples} samples each, last {args.days} days, every filter at "
                  f"All; {figures['results_rows']:,} results, {figures['rollup_rows']:,} rollup rows)")
            figures[f"queries_{state}"] = latency(url, args.samples, args.days)
        vacuum.dispose()
        worst, worst_vac = (max(v[k]["p95_ms"] for v in figures[f"queries_{state}"].values()
                                for k in ("grafana", "web")) for state in ("fresh", "vacuumed"))
        figures["loadavg"] = os.getloadavg()  # other work on the machine skews every figure: say how much
        if figures["ingest"]:
            print(f"ingest {figures['ingest']['save_results_rows_per_s']:,.0f} rows/s (save_results), "
                  f"{figures['ingest']['with_create_run_rows_per_s']:,.0f} rows/s with create_run")
        print(f"worst dashboard query p95 {worst:.1f} ms fresh, {worst_vac:.1f} ms vacuumed; "
              f"load average {figures['loadavg'][0]:.1f} on "
              f"{os.cpu_count()} CPUs")
        if args.json:
            args.json.write_text(json.dumps(figures, indent=1))
    finally:
        if name and not args.keep:
            from farm.store import db

            db._migrated.discard(url)
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
