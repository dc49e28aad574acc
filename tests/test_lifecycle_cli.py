"""The job lifecycle as a user meets it, through `farm submit` / `farm resume` in a subprocess.

Exit codes, Ctrl-C and SIGTERM (interrupted, resumable, nothing left running), SIGKILL (the next
command reaps the run, the next job kills the orphaned engine), two submits on one device (never
at once), a full disk under the store (exit 3, the result spooled, `farm resume` finishes), a failed
job (exit 1), cancel (the running engine is killed).

Sweeps here use the shipped defaults except where a comment says why not.
"""

from __future__ import annotations

import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

FARM = [sys.executable, "-c", "from farm.cli.main import main; main()"]

# Long enough to be caught mid-job: farm-mini, 20 repetitions of pp64+tg64 (several seconds).
LONG = """version: 1
name: {name}
models: [farm-mini]
quants: [q4_0, q8_0]
prompt_tokens: [64]
gen_tokens: [64]
threads: [1]
repetitions: {reps}
warmup: 0
"""


def env_for(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_HOME=str(tmp / "home"), COLUMNS="80")
    return env


def farm(tmp: Path, *args: str, timeout: float = 600, env: dict[str, str] | None = None
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*FARM, *args], capture_output=True, text=True, timeout=timeout, cwd=tmp,
                          env=env or env_for(tmp))


def start(tmp: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([*FARM, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp,
                            env=env or env_for(tmp))


def sweep(tmp: Path, name: str = "life", reps: int = 20, extra: str = "") -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(LONG.format(name=name, reps=reps) + extra)
    return path


def engine_pidfile(tmp: Path) -> Path:
    return tmp / "home" / "cache" / "device" / "run" / "engine.pid"


def wait_for(pred, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def engine_running(tmp: Path) -> int | None:
    try:
        pid = int(engine_pidfile(tmp).read_text())
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def db(tmp: Path) -> sqlite3.Connection:
    return sqlite3.connect(tmp / "home" / "data" / "farm.db")


def run_id_of(out: str) -> str:
    line = next(li for li in out.splitlines() if li.startswith("run ") and "jobs on" in li)
    return line.split()[1].rstrip(":")


def test_exit_codes_are_documented_in_help(tmp_path: Path) -> None:
    for cmd in ("submit", "resume"):
        out = farm(tmp_path, cmd, "--help").stdout
        assert "130 interrupted" in " ".join(out.split()) and "3 infrastructure" in " ".join(out.split())


def test_failed_job_exits_1(tmp_path: Path) -> None:
    # A 1 s job timeout on a 20-repetition job: the engine is killed mid-run, a job failure (class job).
    bad = sweep(tmp_path, "fails", extra="timeouts: {job_s: 1}\n")
    res = farm(tmp_path, "submit", str(bad))
    assert res.returncode == 1, res.stdout + res.stderr
    assert ": failed" in res.stdout
    assert "timed out" in res.stdout


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_marks_the_run_kills_the_engine_and_resume_finishes_it(tmp_path: Path, sig: int) -> None:
    path = sweep(tmp_path, reps=8)
    proc = start(tmp_path, "submit", str(path))
    wait_for(lambda: engine_running(tmp_path), 300, "the first engine to start")
    engine = engine_running(tmp_path)
    assert engine is not None
    t0 = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    stopped_in = time.monotonic() - t0
    assert proc.returncode == 130, out + err
    assert stopped_in < 20, f"Ctrl-C took {stopped_in:.1f} s"
    assert "farm resume" in err and "Traceback" not in err
    wait_for(lambda: not alive(engine), 5, "the engine to die")
    run_id = run_id_of(out)
    with db(tmp_path) as c:
        assert c.execute("select status, holder from runs where id=?", (run_id,)).fetchone() == ("interrupted", None)
        statuses = dict(c.execute("select status, count(*) from jobs where run_id=? group by status", (run_id,)))
        assert "running" not in statuses and statuses.get("queued", 0) >= 1
        assert c.execute("select max(attempts) from jobs where run_id=? and status='queued'",
                         (run_id,)).fetchone()[0] == 0  # the interrupted attempt is not counted
        done_before = {r[0]: r[1] for r in c.execute(
            "select job_id, min(created_at) from results where run_id=? group by job_id", (run_id,))}
    res = farm(tmp_path, "resume", run_id)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"run {run_id}: done" in res.stdout
    with db(tmp_path) as c:
        assert c.execute("select status from runs where id=?", (run_id,)).fetchone() == ("done",)
        after = {r[0]: r[1] for r in c.execute(
            "select job_id, min(created_at) from results where run_id=? group by job_id", (run_id,))}
        assert c.execute("select count(*) from results where run_id=?", (run_id,)).fetchone()[0] == 2 * 8
    assert len(after) == 2
    assert all(after[j] == t for j, t in done_before.items())  # finished jobs were not run again


def test_sigkill_run_is_reaped_by_the_next_command_and_its_engine_killed(tmp_path: Path) -> None:
    path = sweep(tmp_path, reps=12)
    proc = start(tmp_path, "submit", str(path))
    wait_for(lambda: engine_running(tmp_path), 300, "the first engine to start")
    engine = engine_running(tmp_path)
    proc.kill()
    out, _ = proc.communicate(timeout=30)
    assert engine is not None and alive(engine)  # the engine has its own session: it outlives farm
    run_id = run_id_of(out)
    runs = farm(tmp_path, "runs")
    assert runs.returncode == 0
    assert any(run_id in li and "interrupted" in li for li in runs.stdout.splitlines()), runs.stdout
    res = farm(tmp_path, "resume", run_id)
    assert res.returncode == 0, res.stdout + res.stderr
    assert not alive(engine)  # the next job on the device killed what the dead run left running
    with db(tmp_path) as c:
        assert c.execute("select count(*) from results where run_id=?", (run_id,)).fetchone()[0] == 2 * 12


def test_two_submits_never_share_a_device(tmp_path: Path) -> None:
    a, b = sweep(tmp_path, "first", reps=3), sweep(tmp_path, "second", reps=3)
    procs = [start(tmp_path, "submit", str(a)), start(tmp_path, "submit", str(b))]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, out + err
    with db(tmp_path) as c:
        spans = sorted(c.execute("select started_at, finished_at, run_id from jobs where device='local'"))
    assert len(spans) == 4
    for (_, e1, r1), (s2, _, r2) in itertools.pairwise(spans):
        assert e1 <= s2, f"jobs of {r1} and {r2} overlapped on one device: {e1} > {s2}"


def test_store_on_a_full_disk_exits_3_and_resume_delivers_the_spooled_result(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs") if os.environ.get("CI") != "true" else None
        raise AssertionError("CI runs as root: this test must run")
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], check=True)
    try:
        env = {**env_for(tmp_path), "FARM_DB_URL": f"sqlite:///{mnt / 'farm.db'}"}
        path = sweep(tmp_path, reps=10)
        proc = start(tmp_path, "submit", str(path), env=env)
        wait_for(lambda: engine_running(tmp_path), 300, "the first engine to start")
        filler = mnt / "filler"
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)  # fills the disk
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 3, out + err
        assert "Traceback" not in err and "error:" in err
        spooled = list((tmp_path / "home").rglob("spool/local-*/*.json"))
        assert spooled, "the finished job's result must wait in the spool"
        filler.unlink()
        run_id = run_id_of(out)
        res = farm(tmp_path, "resume", run_id, env=env)
        assert res.returncode == 0, res.stdout + res.stderr
        assert not list((tmp_path / "home").rglob("spool/local-*/*.json"))
        with sqlite3.connect(mnt / "farm.db") as c:
            assert c.execute("select count(*) from results where run_id=?", (run_id,)).fetchone()[0] == 2 * 10
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_cancel_kills_the_running_engine(tmp_path: Path) -> None:
    path = sweep(tmp_path, reps=40)
    proc = start(tmp_path, "submit", str(path))
    wait_for(lambda: engine_running(tmp_path), 300, "the first engine to start")
    engine = engine_running(tmp_path)
    run_id = run_id_of(proc.stdout.readline())
    res = farm(tmp_path, "cancel", run_id)
    assert res.returncode == 0, res.stderr
    # the running job learns it at its next heartbeat (5 s by default) and kills its engine
    wait_for(lambda: not alive(engine), 30, "the cancelled job's engine to die")
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1, out + err
    assert "cancelled" in out
