"""The transport interface: how an agent talks to one device (adb, ssh, local).

A transport runs commands, moves files and identifies the device. It knows nothing about
benchmarks. Every argument that reaches a device shell goes through :func:`quote_argv`, so
hostile strings (spaces, quotes, ``;``, ``$()``) arrive as single literal arguments.
"""

from __future__ import annotations

import contextlib
import shlex
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from farm.errors import InfraError, JobError

LineCallback = Callable[[str], None]


_SESSION = shlex.quote('echo $$ > "$0" && exec "$@"')  # $0: the pidfile, "$@": the command


def session_script(argv: Sequence[str], pidfile: str) -> str:
    """`argv` in a new session (process group) whose id is written to `pidfile` before it starts; the
    file goes when the command ends (a stale id must never name a recycled pid), its status is kept."""
    return (f"setsid -w sh -c {_SESSION} {quote_argv([pidfile, *argv])}; rc=$?; rm -f {shlex.quote(pidfile)}; "
            f"exit $rc")


def kill_group_script(pidfile: str) -> str:
    """Kill the process group named in `pidfile` (a no-op when it is gone)."""
    q = shlex.quote(pidfile)
    return f"p=$(cat {q} 2>/dev/null) && [ -n \"$p\" ] && kill -KILL -- -\"$p\" 2>/dev/null; rm -f {q}; true"


def quote_argv(argv: Sequence[str]) -> str:
    """One POSIX-shell command line in which every element is a literal argument."""
    return " ".join(shlex.quote(str(a)) for a in argv)


@dataclass
class CommandResult:
    """What a finished command left behind."""

    command: str
    exit_code: int
    stdout: str
    stderr: str
    duration_s: float

    def check(self, what: str = "command") -> CommandResult:
        """Raise JobError unless the command succeeded."""
        if self.exit_code != 0:
            tail = (self.stderr or self.stdout).strip().splitlines()[-3:]
            raise JobError(f"{what} exited {self.exit_code}: {' | '.join(tail) or self.command}")
        return self


@dataclass
class DeviceInfo:
    """Identity of a device as read from the device itself."""

    serial: str
    model: str
    abi: str
    kernel: str
    ram_bytes: int | None = None
    cpu: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def fingerprint(self) -> dict[str, Any]:
        return {"serial": self.serial, "model": self.model, "abi": self.abi, "kernel": self.kernel,
                "ram_bytes": self.ram_bytes, "cpu": self.cpu, **self.extra}


class Transport(ABC):
    """A connection to one device. Implementations: adb, ssh, local."""

    kind: str = ""

    @abstractmethod
    def shell(self, script: str, *, timeout: float | None = None,
              on_line: LineCallback | None = None) -> CommandResult:
        """Run a shell script on the device as given. Callers quote with :func:`quote_argv`."""

    def run(self, argv: Sequence[str], *, timeout: float | None = None,
            on_line: LineCallback | None = None, pidfile: str | None = None) -> CommandResult:
        """Run one command; every argument is quoted for the device shell.

        With `pidfile`, the command runs in a session of its own (``setsid -w``, in toybox and
        util-linux alike) whose id is written to that device file first: killing that process group
        takes the command and everything it forked (see :mod:`farm.agent.scope`); a timeout does so.
        """
        if pidfile is None:
            return self.shell(quote_argv(argv), timeout=timeout, on_line=on_line)
        try:
            return self.shell(session_script(argv, pidfile), timeout=timeout, on_line=on_line)
        except JobError:  # timed out: the device shell was killed, the session must be too
            with contextlib.suppress(InfraError, JobError):
                self.shell(kill_group_script(pidfile), timeout=10)
            raise

    @abstractmethod
    def push(self, local: Path, remote: str) -> int:
        """Copy a local file to the device (mode preserved for executables); returns bytes sent."""

    @abstractmethod
    def pull(self, remote: str, local: Path) -> None:
        """Copy a device file to the local machine."""

    @abstractmethod
    def info(self) -> DeviceInfo:
        """Read the device's identity."""

    def reconnect(self) -> None:  # noqa: B027 - optional hook
        """Re-establish the connection after a reboot or a dropped link."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the connection."""

    # Helpers built on shell(); implementations may override with faster native calls.

    def read_text(self, remote: str, *, timeout: float = 10) -> str:
        result = self.run(["cat", remote], timeout=timeout)
        if result.exit_code != 0:
            raise InfraError(f"cannot read {remote} on {self.kind} device: {result.stderr.strip()}")
        return result.stdout

    def exists(self, remote: str) -> bool:
        return self.run(["test", "-e", remote], timeout=10).exit_code == 0

    def sha256(self, remote: str) -> str | None:
        """sha256 of a device file, or None when it does not exist."""
        result = self.shell(f"sha256sum {shlex.quote(remote)} 2>/dev/null", timeout=120)
        if result.exit_code != 0 or not result.stdout.strip():
            return None
        return result.stdout.split()[0]

    def stat_signatures(self, remotes: Sequence[str]) -> list[str | None]:
        """A cheap identity per device file (size, inode, mtime, ctime; None when missing or unreadable).

        Equal signatures mean the file was neither rewritten nor replaced since the first was taken: an
        in-place write moves mtime and ctime, a rename gives another inode, and ctime cannot be set back
        by a user. One shell call for all files. The text is opaque except its first field, the size."""
        if not remotes:
            return []
        script = (f"for p in {quote_argv(remotes)}; do "
                  "stat -c '%s %i %y %z' \"$p\" 2>/dev/null || echo -; done")
        result = self.shell(script, timeout=30)
        lines = [line.strip() for line in result.stdout.splitlines()]
        if result.exit_code != 0 or len(lines) != len(remotes):
            return [None] * len(remotes)
        return [None if line in ("", "-") else line for line in lines]

    def mkdir(self, remote: str) -> None:
        self.run(["mkdir", "-p", remote], timeout=10).check(f"mkdir {remote}")

    def wait_until(self, predicate: Callable[[], bool], timeout: float, interval: float = 0.5) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(interval)
        return predicate()
