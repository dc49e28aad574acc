"""The Ray executor: agents are Ray nodes; each node hosts one long-lived actor that runs its devices' jobs.

Agent side, :class:`RayNode` joins the cluster with ``ray start --address ... --resources
'{"agent:NAME": 1, "device:D0": 1, ...}'`` (the agent's config reaches the node's workers through
the environment). Coordinator side, ``farm submit --executor ray`` routes the run's jobs
(priority, quarantine) and wakes a detached :class:`Dispatcher` actor, then returns.

The dispatcher creates one :class:`AgentActor` per live agent node, pinned there by the node's
``agent:NAME`` resource, and reuses it for every job of that node's devices: one worker process
per agent, started once, instead of a worker per task (a Python worker costs ~1 s of CPU and
~100 MB to start). It pulls queued jobs of all Ray runs from the store in priority order and keeps
at most ``depth`` (default 2) jobs per device in flight: the running one and the next, which waits
in the actor on the device's lock (unclaimed, so still queued in the store) and starts the moment
the device is free, with no round trip to the dispatcher in between. A CI job submitted later
waits behind at most those two, not a whole survey. The lock also means a device never runs two
jobs at once, whatever it is sent. Failures map onto the error taxonomy: a dead actor or node is an
infrastructure error handled by the same policy as Celery's (:mod:`farm.dispatch`), and
the actor is replaced once its node answers again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict, deque
from pathlib import Path
from typing import Any

import ray

from farm.agent.config import CONFIG_ENV, AgentConfig
from farm.dispatch import after_infra_error, prepare_dispatch
from farm.dispatch.queued import QueuedJobs
from farm.dispatch.reaper import Reaper
from farm.errors import InfraError
from farm.executors.base import Executor, ProgressCallback
from farm.jobs import Job
from farm.store import Store

log = logging.getLogger("farm.ray")
NAMESPACE = "farm"
DEVICE_PREFIX, AGENT_PREFIX = "device:", "agent:"


def resource_for(device: str) -> str:
    return f"{DEVICE_PREFIX}{device}"


def agent_resource(agent: str) -> str:
    return f"{AGENT_PREFIX}{agent}"


@ray.remote(num_cpus=0, max_restarts=0, max_task_retries=0)
class AgentActor:
    """Runs jobs on the devices of the node it lives on, with that node's agent config; one per agent."""

    def __init__(self) -> None:
        from farm.agent.runtime import runtime

        self.rt = runtime()
        self.locks = {name: threading.Lock() for name in self.rt.devices}

    def node(self) -> str:
        """The readiness probe: the dispatcher sends jobs only once this answered; the actor's node id."""
        return ray.get_runtime_context().get_node_id()

    def run(self, job: dict[str, Any], attempt: int, tried: list[str]) -> dict[str, Any]:
        from farm.agent.lifecycle import Outcome, execute

        j = Job.model_validate(job)
        lock = self.locks.get(j.device)
        if lock is None:  # not attached here: execute() says so without touching the store
            out: Outcome = execute(self.rt, j, attempt, tried)
        else:
            with lock:  # a device runs one job at a time, whatever the dispatcher sends
                out = execute(self.rt, j, attempt, tried)
        return {"status": out.status, "job": out.job.model_dump(mode="json"), "attempt": out.attempt,
                "tried": out.tried, "detail": out.detail}


def cluster_agents() -> dict[str, tuple[str, list[str]]]:
    """Live agent nodes of the cluster: agent → (node id, the devices it advertises)."""
    out: dict[str, tuple[str, list[str]]] = {}
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        res = node.get("Resources") or {}
        devices = sorted(k[len(DEVICE_PREFIX):] for k in res if k.startswith(DEVICE_PREFIX))
        for k in res:
            if k.startswith(AGENT_PREFIX):
                out[k[len(AGENT_PREFIX):]] = (node["NodeID"], devices)
    return out


@ray.remote(num_cpus=0, max_restarts=-1)
class Dispatcher:
    """Feeds queued jobs of Ray runs to the agents' actors, highest priority first; one per store."""

    def __init__(self, store_url: str, lease_s: float = 60.0, depth: int = 2) -> None:
        self.store, self.lease_s, self.depth = Store(store_url), lease_s, depth
        self.queued = QueuedJobs(self.store, "ray")
        self.inflight: dict[Any, tuple[Job, int, list[str], str]] = {}  # ref → job, attempt, tried, agent
        self.actor_of: dict[Any, Any] = {}  # ref → the actor running it
        self.keys: set[tuple[str, str]] = set()  # (job, device) in flight: a moved job may be sent again
        self.per_device: Counter[str] = Counter()
        self.backlog: dict[str, list[tuple[Job, int]]] = {}
        self.retries: dict[str, deque[tuple[Job, int, list[str]]]] = defaultdict(deque)
        self.retrying: set[str] = set()  # job ids waiting in `retries`: the store shows them queued too
        self.owner: dict[str, str] = {}  # device → agent whose node advertises it
        self.actors: dict[str, Any] = {}  # agent → a ready actor
        self.actor_node: dict[str, str] = {}  # agent → the node its actor runs on
        self.starting: dict[Any, tuple[str, Any]] = {}  # readiness ref → (agent, actor)
        self.retry_after: dict[str, float] = {}  # agent → no new actor before (monotonic)
        self.wake_event = threading.Event()
        self.wake_event.set()
        self.sent = 0
        threading.Thread(target=self._loop, name="farm-dispatch", daemon=True).start()

    def wake(self) -> bool:
        self.wake_event.set()
        return True

    def stats(self) -> dict[str, Any]:
        return {"inflight": len(self.inflight), "sent": self.sent, "actors": sorted(self.actors),
                "backlog": sum(len(v) for v in self.backlog.values())}

    # Actors ----------------------------------------------------------------------------------

    def _refresh_actors(self) -> None:
        """One actor per live agent node; new ones are used once they answered."""
        live = cluster_agents()
        self.owner = {d: agent for agent, (_, devices) in live.items() for d in devices}
        for agent in [a for a in self.actors if a not in live or live[a][0] != self.actor_node.get(a)]:
            self.actors.pop(agent)  # its node is gone (or restarted): in-flight calls fail, take the retry path
        pending = {agent for agent, _ in self.starting.values()}
        now = time.monotonic()
        for agent, (_, devices) in live.items():
            if agent in self.actors or agent in pending or now < self.retry_after.get(agent, 0.0):
                continue
            actor = AgentActor.options(resources={agent_resource(agent): 1},
                                       max_concurrency=self.depth * len(devices) + 1,
                                       name=None, lifetime=None).remote()
            self.starting[actor.node.remote()] = (agent, actor)

    def _check_starting(self) -> None:
        if not self.starting:
            return
        ready, _ = ray.wait(list(self.starting), num_returns=len(self.starting), timeout=0)
        for ref in ready:
            agent, actor = self.starting.pop(ref)
            try:
                self.actor_node[agent] = ray.get(ref)
            except Exception as exc:
                log.warning("dispatcher: actor for agent %s did not start: %s", agent, exc)
                self.retry_after[agent] = time.monotonic() + 2.0
                continue
            self.actors[agent] = actor
            self.wake_event.set()

    def _actor_died(self, agent: str, actor_ref: Any) -> None:
        if self.actors.get(agent) is actor_ref:
            self.actors.pop(agent)
            self.retry_after[agent] = time.monotonic() + 2.0  # let the cluster notice a dead node first

    # Jobs ------------------------------------------------------------------------------------

    def _refresh(self) -> None:
        queued = self.queued()
        if self.retrying:  # a retry waits on the device the store says, if the store still has it queued
            now_queued = {job.job_id: job for job, _ in queued}
            retries: dict[str, deque[tuple[Job, int, list[str]]]] = defaultdict(deque)
            for items in self.retries.values():
                for job, attempt, tried in items:
                    current = now_queued.get(job.job_id)
                    if current is not None:
                        retries[current.device].append((current, attempt, tried))
            self.retries = retries
            self.retrying = {job.job_id for items in retries.values() for job, _, _ in items}
        backlog: dict[str, list[tuple[Job, int]]] = defaultdict(list)
        for job, attempts in queued:
            if (job.job_id, job.device) not in self.keys and job.job_id not in self.retrying:
                backlog[job.device].append((job, attempts))
        self.backlog = backlog

    def _submit(self, job: Job, attempt: int, tried: list[str]) -> bool:
        agent = self.owner.get(job.device)
        actor = self.actors.get(agent) if agent else None
        if actor is None:
            return False  # its node is not up (yet): the job waits; reapers move it off an offline device
        ref = actor.run.remote(job.model_dump(mode="json"), attempt, tried)
        self.inflight[ref] = (job, attempt, tried, agent)  # type: ignore[assignment]
        self.actor_of[ref] = actor
        self.keys.add((job.job_id, job.device))
        self.per_device[job.device] += 1
        self.sent += 1
        return True

    def _fill(self) -> None:
        for device in {*self.retries, *self.backlog}:
            retries, items = self.retries.get(device), self.backlog.get(device)
            while self.per_device[device] < self.depth:
                if retries:
                    job, attempt, tried = retries[0]
                    if not self._submit(job, attempt, tried):
                        break
                    retries.popleft()
                    self.retrying.discard(job.job_id)
                elif items:
                    job, attempts = items[0]
                    if not self._submit(job, attempts + 1, []):
                        break
                    items.pop(0)
                else:
                    break
        for device in [d for d, q in self.retries.items() if not q]:
            del self.retries[device]

    def _retry(self, job: Job, attempt: int, tried: list[str]) -> None:
        self.retries[job.device].append((job, attempt, tried))
        self.retrying.add(job.job_id)

    def _finished(self, ref: Any) -> None:
        job, attempt, tried, agent = self.inflight.pop(ref)
        actor = self.actor_of.pop(ref)
        self.keys.discard((job.job_id, job.device))
        self.per_device[job.device] -= 1
        try:
            out = ray.get(ref)
        except Exception as exc:  # the actor or its node died under the job: infrastructure
            died = isinstance(exc, ray.exceptions.RayActorError)
            if died:
                self._actor_died(agent, actor)
            status = self.store.job_status(job.job_id)
            if status not in ("queued", "running"):
                return  # its result arrived before the worker went away
            if died and status == "queued":  # it never started (it waited for its device): send it again
                self.wake_event.set()
                return
            if any(j == job.job_id for j, _ in self.keys) or job.job_id in self.retrying:
                return  # already re-sent (a reaper moved it): that delivery owns it now
            d = after_infra_error(self.store, job, job.device, attempt, f"ray: {type(exc).__name__}: {exc}"[:300],
                                  tried, agent="ray")
            if d.result is not None:
                self.store.save_result(d.result, job)
                self.store.finish_run_if_complete(job.run_id)
            else:
                assert d.retry_on is not None
                self._retry(job.model_copy(update={"device": d.retry_on}), d.attempt, d.tried)
            return
        if out["status"] == "retry":
            self._retry(Job.model_validate(out["job"]), out["attempt"], out["tried"])

    def _loop(self) -> None:
        reaper = Reaper(self.store, "ray", self.lease_s)
        next_refresh = next_reap = next_nodes = 0.0
        while True:
            now = time.monotonic()
            try:
                if now >= next_nodes:
                    self._refresh_actors()
                    next_nodes = now + 2.0
                self._check_starting()
                if self.wake_event.is_set() or now >= next_refresh:
                    self.wake_event.clear()
                    self._refresh()
                    next_refresh = now + 2.0
                if now >= next_reap:
                    if reaper.tick():
                        self.wake_event.set()
                    next_reap = now + min(5.0, self.lease_s / 2)
                self._fill()
                if not self.inflight:
                    self.wake_event.wait(0.1 if self.starting else 0.5)
                    continue
                refs = list(self.inflight)
                ready, rest = ray.wait(refs, num_returns=1, timeout=0.1 if self.starting else 0.5)
                if ready and rest:  # collect whatever else is done without waiting
                    ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
                for ref in ready:
                    self._finished(ref)
            except InfraError as exc:
                log.warning("dispatcher: store unreachable: %s", exc)
                time.sleep(1.0)
            except Exception:  # keep dispatching: a bug in one pass must not strand every Ray run
                log.exception("dispatcher pass failed")
                time.sleep(1.0)


def dispatcher_for(store_url: str, lease_s: float) -> Any:
    """The store's detached dispatcher, created on this node the first time."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    name = "farm-dispatcher-" + hashlib.sha256(store_url.encode()).hexdigest()[:12]
    here = ray.get_runtime_context().get_node_id()
    return Dispatcher.options(name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
                              scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True)
                              ).remote(store_url, lease_s)


class RayExecutor(Executor):
    """Routes a run, wakes the cluster's dispatcher, returns: `farm submit --executor ray`."""

    name = "ray"
    blocking = False

    def submit(self, run_id: str, jobs: list[Job], progress: ProgressCallback | None = None) -> None:
        prepare_dispatch(self.store, run_id, jobs)
        address = str(self.options.get("address") or os.environ.get("FARM_RAY_ADDRESS") or "auto")
        lease_s = float(os.environ.get("FARM_LEASE_S", "60"))  # type: ignore[arg-type]
        try:
            ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError) as exc:
            raise InfraError(f"cannot reach the Ray cluster at {address}: {exc}") from exc
        try:
            ray.get(dispatcher_for(self.store.url, lease_s).wake.remote(), timeout=120)
        finally:
            ray.shutdown()


def ray_bin() -> str:
    return shutil.which("ray") or str(Path(sys.executable).parent / "ray")


class RayNode:
    """The agent side: a Ray worker node advertising this agent and its devices, restarted if it dies.

    ``--num-cpus 0``: the node runs only its agent's actor (``num_cpus=0``), and Ray prestarts one idle
    worker per CPU, which would be wasted processes here.
    """

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.devices = [d.name for d in cfg.inventory().devices]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        resources = {agent_resource(self.cfg.name): 1, **{resource_for(d): 1 for d in self.devices}}
        cmd = [ray_bin(), "start", "--address", self.cfg.ray_address, "--resources", json.dumps(resources),
               "--num-cpus", "0", "--block", "--disable-usage-stats"]
        if self.cfg.ray_node_ip:
            cmd += ["--node-ip-address", self.cfg.ray_node_ip]
        env = {**os.environ, CONFIG_ENV: self.cfg.source}  # the node's workers run execute() with it
        self.proc = subprocess.Popen(cmd, env=env)

    def check(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            log.warning("ray node exited (%s); restarting it", self.proc.returncode)
            self.start()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # `ray start --block` takes its raylet and workers down
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def send(self, job: Job, attempt: int) -> None:
        """Nothing to send: the dispatcher pulls queued jobs from the store."""
