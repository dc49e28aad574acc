"""Celery end to end: a sweep submitted with `farm submit --executor celery` completes on two agents.

Real Redis, real agent processes (one forked Celery worker per device), a real SQLite store
shared by coordinator and agents, `local`-transport virtual devices running the `sleep` backend.
"""

from __future__ import annotations

import time
from pathlib import Path

from farm.store import Store
from tests.dist_fixtures import Farm, redis_server, wait_run, write_sweep  # noqa: F401

DEVICES = {"a1": ["a1-d0", "a1-d1"], "a2": ["a2-d0", "a2-d1"]}


def _farm(tmp_path: Path, redis_url: str) -> tuple[Farm, Store]:
    url = f"sqlite:///{tmp_path / 'farm.db'}"
    farm = Farm(tmp_path, url, broker_url=redis_url)
    for name, devices in DEVICES.items():
        farm.add_agent(name, devices)
    return farm, Store(url)


def test_sweep_completes_on_two_agents(tmp_path: Path, redis_server) -> None:  # noqa: F811
    farm, store = _farm(tmp_path, redis_server.url)
    try:
        for name in DEVICES:
            farm.start(name)
        all_devices = [d for ds in DEVICES.values() for d in ds]
        farm.wait_registered(store, all_devices)
        sweep = write_sweep(tmp_path / "sweep.yaml", all_devices, jobs_per_device=3, seconds=0.2, reps=2)
        t0 = time.monotonic()
        run_id = farm.submit(sweep)
        assert time.monotonic() - t0 < 30  # returns with a run id, does not wait for the jobs
        assert wait_run(store, run_id, timeout=90) == "done"
        rows = store.job_rows(run_id)
        assert len(rows) == 12 and {r.status for r in rows} == {"done"}
        assert {r.agent for r in rows} == {"a1", "a2"}
        assert all(r.attempts == 1 for r in rows)
        for r in rows:  # each device ran its own jobs: the device is the unit of dispatch
            assert r.agent == ("a1" if r.device.startswith("a1") else "a2")
        assert len(store.results(run_id)) == 12 * 2
        devices = {d.name: d for d in store.devices()}
        assert devices["a1-d0"].fingerprint.get("kernel") and devices["a1-d0"].agent == "a1"
    finally:
        farm.stop_all()
