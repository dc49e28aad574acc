"""The `local` transport: this host is the device (the embedded default)."""

from __future__ import annotations

import os
import platform
import select
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from farm.errors import InfraError, JobError
from farm.transports.base import CommandResult, DeviceInfo, LineCallback, Transport


def _pump(stream, sink: list[str], on_line: LineCallback | None) -> None:
    for line in iter(stream.readline, ""):
        sink.append(line)
        if on_line is not None:
            on_line(line.rstrip("\n"))
    stream.close()


def proc_field(path: str, key: str) -> str | None:
    """The value after `key:` in a /proc file like meminfo or cpuinfo (first match), or None."""
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def host_ram_bytes() -> int | None:
    total = proc_field("/proc/meminfo", "MemTotal:")
    return int(total.split()[0]) * 1024 if total else None


def wait_exited(proc: subprocess.Popen[Any], timeout: float | None) -> int:
    """``proc.wait(timeout)`` that notices the exit at once.

    Popen.wait with a timeout polls with sleeps that grow to 50 ms, so every command looked up to
    50 ms longer than it ran: dispatch overhead that lands in every job's wall time. A pidfd
    becomes readable the moment the process exits (Linux ≥ 5.3); elsewhere, the plain wait.
    """
    if timeout is None:
        return proc.wait()
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        return proc.wait(timeout=timeout)
    try:
        ready, _, _ = select.select([fd], [], [], timeout)
    finally:
        os.close(fd)
    if not ready:
        raise subprocess.TimeoutExpired(proc.args, timeout)
    return proc.wait()


class LocalTransport(Transport):
    """Runs commands with /bin/sh on this machine; files are plain copies."""

    kind = "local"

    def __init__(self, name: str = "local", **_: object) -> None:
        self.name = name

    def shell(self, script: str, *, timeout: float | None = None,
              on_line: LineCallback | None = None) -> CommandResult:
        start = time.monotonic()
        try:
            proc = subprocess.Popen(["/bin/sh", "-c", script], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, errors="replace",
                                    start_new_session=True)
        except OSError as exc:
            raise InfraError(f"cannot start /bin/sh: {exc}") from exc
        out: list[str] = []
        err: list[str] = []
        pumps = [threading.Thread(target=_pump, args=(proc.stdout, out, on_line), daemon=True),
                 threading.Thread(target=_pump, args=(proc.stderr, err, None), daemon=True)]
        for t in pumps:
            t.start()
        try:
            code = wait_exited(proc, timeout)
        except subprocess.TimeoutExpired as exc:
            os.killpg(proc.pid, 9)
            proc.wait()
            raise JobError(f"command timed out after {timeout:g}s: {script[:120]}") from exc
        for t in pumps:
            t.join()
        return CommandResult(script, code, "".join(out), "".join(err), time.monotonic() - start)

    def push(self, local: Path, remote: str) -> int:
        dest = Path(remote)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        shutil.copy2(local, tmp)
        os.replace(tmp, dest)
        return dest.stat().st_size

    def pull(self, remote: str, local: Path) -> None:
        if not Path(remote).exists():
            raise InfraError(f"no such file on local device: {remote}")
        shutil.copy2(remote, local)

    def info(self) -> DeviceInfo:
        return DeviceInfo(serial=platform.node(), model=platform.node(), abi=platform.machine(),
                          kernel=platform.release(), ram_bytes=host_ram_bytes(),
                          cpu=proc_field("/proc/cpuinfo", "model name") or "",
                          extra={"cores": os.cpu_count()})
