"""What a job starts on a device, and how it all dies with the job.

Every long-lived process a job starts on the device (the engine, the power sampler) records its
process-group id in a pidfile under ``<workdir>/run/``. The engine is started in a session of its
own (``setsid``), so its pidfile names the whole group: the engine and anything it forked.
:func:`stop_job` kills every group and process named there — on timeout, cancel, Ctrl-C, a lost
lease — and :func:`prepare` does the same before each job, so what an earlier job (or a killed
``farm submit``) left running never overlaps the next measurement. A power mode an earlier job set and
could not put back (its agent was killed) is restored by :func:`prepare` too, from the restore file
:mod:`farm.agent.power_mode` left in the run directory.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import posixpath
import shlex
import signal
from pathlib import Path

from farm.errors import InfraError
from farm.transports.base import Transport
from farm.transports.local import LocalTransport

log = logging.getLogger("farm.agent")


def run_dir(workdir: str) -> str:
    return posixpath.join(workdir, "run")


def pidfile(workdir: str, tag: str) -> str:
    """Where the process started for `tag` (``engine``, ``sampler-trace``, …) records its group id."""
    return posixpath.join(run_dir(workdir), f"{tag}.pid")


def _kill_script(workdir: str) -> str:
    d = shlex.quote(run_dir(workdir))
    # kill -- -PGID takes the group (setsid'ed engine and its children); plain kill the process itself
    # (a self-daemonising sampler); the file goes either way. Prints how many files it found.
    return (f"n=0; for f in {d}/*.pid; do [ -f \"$f\" ] || continue; p=$(cat \"$f\" 2>/dev/null); "
            f"case \"$p\" in ''|*[!0-9]*) ;; *) kill -KILL -- -\"$p\" 2>/dev/null; kill -KILL \"$p\" 2>/dev/null;; "
            f"esac; rm -f \"$f\"; n=$((n+1)); done; echo $n")


def _kill_local(workdir: str) -> int:
    """:func:`_kill_script` for this host, without starting a shell (the embedded default's hot path)."""
    n = 0
    for f in glob.glob(os.path.join(glob.escape(run_dir(workdir)), "*.pid")):
        try:
            text = Path(f).read_text().strip()
        except OSError:
            continue
        if text.isdigit():
            for kill in (os.killpg, os.kill):
                with contextlib.suppress(OSError):
                    kill(int(text), signal.SIGKILL)
        Path(f).unlink(missing_ok=True)
        n += 1
    return n


def stop_job(transport: Transport, workdir: str) -> int:
    """Kill everything the current job started on the device; returns how many pidfiles it found."""
    if isinstance(transport, LocalTransport):
        return _kill_local(workdir)
    out = transport.shell(_kill_script(workdir), timeout=30)
    text = out.stdout.strip().splitlines()
    return int(text[-1]) if text and text[-1].isdigit() else 0


def prepare(transport: Transport, workdir: str) -> int:
    """Before a job: leftovers of earlier jobs killed, the run directory ready, a power mode a killed job
    left restored. One device round trip (none on this host). Returns leftovers killed."""
    from farm.agent import power_mode

    restore = power_mode.restore_file(workdir)
    if isinstance(transport, LocalTransport):
        with contextlib.suppress(FileExistsError, FileNotFoundError):
            os.mkdir(run_dir(workdir))  # not makedirs: a workdir that vanished must stay vanished
        if not os.path.isdir(run_dir(workdir)):
            raise InfraError(f"cannot prepare {run_dir(workdir)}: the workdir is gone")
        killed = _kill_local(workdir)
        try:
            left = Path(restore).read_text()
        except OSError:
            left = ""
    else:
        # mkdir without -p: a workdir that vanished (device unmounted) must not be silently recreated
        d = shlex.quote(run_dir(workdir))
        out = transport.shell(f"mkdir {d} 2>/dev/null; [ -d {d} ] && {_kill_script(workdir)} && "
                              f"cat {shlex.quote(restore)} 2>/dev/null; true", timeout=30)
        lines = out.stdout.strip().splitlines()
        if not lines or not lines[0].isdigit():
            raise InfraError(f"cannot prepare {run_dir(workdir)} on the device: {out.stderr.strip()[:200]}")
        killed, left = int(lines[0]), "\n".join(lines[1:])
    if left.strip():  # after the kill: nothing of that job runs any more
        restored = power_mode.restore(transport, workdir, left)
        if restored is not None:
            log.warning("restored the power mode a killed job left (%s) from %s", restored.get("mode"), restore)
    return killed
