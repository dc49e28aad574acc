"""The in-process executor: real engine runs, infrastructure retries on a sibling device, job failures as data."""

from __future__ import annotations

import socket
from pathlib import Path

import yaml

from farm.devices import load_inventory
from farm.executors.local import LocalExecutor
from farm.plan import make_plan
from farm.spec import loads_sweep
from farm.store import Store

PROFILES = Path(__file__).resolve().parent / "data" / "profiles"

SWEEP = """
version: 1
name: exec
models: [farm-tiny]
quants: [q4_0]
devices: [{devices}]
prompt_tokens: [16]
gen_tokens: [8]
threads: [1]
repetitions: 2
warmup: 0
power: false  # executor behaviour is judged here; power and the gate with defaults: test_lifecycle_cli
thermal_gate: false  # as above
"""


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket closes


def inventory(tmp_path: Path, dead: bool) -> Path:
    devices = [{"name": "alive", "profile": "test-host", "workdir": str(tmp_path / "alive")}]
    if dead:
        devices.insert(0, {"name": "dead", "profile": "test-host", "workdir": "/tmp/never",
                           "transport": {"kind": "ssh", "host": "127.0.0.1", "port": closed_port(),
                                         "known_hosts": str(tmp_path / "known_hosts"), "connect_timeout": 2}})
    path = tmp_path / "devices.yaml"
    path.write_text(yaml.safe_dump({"profile_dirs": [str(PROFILES)], "devices": devices}))
    return path


def run(tmp_path: Path, sweep_text: str, dead: bool) -> tuple[Store, str]:
    inv = load_inventory(inventory(tmp_path, dead))
    store = Store(f"sqlite:///{tmp_path / 'farm.db'}")
    sweep = loads_sweep(sweep_text)
    plan = make_plan(sweep, inv, "run1")
    store.create_run(sweep.name, plan.jobs, run_id="run1")
    for d in inv.devices:
        store.upsert_device(d.name, d.profile, d.transport.kind)
    LocalExecutor(store, inv).submit("run1", plan.jobs)
    return store, "run1"


def test_real_run_stores_every_repetition(tmp_path: Path) -> None:
    store, run_id = run(tmp_path, SWEEP.format(devices="alive"), dead=False)
    rows = store.results(run_id)
    assert len(rows) == 2
    for r in rows:
        assert r.prefill_tps and r.prefill_tps > 0 and r.decode_tps and r.decode_tps > 0
        assert r.ttft_s and r.ttft_s > 0 and r.peak_rss_bytes and r.peak_rss_bytes > 0
    job = store.job_rows(run_id)[0]
    assert job.provenance["engine_sha256"] and job.provenance["model_sha256"]
    assert job.bytes_pushed > 0
    assert store.get_run(run_id).status == "done"


def test_repeated_sweep_pushes_nothing(tmp_path: Path) -> None:
    store, run_id = run(tmp_path, SWEEP.format(devices="alive"), dead=False)
    first = store.job_rows(run_id)[0].bytes_pushed
    store2 = Store(f"sqlite:///{tmp_path / 'farm2.db'}")
    inv = load_inventory(tmp_path / "devices.yaml")
    sweep = loads_sweep(SWEEP.format(devices="alive"))
    plan = make_plan(sweep, inv, "run2")
    store2.create_run(sweep.name, plan.jobs, run_id="run2")
    LocalExecutor(store2, inv).submit("run2", plan.jobs)
    assert first > 0 and store2.job_rows("run2")[0].bytes_pushed == 0


def test_infra_error_retries_on_a_device_of_the_same_profile(tmp_path: Path) -> None:
    store, run_id = run(tmp_path, SWEEP.format(devices="dead, alive").replace("threads: [1]", "threads: [1, 2]"),
                        dead=True)
    jobs = store.job_rows(run_id)
    assert len(jobs) == 4 and all(j.status == "done" for j in jobs), [(j.status, j.error) for j in jobs]
    assert {j.device for j in jobs} == {"alive"}  # the dead device's jobs moved
    moved = [j for j in jobs if j.attempts > 1]
    assert len(moved) == 2
    dead = next(d for d in store.devices() if d.name == "dead")
    assert dead.failures >= 2


def test_benchmark_failure_is_stored_as_data_not_retried(tmp_path: Path) -> None:
    # farm-mini, 256 prompt + 64 generated tokens, 3 repetitions: seconds of work against a 0.2 s limit.
    text = (SWEEP.format(devices="alive").replace("models: [farm-tiny]", "models: [farm-mini]")
            .replace("prompt_tokens: [16]", "prompt_tokens: [256]").replace("gen_tokens: [8]", "gen_tokens: [64]")
            .replace("repetitions: 2", "repetitions: 3") + "timeouts: {job_s: 0.2}\n")
    store, run_id = run(tmp_path, text, dead=False)
    job = store.job_rows(run_id)[0]
    assert job.status == "failed" and job.error_class == "job" and "timed out" in (job.error or "")
    assert job.attempts == 1
    assert store.get_run(run_id).status == "failed"


def test_failing_profile_setup_is_an_infrastructure_failure(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "test-host.yaml").write_text((PROFILES / "test-host.yaml").read_text()
                                             + "setup: ['echo preparing; exit 3']\n")
    inv = tmp_path / "devices.yaml"
    inv.write_text(yaml.safe_dump({"profile_dirs": [str(profiles)], "devices": [
        {"name": "alive", "profile": "test-host", "workdir": str(tmp_path / "alive")}]}))
    store = Store(f"sqlite:///{tmp_path / 'farm.db'}")
    inventory = load_inventory(inv)
    plan = make_plan(loads_sweep(SWEEP.format(devices="alive")), inventory, "run1")
    store.create_run("exec", plan.jobs, run_id="run1")
    LocalExecutor(store, inventory).submit("run1", plan.jobs)
    job = store.job_rows("run1")[0]
    assert job.status == "failed" and job.error_class == "infra", job.error
    assert "exited 3" in (job.error or "") and job.attempts == 3  # retried, then given up
