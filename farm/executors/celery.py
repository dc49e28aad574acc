"""The Celery executor: Redis broker, one queue per device, one Celery worker per device.

Coordinator side, :class:`CeleryExecutor` routes each job (priority order, quarantine) and
publishes it to ``farm.dev.<device>`` with a Redis priority step; ``farm submit`` returns at once.
Agent side, :class:`CeleryConsumers` forks one solo-pool Celery worker per device with
``prefetch_multiplier=1`` and ``acks_late``: a device holds at most one unacknowledged job, so
it is an exclusive lease, and a job of a killed agent stays in Redis. Redelivery after
``visibility_timeout`` is only the backstop; the store's leases and the reapers re-dispatch a
silent agent's job within a lease period. Messages are acknowledged after the result is stored
(or spooled, while the store is unreachable).

Profile-level routing (retry elsewhere, move off a quarantined or offline device) is decided in
the store (:mod:`farm.dispatch`) and sent to the chosen device's queue, not through a
shared profile queue: a queue cannot exclude the device that just failed, and a broken device
is the idlest consumer of all.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing as mp
import os
import signal
from functools import cache
from typing import Any

from celery import Celery
from kombu.exceptions import BatchPublishError

from farm.agent.config import AgentConfig
from farm.dispatch import device_rounds, prepare_dispatch
from farm.executors.base import Executor, ProgressCallback
from farm.jobs import Job

log = logging.getLogger("farm.celery")
TASK = "farm.run_job"
DEFAULT_BROKER = "redis://127.0.0.1:6379/0"
PUBLISH_CHUNK = 100  # messages per Redis round trip: devices get their first jobs while the rest follow


def broker_url(explicit: str | None = None) -> str:
    return explicit or os.environ.get("FARM_BROKER_URL") or DEFAULT_BROKER


def queue_for(device: str) -> str:
    return f"farm.dev.{device}"


def broker_priority(priority: int) -> int:
    """farm priority (higher first, 0 default) → Redis step (0 is served first, 9 last)."""
    return min(9, max(0, 5 - priority))


@cache
def make_app(url: str, visibility_timeout_s: float = 6 * 3600, unacked_restore_s: float = 60.0) -> Celery:
    """The Celery app: configuration and routing only; the job function knows nothing of Celery."""
    app = Celery("farm", broker=url, set_as_current=False)
    app.conf.update(
        task_acks_late=True, task_reject_on_worker_lost=True, worker_prefetch_multiplier=1,
        task_serializer="json", accept_content=["json"], task_ignore_result=True, result_backend=None,
        task_default_queue="farm.default", task_create_missing_queues=True,
        broker_connection_retry_on_startup=True, broker_connection_max_retries=None,
        worker_hijack_root_logger=False, worker_cancel_long_running_tasks_on_connection_loss=False,
        broker_transport_options={
            "visibility_timeout": visibility_timeout_s,  # above the longest job, or it runs twice
            "unacked_restore_interval": unacked_restore_s, "unacked_restore_throttle": 1,
            "priority_steps": list(range(10)), "queue_order_strategy": "priority",
        },
    )

    @app.task(name=TASK, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
    def run_job_task(self: Any, job: dict[str, Any], attempt: int = 1, tried: list[str] | None = None) -> str:
        from farm.agent.lifecycle import execute
        from farm.agent.runtime import runtime

        out = execute(runtime(), Job.model_validate(job), attempt, tried)
        if out.status == "retry":
            publish(self.app, out.job, out.attempt, out.tried)
        return out.status

    return app


def publish(app: Celery, job: Job, attempt: int = 1, tried: list[str] | None = None,
            producer: Any = None) -> None:
    """Put `job` on its device's queue; kombu retries while Redis restarts."""
    app.send_task(TASK, kwargs={"job": job.model_dump(mode="json"), "attempt": attempt, "tried": tried or []},
                  queue=queue_for(job.device), priority=broker_priority(job.priority),
                  task_id=f"{job.job_id}.{attempt}", producer=producer, retry=True,
                  retry_policy={"max_retries": 60, "interval_start": 0.1, "interval_step": 0.5,
                                "interval_max": 2.0},
                  # what logs and monitors show of the arguments; Celery's own repr of the whole job
                  # would cost more than the rest of the publish
                  argsrepr="()", kwargsrepr=f"{{'job': {job.job_id!r}, 'attempt': {attempt}}}")


def publish_many(app: Celery, jobs: list[Job], chunk: int = PUBLISH_CHUNK) -> None:
    """Publish `jobs` in order, `chunk` messages per Redis round trip (a pipeline).

    A chunk whose pipeline fails (Redis restarting) is published again one message at a time,
    with :func:`publish`'s retries. Some of its messages may then be in Redis twice: harmless,
    since a job runs only for the delivery that claims it in the store.
    """
    with app.producer_or_acquire() as producer:
        for i in range(0, len(jobs), chunk):
            part = jobs[i:i + chunk]
            try:
                with producer.batch(max_size=len(part)):
                    for job in part:
                        publish(app, job, producer=producer)
            except (BatchPublishError, *producer.connection.connection_errors) as exc:
                log.warning("publishing %d job(s) in one batch failed (%s); one by one", len(part), exc)
                for job in part:
                    publish(app, job, producer=producer)


class CeleryExecutor(Executor):
    """Publishes a run's jobs to the device queues and returns; agents do the rest."""

    name = "celery"
    blocking = False

    def submit(self, run_id: str, jobs: list[Job], progress: ProgressCallback | None = None) -> None:
        app = make_app(broker_url(self.options.get("broker_url")))  # type: ignore[arg-type]
        publish_many(app, device_rounds(prepare_dispatch(self.store, run_id, jobs)))


def _die_with_parent() -> None:
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _device_worker(cfg: AgentConfig, device: str) -> None:
    """Body of a forked device worker: a fresh runtime, then a solo-pool Celery worker on one queue."""
    from farm.agent import runtime as agent_runtime

    _die_with_parent()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)  # Celery installs its own; the parent's must not leak in
    parent = agent_runtime._runtime
    if parent is not None:
        parent.after_fork()
    agent_runtime.reset_runtime(agent_runtime.Runtime.from_config(cfg))
    app = make_app(cfg.broker_url, cfg.visibility_timeout_s, cfg.unacked_restore_s)
    worker = app.Worker(hostname=f"{device}@{cfg.name}", queues=[queue_for(device)], pool="solo",
                        concurrency=1, prefetch_multiplier=1, without_gossip=True, without_mingle=True,
                        without_heartbeat=True, loglevel="WARNING", quiet=True)
    worker.start()
    os._exit(worker.exitcode or 0)


class CeleryConsumers:
    """The agent side: one forked Celery worker per device, restarted if it dies."""

    def __init__(self, cfg: AgentConfig) -> None:
        self.cfg = cfg
        self.devices = [d.name for d in cfg.inventory().devices]
        self.procs: dict[str, Any] = {}
        self._ctx = mp.get_context("fork")  # children share the imported code: start in ms, not seconds

    def _spawn(self, device: str) -> None:
        proc = self._ctx.Process(target=_device_worker, args=(self.cfg, device), name=f"farm-{device}")
        proc.start()
        self.procs[device] = proc

    def start(self) -> None:
        for device in self.devices:
            self._spawn(device)

    def check(self) -> None:
        for device, proc in list(self.procs.items()):
            if not proc.is_alive():
                log.warning("worker of %s exited (%s); restarting it", device, proc.exitcode)
                self._spawn(device)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)  # warm shutdown: the running job finishes and is acked
        for proc in self.procs.values():
            proc.join(timeout=60)
            if proc.is_alive():
                proc.kill()
                proc.join()

    def send(self, job: Job, attempt: int) -> None:
        publish(make_app(self.cfg.broker_url, self.cfg.visibility_timeout_s, self.cfg.unacked_restore_s),
                job, attempt)
