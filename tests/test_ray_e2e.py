"""Ray end to end: the same sweep as the Celery test, submitted with `farm submit --executor ray`.

A real Ray head (auth disabled, stopped by pid) and two agents that join it as worker nodes,
each advertising one `device:NAME` resource per device; the store is a shared SQLite file.
"""

from __future__ import annotations

import time
from pathlib import Path

from farm.store import Store
from tests.dist_fixtures import Farm, ray_head, wait_run, write_sweep  # noqa: F401

DEVICES = {"r1": ["r1-d0", "r1-d1"], "r2": ["r2-d0", "r2-d1"]}


def test_sweep_completes_on_two_ray_agents(tmp_path: Path, ray_head) -> None:  # noqa: F811
    url = f"sqlite:///{tmp_path / 'farm.db'}"
    farm = Farm(tmp_path, url, ray_address=ray_head.address)
    for name, devices in DEVICES.items():
        farm.add_agent(name, devices, executor="ray", ray_node_ip="127.0.0.1")
    store = Store(url)
    try:
        for name in DEVICES:
            farm.start(name)
        all_devices = [d for ds in DEVICES.values() for d in ds]
        farm.wait_registered(store, all_devices)
        sweep = write_sweep(tmp_path / "sweep.yaml", all_devices, jobs_per_device=3, seconds=0.2, reps=2)
        t0 = time.monotonic()
        run_id = farm.submit(sweep, executor="ray")
        assert time.monotonic() - t0 < 60  # returns once the dispatcher has the run, not when it ends
        assert wait_run(store, run_id, timeout=180) == "done", [farm.log(a) for a in DEVICES]
        rows = store.job_rows(run_id)
        assert len(rows) == 12 and {r.status for r in rows} == {"done"}
        for r in rows:  # the device resource put each job on the node that owns the device
            assert r.agent == r.device.split("-")[0] and r.attempts == 1
        assert len(store.results(run_id)) == 24
    finally:
        farm.stop_all()
