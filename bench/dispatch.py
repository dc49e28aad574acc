"""Dispatch benchmark: 1,000 short jobs over 64 virtual devices on 8 agents, Celery and Ray.

    python bench/dispatch.py --executor celery --executor ray [--jobs 1000 --seconds 0.5 --db URL]

Each agent is a real `farm agent start` process owning 8 `local`-transport devices; each job runs
``sleep`` on its device through the `sleep` backend. Figures, from store timestamps (one host, one
clock), after a warm-up run that starts every worker:

- per-job dispatch overhead: on each device, the time between the previous job's end (or the
  submit) and this job's end, minus this job's own command time; median and p99 over jobs;
- makespan ÷ ideal: from the submit call until the last job is stored, over the longest sum of
  command times on one device (what a dispatcher with zero overhead would take).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import secrets
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from farm.executors import EXECUTORS
from farm.jobs import Job, ModelRef, job_id_for
from farm.store import Store, new_run_id
from tests.dist_fixtures import Farm, RayHead, RedisServer, wait_run


def make_jobs(run_id: str, devices: list[str], n: int, seconds: float) -> list[Job]:
    jobs = []
    for i in range(n):
        device = devices[i % len(devices)]
        jobs.append(Job(job_id=job_id_for(run_id, {"i": i}), run_id=run_id, index=i, device=device, profile="vhost",
                        backend="sleep", backend_options={"seconds": seconds}, model=ModelRef(card="farm-tiny"),
                        quant="q4_0", n_prompt=i + 1, n_gen=0, threads=1, repetitions=1, warmup=0, power=False,
                        thermal_gate=False, idle_s=0.0, timeout_s=600, est_s=seconds))
    return jobs


def run_once(store: Store, executor_name: str, devices: list[str], n: int, seconds: float,
             options: dict[str, object]) -> dict[str, float]:
    run_id = new_run_id()
    jobs = make_jobs(run_id, devices, n, seconds)
    store.create_run("bench-dispatch", jobs, run_id=run_id, executor=executor_name)
    executor = EXECUTORS.get(executor_name)(store, None, **options)  # type: ignore[arg-type]
    t0 = time.time()
    executor.submit(run_id, jobs)
    t_submitted = time.time()
    status = wait_run(store, run_id, timeout=max(600.0, 20 * n * seconds / len(devices)))
    rows = store.job_rows(run_id)
    t_end = max(r.finished_at.timestamp() for r in rows)
    per_device: dict[str, list] = {}
    for r in rows:
        per_device.setdefault(r.device, []).append(r)
    overheads, busy = [], []
    for rs in per_device.values():
        rs.sort(key=lambda r: r.finished_at)
        prev = t0
        total = 0.0
        for r in rs:
            wall = float(r.provenance.get("wall_s", 0.0))
            overheads.append(r.finished_at.timestamp() - prev - wall)
            prev = r.finished_at.timestamp()
            total += wall
        busy.append(total)
    ideal = max(busy)
    o = np.array(overheads) * 1e3
    return {"jobs": n, "status": status, "done": sum(r.status == "done" for r in rows),
            "submit_s": round(t_submitted - t0, 3), "overhead_median_ms": round(float(np.median(o)), 1),
            "overhead_p99_ms": round(float(np.percentile(o, 99)), 1), "makespan_s": round(t_end - t0, 2),
            "ideal_s": round(ideal, 2), "makespan_over_ideal": round((t_end - t0) / ideal, 3),
            "makespan_from_handoff_over_ideal": round((t_end - t_submitted) / ideal, 3)}


def bench(executor_name: str, args: argparse.Namespace) -> dict[str, object]:
    root = Path(tempfile.mkdtemp(prefix="farm-bench-"))
    db = args.db or f"sqlite:///{root / 'farm.db'}"
    server: RedisServer | RayHead
    if executor_name == "celery":
        server = RedisServer(root / "redis")
        server.start()
        farm = Farm(root, db, broker_url=server.url)
        options: dict[str, object] = {"broker_url": server.url}
    else:
        server = RayHead(root / "rayhead")
        server.root.mkdir(parents=True, exist_ok=True)
        server.start()
        farm = Farm(root, db, ray_address=server.address)
        options = {"address": server.address}
    devices = [f"dev{i:02d}" for i in range(args.devices)]
    per_agent = args.devices // args.agents
    extra = {"ray_node_ip": "127.0.0.1"} if executor_name == "ray" else {}
    for a in range(args.agents):
        farm.add_agent(f"agent{a}", devices[a * per_agent:(a + 1) * per_agent], executor=executor_name,
                       heartbeat_s=5.0, lease_s=30.0, reap_s=5.0, **extra)
    store = Store(db)
    try:
        t = time.monotonic()
        for a in range(args.agents):
            farm.start(f"agent{a}")
        farm.wait_registered(store, devices, timeout=300)
        started = time.monotonic() - t
        run_once(store, executor_name, devices, args.devices * 2, 0.05, options)  # warm-up: workers, connections
        result = run_once(store, executor_name, devices, args.jobs, args.seconds, options)
        return {"executor": executor_name, "agents": args.agents, "devices": args.devices,
                "job_s": args.seconds, "agents_start_s": round(started, 1), **result}
    finally:
        farm.stop_all()
        server.stop()


@contextlib.contextmanager
def fresh_pg(admin_url: str) -> Iterator[str]:
    from sqlalchemy import create_engine, text

    name = f"farm_bench_{secrets.token_hex(4)}"
    admin = create_engine(admin_url.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--executor", action="append", choices=["celery", "ray"])
    p.add_argument("--jobs", type=int, default=1000)
    p.add_argument("--devices", type=int, default=64)
    p.add_argument("--agents", type=int, default=8)
    p.add_argument("--seconds", type=float, default=0.5, help="length of one job (sleep on the device)")
    p.add_argument("--db", help="store URL (default: a fresh SQLite file)")
    p.add_argument("--pg-admin", help="PostgreSQL admin URL: the store is a fresh database there, dropped after")
    p.add_argument("--out", type=Path, help="also write the figures as JSON")
    args = p.parse_args()
    results = []
    for name in args.executor or ["celery", "ray"]:
        if args.pg_admin:
            with fresh_pg(args.pg_admin) as url:
                args.db = url
                results.append(bench(name, args))
        else:
            results.append(bench(name, args))
    print(f"{'executor':<8} {'jobs':>5} {'job s':>6} {'median ms':>10} {'p99 ms':>8} {'makespan s':>11} "
          f"{'ideal s':>8} {'ratio':>6} {'ratio*':>7}")
    for r in results:
        print(f"{r['executor']:<8} {r['jobs']:>5} {r['job_s']:>6} {r['overhead_median_ms']:>10} "
              f"{r['overhead_p99_ms']:>8} {r['makespan_s']:>11} {r['ideal_s']:>8} {r['makespan_over_ideal']:>6} "
              f"{r['makespan_from_handoff_over_ideal']:>7}")
    print("ratio* counts from the moment submit returned (the run handed to the broker or dispatcher)")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
