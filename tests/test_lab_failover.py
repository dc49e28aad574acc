"""A device that dies while its engine runs: infrastructure, retried on its twin, done there.

Two virtual phones of the same profile (lab-pixel-8) behind the real adb server; a sweep with one
job per phone. When phone1's engine is running (seen in phone1's own namespace) the phone is
killed with everything it runs. That attempt must surface as an InfraError (the executor's
``retry``, never a stored benchmark failure), the job must move to phone2 and end ``done`` there
on its second attempt, and phone1's failure must be counted in the store.

At the transport's depth: a device going down may kill the command a moment before its daemon,
which then still reports exit 137 (adb's shell v2 exit packet, sshd's exit-status). Such a death
on a device that no longer answers is an InfraError; on a device that is still there it stays the
command's exit status (an OOM kill is the benchmark's failure).
"""

from __future__ import annotations

import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from farm.devices import load_inventory
from farm.errors import InfraError
from farm.executors.base import ProgressEvent
from farm.executors.local import LocalExecutor
from farm.plan import make_plan
from farm.spec import loads_sweep
from farm.store import Store
from farm.transports import open_transport
from tests.lab_fixtures import need_lab_tools

SWEEP = """
version: 1
name: failover
models: [farm-tiny]
quants: [q4_0]
backends: [reference]
devices: [phone1, phone2]
prompt_tokens: [32]
gen_tokens: [32]
threads: [1]
repetitions: 2
warmup: 0
power: false  # failover is judged here; power and the gate with shipped defaults: test_lab_profiles
thermal_gate: false
"""


@pytest.fixture(scope="module")
def twin_lab() -> Iterator[object]:
    need_lab_tools()
    from farm.lab import Lab

    with Lab(Path(tempfile.mkdtemp(prefix="farm-twinlab-")), phones=2, boards=1,
             phone_profiles=("pixel-8",)) as running:
        yield running


def pids_in(ns: str, wanted: Callable[[list[bytes]], bool]) -> list[int]:
    """Processes of a device's mount namespace whose argv satisfies `wanted`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.readlink(proc / "ns" / "mnt") != ns:
                continue
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if wanted(argv):
            found.append(int(proc.name))
    return found


def engine_pids(ns: str) -> list[int]:
    """Processes of the device's mount namespace running the engine's bench command."""
    return pids_in(ns, lambda argv: any(a.endswith(b"farm-engine") for a in argv) and b"bench" in argv)


def open_device(lab, name: str):  # -> Transport
    dev = lab.device(name)
    return open_transport(dev.transport["kind"], connect_timeout=3,
                          **{k: v for k, v in dev.transport.items() if k != "kind"})


def run_and_kill(lab, name: str, then_kill_device: bool) -> tuple[object, BaseException | None]:
    """Run `sleep 30` on the device, SIGKILL that sleep, and (50 ms later) maybe the whole device."""
    transport = open_device(lab, name)
    outcome: dict[str, object] = {}

    def command() -> None:
        try:
            outcome["result"] = transport.shell("sleep 30", timeout=60)
        except Exception as exc:  # collected for the assertions
            outcome["error"] = exc

    runner = threading.Thread(target=command)
    runner.start()
    ns = lab.device(name).ns
    deadline = time.monotonic() + 15
    while not (victims := pids_in(ns, lambda argv: argv[:2] == [b"sleep", b"30"])):
        assert time.monotonic() < deadline, f"sleep never started on {name}"
        time.sleep(0.02)
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    if then_kill_device:
        time.sleep(0.05)  # the daemon reports exit 137, then goes down with the device
        lab.device(name).kill()
    runner.join(timeout=30)
    assert not runner.is_alive()
    transport.close()
    if then_kill_device:
        lab.restart_phone(name) if name in lab.phones else lab.restart_board(name)
    return outcome.get("result"), outcome.get("error")  # type: ignore[return-value]


@pytest.mark.parametrize("name", ["phone1", "board1"])
def test_command_killed_on_a_live_device_is_its_exit_status(twin_lab, name: str) -> None:
    result, error = run_and_kill(twin_lab, name, then_kill_device=False)
    assert error is None and result.exit_code == 137, (result, error)


@pytest.mark.parametrize("name", ["phone1", "board1"])
def test_command_killed_as_the_device_goes_down_is_infra(twin_lab, name: str) -> None:
    result, error = run_and_kill(twin_lab, name, then_kill_device=True)
    print(f"\n{name}: {error!r}"[:200])
    assert result is None and isinstance(error, InfraError), (result, error)
    assert "went away" in str(error) or "closed" in str(error) or "lost" in str(error)


def test_phone_killed_mid_engine_is_infra_and_moves_to_its_twin(twin_lab, tmp_path: Path) -> None:
    lab = twin_lab
    inv = load_inventory(lab.inventory_path)
    assert {d.profile for d in inv.devices if d.name in ("phone1", "phone2")} == {"lab-pixel-8"}
    store = Store(f"sqlite:///{tmp_path / 'farm.db'}")
    for d in inv.devices:
        store.upsert_device(d.name, d.profile, d.transport.kind)
    sweep = loads_sweep(SWEEP)
    plan = make_plan(sweep, inv, "kill1")
    assert sorted(j.device for j in plan.jobs) == ["phone1", "phone2"]
    victim = next(j.job_id for j in plan.jobs if j.device == "phone1")
    store.create_run(sweep.name, plan.jobs, run_id="kill1")

    ns = lab.phones["phone1"].ns
    events: list[ProgressEvent] = []
    requeued: list[str | None] = []
    killed: dict[str, object] = {}

    def kill_when_engine_runs() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            pids = engine_pids(ns)
            if pids:
                time.sleep(0.3)  # well inside the run: model loaded, tokens being computed
                killed["engine_pids_alive"] = [p for p in pids if Path(f"/proc/{p}").exists()]
                killed["at"] = time.monotonic()
                lab.kill_phone("phone1")
                return
            time.sleep(0.02)

    killer = threading.Thread(target=kill_when_engine_runs, name="killer")

    def progress(event: ProgressEvent) -> None:
        events.append(event)
        if event.job.job_id == victim and event.status == "stage:run" and event.job.device == "phone1":
            killer.start()
        if event.status == "retry":  # what the store holds for the job at that moment
            requeued.append(next(j.error for j in store.job_rows("kill1") if j.id == event.job.job_id))

    started = time.monotonic()
    LocalExecutor(store, inv).submit("kill1", plan.jobs, progress=progress)
    print(f"\nfailover run: {time.monotonic() - started:.1f} s; phone1 killed with engine pids "
          f"{killed.get('engine_pids_alive')} running")
    killer.join(timeout=5)
    assert killed.get("engine_pids_alive"), "phone1 was not killed while its engine was running"

    jobs = {j.id: j for j in store.job_rows("kill1")}
    moved = jobs[victim]
    for e in events:
        if e.job.job_id == victim and e.status in ("retry", "failed", "done"):
            print(f"  {e.job.device}: {e.status} {e.detail[:110]}")
    # the killed attempt was an infrastructure error: retried, never stored as a benchmark failure
    statuses = [(e.job.device, e.status) for e in events if e.job.job_id == victim]
    assert ("phone1", "retry") in statuses and ("phone1", "failed") not in statuses, statuses
    assert requeued and requeued[0].startswith("infra on phone1"), requeued
    # ... moved to the twin and done there on the second attempt
    assert moved.status == "done" and moved.device == "phone2" and moved.attempts == 2, \
        (moved.status, moved.device, moved.attempts, moved.error)
    assert moved.error_class is None
    other = next(j for j in jobs.values() if j.id != victim)
    assert other.status == "done" and other.device == "phone2" and other.attempts == 1
    df = store.results_frame("kill1")
    assert len(df) == 4 and (df["device"] == "phone2").all() and (df["exit_status"] == 0).all()
    # ... and the dead phone's failure is in the store
    devices = {d.name: d for d in store.devices()}
    assert devices["phone1"].failures == 1 and devices["phone2"].failures == 0
    assert store.get_run("kill1").status == "done"
