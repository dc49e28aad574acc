"""The long-running agent: owns a host's devices, registers them, runs their jobs, spools results.

``farm agent start --config agents/agent.yaml`` runs :class:`Agent`: it registers every device
(profile, fingerprint) in the store and heartbeats them, starts the executor's consumers (one
Celery worker per device, or a Ray node advertising one resource per device), flushes the spool,
and reaps jobs of silent agents. Consumers call :func:`farm.agent.lifecycle.execute` for each job,
as the in-process executor does. The consumers are found by name in :data:`CONSUMERS` (as
Celery's app finds its worker class): nothing here imports an executor.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
import time
from typing import Protocol

from farm.agent.config import AgentConfig
from farm.agent.lifecycle import register_device
from farm.agent.runtime import Runtime, reset_runtime
from farm.dispatch.reaper import Reaper
from farm.errors import InfraError
from farm.jobs import Job
from farm.registry import Registry

log = logging.getLogger("farm.agent")


class Consumers(Protocol):
    """The executor-specific side of an agent: what takes jobs off the broker or cluster."""

    def start(self) -> None: ...
    def check(self) -> None: ...  # restart what died
    def stop(self) -> None: ...
    def send(self, job: Job, attempt: int) -> None: ...  # re-dispatch (reaper); a no-op where dispatch pulls


CONSUMERS: Registry[type[Consumers]] = Registry("agent consumers", "farm.consumers", {
    "celery": "farm.executors.celery:CeleryConsumers",
    "ray": "farm.executors.ray:RayNode",
})


class Agent:
    """The agent process: registration, heartbeats, consumers, spool flushing, reaping."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.rt = Runtime.from_config(cfg)
        reset_runtime(self.rt)
        self._stop = threading.Event()
        self.consumers: Consumers = CONSUMERS.get(cfg.executor)(cfg)

    def register(self) -> None:
        """Devices into the store with their profile and what the device says it is."""
        for name in self.rt.devices:
            register_device(self.rt, name)

    def heartbeat(self) -> None:
        """Every device of this agent seen now: one statement, whatever the number of devices."""
        self.rt.store.touch_devices([(e.name, e.profile, e.transport.kind) for e in self.rt.inventory.devices],
                                    agent=self.cfg.name)

    def run(self) -> None:
        """Until SIGTERM/SIGINT: keep devices registered, consumers alive, the spool empty."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self._stop.set())
        self.consumers.start()  # before the store is opened here: forked workers start clean
        self.rt.wait_store(self.register, "register devices")
        reaper = Reaper(self.rt.store, self.cfg.executor, self.cfg.lease_s, send=self.consumers.send)
        log.info("agent %s: %d device(s) on %s", self.cfg.name, len(self.rt.devices), self.cfg.executor)
        next_reap = 0.0
        while not self._stop.is_set():
            try:
                self.heartbeat()
                self.rt.spool.flush(self.rt.store)
            except InfraError as exc:
                log.warning("agent %s: store unreachable: %s", self.cfg.name, exc)
            if time.monotonic() >= next_reap:
                reaper.tick()
                next_reap = time.monotonic() + self.cfg.reap_s
            self.consumers.check()
            self._stop.wait(min(self.cfg.heartbeat_s, self.cfg.reap_s))
        self.rt.stopping.set()
        self.consumers.stop()
        with contextlib.suppress(InfraError):
            self.rt.spool.flush(self.rt.store)
