"""`farm agent start --config agent.yaml` and `farm coordinator`: the long-running processes."""

from __future__ import annotations

import logging
import signal
import threading

import click

from farm.cli._common import console, db_option, styled


@click.group("agent")
def agent_group() -> None:
    """Run an agent on a host with devices attached."""


@agent_group.command("start")
@click.option("--config", "config_path", required=True, envvar="FARM_AGENT_CONFIG",
              type=click.Path(dir_okay=False, exists=True), help="agent.yaml (see agents/agent.yaml).")
@click.option("--log-level", default="INFO", show_default=True)
def start_cmd(config_path: str, log_level: str) -> None:
    """Register this host's devices and take their jobs until stopped (SIGTERM finishes the running jobs)."""
    import os

    from farm.agent.config import CONFIG_ENV, load_agent_config
    from farm.agent.service import Agent

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    cfg = load_agent_config(config_path)
    os.environ[CONFIG_ENV] = cfg.source  # Ray workers on this node read it
    devices = ", ".join(d.name for d in cfg.inventory().devices)
    console.print(styled("agent [bold]{name}[/] ({executor}): {devices}", name=cfg.name, executor=cfg.executor,
                         devices=devices))
    Agent(cfg).run()


@click.command("coordinator")
@db_option
@click.option("--executor", "executor_name", type=click.Choice(["celery"]), default="celery", show_default=True)
@click.option("--broker", "broker", envvar="FARM_BROKER_URL", default=None, help="Redis URL of the broker.")
@click.option("--lease", "lease_s", default=60.0, show_default=True, help="Seconds of agent silence before "
              "its job is re-dispatched (match the agents' lease_s).")
@click.option("--interval", default=5.0, show_default=True)
def coordinator_cmd(db_url: str | None, executor_name: str, broker: str | None, lease_s: float,
                    interval: float) -> None:
    """Re-dispatch jobs of silent agents and move jobs off offline or quarantined devices.

    Every agent already does this for the others; run a coordinator as well so a farm whose
    agents all died recovers as soon as one comes back. (Ray runs its own dispatcher actor.)
    """
    from farm.cli._common import open_store
    from farm.executors._dispatch import Reaper
    from farm.executors.celery import broker_url, make_app, publish

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = make_app(broker_url(broker))
    reaper = Reaper(open_store(db_url), executor_name, lease_s, send=lambda job, a: publish(app, job, a))
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    console.print(f"coordinator: reaping {executor_name} jobs every {interval:g}s (lease {lease_s:g}s)")
    while not stop.is_set():
        moved = reaper.tick()
        if moved:
            console.print(f"re-dispatched {len(moved)} job(s)")
        stop.wait(interval)


commands = [agent_group, coordinator_cmd]
