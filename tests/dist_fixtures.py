"""Real distributed parts for executor tests: Redis, agents as processes, a Ray head, virtual devices.

    from tests.dist_fixtures import redis_server, farm_env  # noqa: F401  (pytest fixtures)

Everything listens on 127.0.0.1 on free ports and is stopped by pid (a Ray cluster is never
stopped with ``ray stop``, which kills by process name). Devices are ``local``-transport
devices whose workdirs live under the test's tmp dir; the ``sleep`` backend gives jobs of known
length. Missing redis-server or ray: skip locally, fail under ``CI=true``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import yaml

from tests.support import need

REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"
PROFILE = {"name": "vhost", "description": "a virtual device on this host (dispatch tests)", "kind": "host",
           "abi": "x86_64", "engine_target": "host", "ram_gib": 4, "cpus": {"count": 2},
           "workdir": "/tmp/farm-vhost", "power": {"source": "none"}, "thermal": {"zones": []}}



def logfile(path: Path) -> IO[bytes]:
    """A log file a child process writes to for its whole life."""
    return open(path, "ab")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server for port {port} exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port}")


class RedisServer:
    """A private redis-server with an append-only file, so a restart keeps queued jobs (as deployed)."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        root.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [REDIS, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.root), "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--protected-mode", "yes"],
            stdout=logfile(self.root / "redis.log"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_port(self.port)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        self.proc = None


@pytest.fixture()
def ray_head(tmp_path: Path) -> Iterator[RayHead]:
    need(shutil.which("ray") is not None or (Path(sys.executable).parent / "ray").exists(), "ray")
    head = RayHead(tmp_path / "rayhead")
    head.root.mkdir(parents=True, exist_ok=True)
    head.start()
    yield head
    head.stop()


@pytest.fixture()
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    need(Path(REDIS).exists(), "redis-server")
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()


class Farm:
    """Virtual devices spread over agents, their configs, and the coordinator's inventory."""

    def __init__(self, root: Path, store_url: str, broker_url: str = "", ray_address: str = "") -> None:
        self.root, self.store_url, self.broker_url, self.ray_address = root, store_url, broker_url, ray_address
        self.profiles = root / "profiles"
        self.profiles.mkdir(parents=True, exist_ok=True)
        (self.profiles / "vhost.yaml").write_text(yaml.safe_dump(PROFILE))
        self.agents: dict[str, list[str]] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env = {**os.environ, "FARM_DB_URL": store_url, "FARM_BROKER_URL": broker_url,
                    "FARM_RAY_ADDRESS": ray_address, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1",
                    "FARM_LEASE_S": "4"}

    def workdir(self, device: str) -> Path:
        return self.root / "devices" / device

    def _entry(self, device: str) -> dict[str, object]:
        self.workdir(device).mkdir(parents=True, exist_ok=True)
        return {"name": device, "profile": "vhost", "transport": {"kind": "local"},
                "workdir": str(self.workdir(device))}

    def add_agent(self, name: str, devices: list[str], executor: str = "celery", **extra: object) -> Path:
        self.agents[name] = devices
        cfg = {"name": name, "executor": executor, "broker_url": self.broker_url, "store_url": self.store_url,
               "ray_address": self.ray_address, "spool_dir": str(self.root / "spool" / name),
               "devices": {"devices": [self._entry(d) for d in devices], "profile_dirs": [str(self.profiles)]},
               "heartbeat_s": 0.5, "lease_s": 4.0, "reap_s": 1.0, "visibility_timeout_s": 120.0,
               "unacked_restore_s": 2.0, **extra}
        path = self.root / f"agent-{name}.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    def inventory(self) -> Path:
        """The coordinator's devices.yaml: every device of every agent."""
        devices = [self._entry(d) for ds in self.agents.values() for d in ds]
        path = self.root / "devices.yaml"
        path.write_text(yaml.safe_dump({"devices": devices, "profile_dirs": [str(self.profiles)]}))
        return path

    def start(self, name: str) -> subprocess.Popen[bytes]:
        log = logfile(self.root / f"agent-{name}.log")
        proc = subprocess.Popen([sys.executable, "-m", "farm.cli.main", "agent", "start", "--config",
                                 str(self.root / f"agent-{name}.yaml"), "--log-level", "WARNING"],
                                env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs[name] = proc
        return proc

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Kill an agent and its device workers (a host crash, for SIGKILL)."""
        proc = self.procs[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        proc.wait(timeout=60)

    def stop_all(self) -> None:
        for name, proc in list(self.procs.items()):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    self.kill(name)
        self.procs.clear()

    def log(self, name: str) -> str:
        return (self.root / f"agent-{name}.log").read_text(errors="replace")

    def wait_registered(self, store: object, devices: list[str], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            names = {d.name for d in store.devices() if d.agent}  # type: ignore[attr-defined]
            if set(devices) <= names:
                return
            time.sleep(0.2)
        raise TimeoutError(f"devices {devices} not registered; logs: {[self.log(a) for a in self.agents]}")

    def submit(self, sweep: Path, executor: str = "celery") -> str:
        """`farm submit --executor X` as a user runs it; returns the run id."""
        out = subprocess.run([sys.executable, "-m", "farm.cli.main", "submit", str(sweep), "--executor", executor,
                              "--devices", str(self.inventory()), "--no-wait"],
                             env={**self.env, "COLUMNS": "200"}, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        return out.stdout.split("run ", 1)[1].split(":", 1)[0].strip()


def write_sweep(path: Path, devices: list[str], jobs_per_device: int, seconds: float = 0.2, reps: int = 1,
                priority: int = 0, exit_code: int = 0, job_timeout_s: float | None = None, name: str = "dist") -> Path:
    """A sleep sweep: `jobs_per_device` jobs on each device (prompt_tokens is the cell axis)."""
    sweep: dict[str, object] = {
        "version": 1, "name": name, "models": ["farm-tiny"], "quants": ["q4_0"],
        "backends": [{"name": "sleep", "options": {"seconds": seconds, "exit_code": exit_code}}],
        "devices": devices, "prompt_tokens": list(range(1, jobs_per_device + 1)), "gen_tokens": [0],
        # power and gate off: dispatch is judged here, not measurement (defaults: test_lab_profiles)
        "threads": [1], "repetitions": reps, "warmup": 0, "power": False, "thermal_gate": False, "idle_s": 0,
        "priority": priority}
    if job_timeout_s is not None:
        sweep["timeouts"] = {"job_s": job_timeout_s}
    path.write_text(yaml.safe_dump(sweep))
    return path


def wait_run(store: object, run_id: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        final = store.finish_run_if_complete(run_id)  # type: ignore[attr-defined]
        if final:
            return final
        time.sleep(0.25)
    counts = store.counts(run_id)  # type: ignore[attr-defined]
    raise TimeoutError(f"run {run_id} not finished after {timeout:.0f}s: {json.dumps(counts)}")


class RayHead:
    """A Ray head started by pid with auth disabled; stopped by pid, never by `ray stop`."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, free_port()
        self.temp_dir = tempfile.mkdtemp(prefix="fr-", dir="/tmp")  # Ray's socket paths must stay < 108 bytes
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        ray = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
        env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
        self.proc = subprocess.Popen(
            [ray, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(self.port),
             "--num-cpus", "1", "--include-dashboard", "false", "--disable-usage-stats", "--block",
             "--temp-dir", self.temp_dir],
            env=env, stdout=logfile(self.root / "ray-head.log"), stderr=subprocess.STDOUT,
            start_new_session=True)
        wait_port(self.port, timeout=60, proc=self.proc)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
        shutil.rmtree(self.temp_dir, ignore_errors=True)
