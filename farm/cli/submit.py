"""`farm submit SWEEP` and `farm plan SWEEP`: validate, plan, store and dispatch a sweep."""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from farm.cli._common import console, db_option, devices_option, failures_table, open_store, results_table, styled
from farm.errors import ConfigError


def _load(sweep_path: str, devices_path: str | None):  # -> (Sweep, Inventory)
    """Validate the sweep and the inventory: both are checked before anything else happens."""
    from farm.devices import load_inventory
    from farm.spec import load_sweep

    return load_sweep(sweep_path), load_inventory(devices_path)


def _calibrated(plan, store) -> str:  # type: ignore[no-untyped-def]
    """Calibrate the plan's estimates from the store's timings of the same devices; say how, in words."""
    from farm.plan import calibrate

    factors = calibrate(plan, store.job_timings({j.device for j in plan.jobs}))
    if not factors:
        return "roofline only: no stored jobs of these devices to calibrate from"
    return "calibrated from stored runs: " + ", ".join(f"{k} ×{f:.2g} ({n} jobs)" for k, (f, n) in factors.items())


@click.command("plan")
@click.argument("sweep_path", metavar="SWEEP", type=click.Path(dir_okay=False))
@devices_option
@db_option
@click.option("--json", "as_json", is_flag=True, help="Print the jobs as JSON.")
def plan_cmd(sweep_path: str, devices_path: str | None, db_url: str | None, as_json: bool) -> None:
    """Show the jobs a sweep expands to, the cells dropped and why, and the estimated wall time
    (calibrated by how long jobs of the same devices took in the store's earlier runs)."""
    from farm.plan import describe, make_plan

    plan = make_plan(*_load(sweep_path, devices_path))
    how = _calibrated(plan, open_store(db_url))
    if as_json:
        click.echo(json.dumps({"jobs": [j.model_dump(mode="json") for j in plan.jobs],
                               "dropped": [{"cell": d.cell, "reason": d.reason} for d in plan.dropped],
                               "est_s": plan.est_s, "est_factor": plan.est_factor, "estimate": how}, indent=1))
    else:
        click.echo(describe(plan))
        click.echo(f"estimate {how}")


EXIT_CODES_HELP = ("Exit codes: 0 every job done; 1 a job failed (the benchmark: engine exit, bad output); "
                   "2 bad input (nothing ran); 3 infrastructure (device, store or broker); "
                   "130 interrupted (continue with `farm resume RUN`).")


@click.command("submit", epilog=EXIT_CODES_HELP)
@click.argument("sweep_path", metavar="SWEEP", type=click.Path(dir_okay=False))
@db_option
@devices_option
@click.option("--executor", "executor_name", default="local", show_default=True,
              help="local (in-process), celery or ray.")
@click.option("--wait/--no-wait", default=None,
              help="Wait for the run to end (default: yes for local, no for celery/ray).")
@click.pass_context
def submit_cmd(ctx: click.Context, sweep_path: str, db_url: str | None, devices_path: str | None,
               executor_name: str, wait: bool | None) -> None:
    """Validate, plan and run a sweep; prints the run id and, when done, the results table."""
    from farm.dispatch.reaper import in_process_name
    from farm.executors import EXECUTORS
    from farm.plan import make_plan
    from farm.store import new_run_id
    from farm.submit import run_jobs

    sweep, inventory = _load(sweep_path, devices_path)  # a bad sweep is reported before the store is touched
    executor_cls = EXECUTORS.get(executor_name)
    run_id = new_run_id()
    store = open_store(db_url)
    quarantined = {d.name: d.quarantine_reason or "" for d in store.devices() if d.status == "quarantined"}
    plan = make_plan(sweep, inventory, run_id, quarantined)
    if not plan.jobs:
        reasons = "; ".join(sorted({d.reason for d in plan.dropped})) or "no cell matched the include rules"
        raise ConfigError(f"{sweep_path}: the sweep plans no job ({reasons})")
    how = _calibrated(plan, store)
    store.create_run(sweep.name, plan.jobs, run_id=run_id, sweep_yaml=Path(sweep_path).read_text(),
                     sweep_digest=sweep.digest(), executor=executor_name, priority=sweep.priority,
                     meta={"dropped": [{"cell": d.cell, "reason": d.reason} for d in plan.dropped],
                           "est_s": plan.est_s, "est_factor": plan.est_factor, "devices_path": devices_path},
                     holder=in_process_name() if executor_cls.blocking else None)
    for name in sorted({j.device for j in plan.jobs}):
        entry = next(d for d in inventory.devices if d.name == name)
        store.upsert_device(name, entry.profile, entry.transport.kind)
    console.print(styled("run [bold]{run}[/]: {rest}", run=run_id, rest=(
        f"{len(plan.jobs)} jobs on {len({j.device for j in plan.jobs})} device(s), {len(plan.dropped)} dropped, "
        f"estimated {plan.est_s:.0f} s ({how})")))
    wait = executor_cls.blocking if wait is None else wait
    if not executor_cls.blocking and not wait:
        run_jobs(store, inventory, run_id, executor_name, plan.jobs, wait=False)
        console.print(f"follow it with: farm status {run_id} --watch")
        return
    outcome = _with_progress(plan.jobs, lambda progress: run_jobs(
        store, inventory, run_id, executor_name, plan.jobs, progress=progress, watch=_watch))
    ctx.exit(_report(store, sweep.name, outcome, db_url))


@click.command("resume", epilog=EXIT_CODES_HELP)
@click.argument("run_id", metavar="RUN")
@db_option
@click.option("--devices", "devices_path", envvar="FARM_DEVICES", default=None, type=click.Path(dir_okay=False),
              help="Inventory YAML (default: the one the run was submitted with).")
@click.pass_context
def resume_cmd(ctx: click.Context, run_id: str, db_url: str | None, devices_path: str | None) -> None:
    """Finish an interrupted run: its remaining jobs run; finished jobs are not repeated."""
    from farm.submit import resume

    store = open_store(db_url)
    run = store.get_run(run_id)
    left = store.jobs(run.id, status=["queued"])
    console.print(f"run {run.id}: resuming {len(left)} job(s)", markup=False)
    outcome = _with_progress(left, lambda progress: resume(store, run.id, devices_path, progress=progress,
                                                            watch=_watch))
    ctx.exit(_report(store, run.name, outcome, db_url))


def _watch(store, run_id: str) -> None:  # type: ignore[no-untyped-def]
    from farm.cli.runs import watch

    watch(store, run_id)


def _report(store, name: str, outcome, db_url: str | None = None) -> int:  # type: ignore[no-untyped-def]
    """Print what the run produced and how it ended; returns the exit code."""
    run_id = outcome.run_id
    df = store.results_frame(run_id) if outcome.status != "interrupted" or outcome.exit_code != 3 else None
    if df is not None and not df.empty:
        console.print(results_table(df, title=f"{name} · run {run_id}"))
    failed = failures_table(store, run_id) if df is not None else None
    if failed is not None:
        console.print(failed)
    console.print(f"run {run_id}: {outcome.status}", markup=False)
    if outcome.error and outcome.exit_code != 130:
        click.echo(f"error: {outcome.error}", err=True)
    if outcome.status == "interrupted" and outcome.exit_code == 130:
        click.echo(f"continue it with: farm resume {run_id}", err=True)
    elif outcome.status in ("done", "failed"):
        print_next_steps(run_id, db_url)
    return outcome.exit_code


def print_next_steps(run_id: str, db_url: str | None = None) -> None:
    """What a user can do with a finished run (the commands work as printed, --db included when given)."""
    db = f" --db {shlex.quote(db_url)}" if db_url else ""
    console.print("next: results as csv/json/parquet (--format), an HTML report, every run in the browser:")
    for cmd in (f"farm results {run_id}{db}", f"farm report {run_id}{db} --html report-{run_id}.html",
                f"farm dashboard{db}"):
        console.print(f"  {cmd}", markup=False, soft_wrap=True)  # never broken: copied and pasted as one line


def _with_progress(jobs, run):  # type: ignore[no-untyped-def]
    """Call run(progress) under a progress bar of `jobs`; returns what run returns."""
    total_est = sum(j.est_s for j in jobs) or 1.0
    # markup=False: the status column shows device and model names (untrusted text)
    with Progress(TextColumn("{task.description}", style="bold", markup=False), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[status]}", markup=False), TimeElapsedColumn(),
                  TextColumn("ETA {task.fields[eta]}"), console=console, transient=False) as progress:
        task = progress.add_task("jobs", total=len(jobs), status="", eta="?")
        t0 = time.monotonic()
        done_est = 0.0

        def on_event(event) -> None:  # type: ignore[no-untyped-def]
            nonlocal done_est
            label = f"{event.job.device} {event.job.model.label} {event.job.quant} {event.job.test}"
            if event.status in ("done", "failed"):
                done_est += event.job.est_s
                elapsed = time.monotonic() - t0
                # Scale the plan's estimate by how fast reality has been so far.
                eta = elapsed / max(done_est, 1e-9) * (total_est - done_est)
                progress.update(task, advance=1, eta=f"{eta:.0f}s",
                                status=f"{event.status}: {label}" + (f" ({event.detail[:60]})" if event.detail
                                                                     else ""))
            else:
                progress.update(task, status=f"{event.status}: {label}")

        return run(on_event)


commands = [plan_cmd, submit_cmd, resume_cmd]
