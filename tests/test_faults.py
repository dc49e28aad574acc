"""Fault tests on real parts: SIGKILL an agent mid-job (Celery and Ray), restart Redis, cut the store off,
drop a device.

After each fault every job must end done or failed-with-reason, no result may be lost (every
repetition of every done job is in the store), and none duplicated (a job re-ran only where its
agent really died, and the store holds one row per job and repetition).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import threading
import time
from pathlib import Path

from farm.store import Store
from tests.dist_fixtures import Farm, free_port, ray_head, redis_server, wait_run, write_sweep  # noqa: F401

A1, A2 = ["a1-d0", "a1-d1"], ["a2-d0", "a2-d1"]


def _start(tmp_path: Path, broker: str, store_url: str, agent_store_url: str | None = None) -> tuple[Farm, Store]:
    farm = Farm(tmp_path, agent_store_url or store_url, broker_url=broker)
    farm.add_agent("a1", A1)
    farm.add_agent("a2", A2)
    store = Store(store_url)
    farm.start("a1")
    farm.start("a2")
    farm.wait_registered(store, A1 + A2)
    return farm, store


def _check_complete(store: Store, run_id: str, n_jobs: int, reps: int) -> None:
    rows = store.job_rows(run_id)
    assert len(rows) == n_jobs
    for r in rows:
        assert r.status in ("done", "failed"), (r.id, r.status)
        assert r.status == "done" or (r.error_class and r.error), (r.id, r.error)
    results = store.results(run_id)
    done = {r.id for r in rows if r.status == "done"}
    assert sorted((x.job_id, x.rep) for x in results) == sorted((j, k) for j in done for k in range(reps))


def _wait_for(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise TimeoutError(what)


def test_sigkill_agent_mid_job(tmp_path: Path, redis_server) -> None:  # noqa: F811
    farm, store = _start(tmp_path, redis_server.url, f"sqlite:///{tmp_path / 'farm.db'}")
    try:
        run_id = farm.submit(write_sweep(tmp_path / "s.yaml", A1 + A2, jobs_per_device=4, seconds=1.0))
        _wait_for(lambda: any(r.status == "running" and r.agent == "a1" for r in store.job_rows(run_id)), 30,
                  "a1 never started a job")
        farm.kill("a1")  # the agent and its device workers, mid-job: no ack, no result, no goodbye
        victims = {r.id for r in store.job_rows(run_id) if r.status == "running" and r.agent == "a1"}
        assert victims
        assert wait_run(store, run_id, timeout=120) == "done"
        _check_complete(store, run_id, 16, 1)
        rows = {r.id: r for r in store.job_rows(run_id)}
        for victim in victims:  # re-dispatched once, to the live agent
            assert rows[victim].attempts == 2 and rows[victim].agent == "a2"
        assert all(r.attempts == 1 for r in rows.values() if r.id not in victims)  # nothing else ran twice
        # The dead agent comes back: stale messages in its queues must not re-run anything.
        before = {r.id: (r.agent, r.finished_at) for r in store.job_rows(run_id)}
        farm.start("a1")
        time.sleep(6)
        assert {r.id: (r.agent, r.finished_at) for r in store.job_rows(run_id)} == before
    finally:
        farm.stop_all()


def _crash_ray_node(farm: Farm, name: str) -> None:
    """SIGKILL an agent and every process of its Ray node (raylet, workers: they leave its process
    group), found by the agent config in their environment; only this test's processes carry it."""
    mark = f"FARM_AGENT_CONFIG={(farm.root / f'agent-{name}.yaml').resolve()}".encode()
    pids = []
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            if entry.isdigit() and mark in Path(f"/proc/{entry}/environ").read_bytes().split(b"\0"):
                pids.append(int(entry))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    farm.kill(name)


def test_sigkill_ray_agent_mid_job(tmp_path: Path, ray_head) -> None:  # noqa: F811
    """A Ray agent node dies with its actor mid-job: its jobs are re-run once, on the live agent."""
    url = f"sqlite:///{tmp_path / 'farm.db'}"
    farm = Farm(tmp_path, url, ray_address=ray_head.address)
    farm.add_agent("a1", A1, executor="ray", ray_node_ip="127.0.0.1")
    farm.add_agent("a2", A2, executor="ray", ray_node_ip="127.0.0.1")
    store = Store(url)
    try:
        farm.start("a1")
        farm.start("a2")
        farm.wait_registered(store, A1 + A2)
        run_id = farm.submit(write_sweep(tmp_path / "s.yaml", A1 + A2, jobs_per_device=4, seconds=1.0), "ray")
        _wait_for(lambda: any(r.status == "running" and r.agent == "a1" for r in store.job_rows(run_id)), 120,
                  "a1 never started a job")
        _crash_ray_node(farm, "a1")  # the agent, its Ray node and the node's actor: a host crash
        victims = {r.id for r in store.job_rows(run_id) if r.status == "running" and r.agent == "a1"}
        assert victims
        assert wait_run(store, run_id, timeout=180) == "done", [farm.log(a) for a in ("a1", "a2")]
        _check_complete(store, run_id, 16, 1)
        rows = {r.id: r for r in store.job_rows(run_id)}
        for victim in victims:  # re-dispatched once, to the live agent
            assert rows[victim].attempts == 2 and rows[victim].agent == "a2", (
                [(r.id, r.device, r.agent, r.attempts, r.error) for r in rows.values()], farm.log("a1"))
        assert all(r.attempts == 1 for r in rows.values() if r.id not in victims)
    finally:
        farm.stop_all()


def test_redis_restart_during_run(tmp_path: Path, redis_server) -> None:  # noqa: F811
    farm, store = _start(tmp_path, redis_server.url, f"sqlite:///{tmp_path / 'farm.db'}")
    try:
        run_id = farm.submit(write_sweep(tmp_path / "s.yaml", A1 + A2, jobs_per_device=6, seconds=0.4, reps=2))
        _wait_for(lambda: store.counts(run_id).get("done", 0) >= 3, 60, "no job finished")
        redis_server.stop()  # a clean restart: queued jobs survive in the append-only file
        time.sleep(3)
        redis_server.start()
        assert wait_run(store, run_id, timeout=150) == "done"
        _check_complete(store, run_id, 24, 2)
        assert all(r.attempts == 1 for r in store.job_rows(run_id))
    finally:
        farm.stop_all()


class _Cut:
    """A TCP relay between agents and PostgreSQL that can be cut, as a network partition would."""

    def __init__(self, target_port: int) -> None:
        self.port, self.target = free_port(), target_port
        self.open = threading.Event()
        self.socks: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.resume()

    def resume(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self.open.set()
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while self.open.is_set():
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:  # a connection accepted while cut() ran must not slip through the partition
                if not self.open.is_set() or listener is not self.listener:
                    client.close()
                    upstream.close()
                    return
                self.socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := a.recv(65536):
                b.sendall(data)
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        with self.lock:
            self.open.clear()
            assert self.listener is not None
            self.listener.close()
            for s in self.socks:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                    s.close()
            self.socks.clear()


def test_store_unreachable_for_a_while(tmp_path: Path, redis_server, pg_url: str) -> None:  # noqa: F811
    from sqlalchemy.engine import make_url

    url = make_url(pg_url)
    relay = _Cut(url.port or 5432)
    agent_url = url.set(port=relay.port).render_as_string(hide_password=False)
    Store(pg_url)  # migrate before the agents start
    farm, store = _start(tmp_path, redis_server.url, pg_url, agent_store_url=agent_url)
    try:
        run_id = farm.submit(write_sweep(tmp_path / "s.yaml", A1 + A2, jobs_per_device=5, seconds=0.5, reps=2))
        _wait_for(lambda: store.counts(run_id).get("done", 0) >= 2, 60, "no job finished")
        relay.cut()
        time.sleep(8)  # longer than a lease: running jobs end, their results wait in the spools
        spooled = sum(1 for p in (tmp_path / "spool").rglob("*.json"))
        relay.resume()
        assert wait_run(store, run_id, timeout=150) == "done"
        _check_complete(store, run_id, 20, 2)
        assert spooled >= 1  # the outage was real: results went through the spool
        assert all(r.attempts == 1 for r in store.job_rows(run_id))  # live agents' jobs were not reaped
        time.sleep(1.5)
        assert not list((tmp_path / "spool").rglob("*.json"))
    finally:
        farm.stop_all()
        relay.cut()


def test_dropped_device(tmp_path: Path, redis_server) -> None:  # noqa: F811
    farm, store = _start(tmp_path, redis_server.url, f"sqlite:///{tmp_path / 'farm.db'}")
    try:
        run_id = farm.submit(write_sweep(tmp_path / "s.yaml", A1 + A2, jobs_per_device=6, seconds=0.3))
        _wait_for(lambda: store.counts(run_id).get("done", 0) >= 2, 60, "no job finished")
        shutil.rmtree(farm.workdir("a2-d1"))  # unplugged
        assert wait_run(store, run_id, timeout=120) == "done"
        _check_complete(store, run_id, 24, 1)
        rows = store.job_rows(run_id)
        assert not any(r.device == "a2-d1" and r.finished_at and r.status == "done" and r.attempts > 1
                       for r in rows)
        moved = [r for r in rows if r.attempts > 1]
        assert moved and all(r.device != "a2-d1" for r in moved)  # retried elsewhere, same profile
        dev = {d.name: d for d in store.devices()}["a2-d1"]
        assert dev.status == "quarantined" and "workdir" in (dev.quarantine_reason or "")
    finally:
        farm.stop_all()
