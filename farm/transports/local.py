"""The `local` transport: this host is the device (the embedded default).

A command given as argv (:meth:`LocalTransport.run`) is executed directly, without a ``/bin/sh``
in between: every argument is literal anyway, and the extra shell cost a fork and exec per command
(~1 ms of CPU), paid by every job. The result is what the shell would have reported: a command
killed by signal N exits 128 + N, and one the kernel cannot execute (missing, not executable, a
script without ``#!``) goes to the shell after all, for its exit status and message. Output of
both pipes and the command's exit are waited for in the calling thread (one ``select`` over the
pipes and a pidfd), not by two reader threads per command.
"""

from __future__ import annotations

import codecs
import io
import locale
import os
import platform
import select
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from farm.errors import InfraError, JobError
from farm.registry import PluginOptions
from farm.transports.base import CommandResult, DeviceInfo, LineCallback, Transport, quote_argv


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


def _decoder() -> io.IncrementalNewlineDecoder:
    """Bytes → text as ``Popen(text=True, errors="replace")`` decodes: locale encoding, universal newlines."""
    inner = codecs.getincrementaldecoder(locale.getpreferredencoding(False))(errors="replace")
    return io.IncrementalNewlineDecoder(inner, translate=True)


def _close(proc: subprocess.Popen[bytes]) -> None:
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def _collect(proc: subprocess.Popen[bytes], timeout: float | None,
             on_line: LineCallback | None) -> tuple[int, str, str]:
    """Both pipes to EOF and the exit status, in this thread; `on_line` gets stdout's lines as they come.

    `timeout` bounds the command's own run (as ``wait_exited``); after it exited, what a background
    child still writes to the pipes is read to EOF, as before.
    """
    assert proc.stdout is not None and proc.stderr is not None
    deadline = None if timeout is None else time.monotonic() + timeout
    fds = {proc.stdout.fileno(): 0, proc.stderr.fileno(): 1}
    decoders = (_decoder(), _decoder())
    texts: tuple[list[str], list[str]] = ([], [])
    partial = ""
    try:
        pidfd: int | None = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        pidfd = None
    code: int | None = None
    poller = select.poll()  # not select(): a worker may hold fds above FD_SETSIZE
    for fd in [*fds, pidfd] if pidfd is not None else fds:
        poller.register(fd, select.POLLIN)
    try:
        while fds or code is None:
            wait = None if deadline is None or code is not None else max(0.0, deadline - time.monotonic())
            if pidfd is None and code is None:  # no pidfd: notice the exit by polling
                wait = 0.01 if wait is None else min(wait, 0.01)
            ready = [fd for fd, _ in poller.poll(None if wait is None else wait * 1000)]
            if code is None and (pidfd is None or pidfd in ready):
                code = proc.poll()
                if code is not None and pidfd is not None:
                    poller.unregister(pidfd)
            for fd in ready:
                if fd not in fds:
                    continue
                which = fds[fd]
                data = os.read(fd, 65536)
                text = decoders[which].decode(data, final=not data)
                if not data:
                    del fds[fd]
                    poller.unregister(fd)
                if text:
                    texts[which].append(text)
                if which == 0 and on_line is not None and (text or not data):
                    lines = (partial + text).split("\n")
                    partial = lines.pop()
                    for line in lines:
                        on_line(line)
                    if not data and partial:
                        on_line(partial)
                        partial = ""
            if code is None and deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(proc.args, timeout or 0.0)
    finally:
        if pidfd is not None:
            os.close(pidfd)
    _close(proc)
    return proc.wait(), "".join(texts[0]), "".join(texts[1])


class LocalTransport(Transport):
    """Runs commands with /bin/sh on this machine; files are plain copies."""

    kind = "local"

    class Options(PluginOptions):
        name: str = "local"

    def __init__(self, name: str = "local") -> None:
        self.name = name

    def shell(self, script: str, *, timeout: float | None = None,
              on_line: LineCallback | None = None) -> CommandResult:
        try:
            return self._execute(["/bin/sh", "-c", script], script, timeout, on_line)
        except OSError as exc:
            raise InfraError(f"cannot start /bin/sh: {exc}") from exc

    def run(self, argv: Sequence[str], *, timeout: float | None = None,
            on_line: LineCallback | None = None, pidfile: str | None = None) -> CommandResult:
        command = quote_argv(argv)
        try:
            return self._execute([str(a) for a in argv], command, timeout, on_line, pidfile)
        except OSError:  # not executable as it stands: the shell says why (127, 126) or runs a #!-less script
            return super().run(argv, timeout=timeout, on_line=on_line, pidfile=pidfile)

    def _execute(self, args: list[str], command: str, timeout: float | None,
                 on_line: LineCallback | None, pidfile: str | None = None) -> CommandResult:
        start = time.monotonic()
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)  # its own group: killpg takes its children too
        if pidfile is not None:  # the group's id, for farm.agent.scope to kill it from elsewhere
            Path(pidfile).parent.mkdir(exist_ok=True)  # not parents: a vanished workdir stays vanished
            Path(pidfile).write_text(f"{proc.pid}\n")
        try:
            code, out, err = _collect(proc, timeout, on_line)
        except subprocess.TimeoutExpired as exc:
            os.killpg(proc.pid, 9)
            proc.wait()
            _close(proc)
            raise JobError(f"command timed out after {timeout:g}s: {command[:120]}") from exc
        finally:
            if pidfile is not None:  # the command ended: its id must not outlive it (pids are recycled)
                Path(pidfile).unlink(missing_ok=True)
        return CommandResult(command, 128 - code if code < 0 else code, out, err, time.monotonic() - start)

    def push(self, local: Path, remote: str) -> int:
        dest = Path(remote)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        shutil.copy2(local, tmp)
        os.replace(tmp, dest)
        return dest.stat().st_size

    def stat_signatures(self, remotes: Sequence[str]) -> list[str | None]:
        out: list[str | None] = []
        for remote in remotes:
            try:
                st = os.stat(remote)
            except OSError:
                out.append(None)
                continue
            out.append(f"{st.st_size} {st.st_ino} {st.st_mtime_ns} {st.st_ctime_ns}")
        return out

    def pull(self, remote: str, local: Path) -> None:
        if not Path(remote).exists():
            raise InfraError(f"no such file on local device: {remote}")
        shutil.copy2(remote, local)

    def info(self) -> DeviceInfo:
        return DeviceInfo(serial=platform.node(), model=platform.node(), abi=platform.machine(),
                          kernel=platform.release(), ram_bytes=host_ram_bytes(),
                          cpu=proc_field("/proc/cpuinfo", "model name") or "",
                          extra={"cores": os.cpu_count()})
