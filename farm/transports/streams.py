"""Output plumbing shared by the remote transports (adb, ssh).

Remote commands are prefixed with ``echo __FARM_PID__$$`` so a timed-out command can be killed
on the device (closing the channel does not stop a process that never writes again);
:class:`StdoutFilter` strips that line and remembers the pid. :class:`Lines` keeps every byte
for the result and hands complete lines to ``on_line`` as they arrive.

A device that goes down kills its processes first and its daemon (adbd, sshd) last, so the daemon
may still report the command's death by signal (exit 128+N, e.g. 137) before the link drops.
That is the device's failure, not the benchmark's: after such an exit the transports check that
the device is still there (:func:`device_survived`) and raise InfraError when it is not.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from farm.errors import FarmError
from farm.transports.base import LineCallback

PID_MARK = "__FARM_PID__"
EXIT_MARK = "__FARM_EXIT__"


def with_pid(script: str) -> str:
    """`script` preceded by a line that reports the pid of the shell running it."""
    return f"echo {PID_MARK}$$\n{script}"


# A device shutting down takes its daemon within moments of its processes; wait this long
# before asking whether it is still there.
GONE_GRACE_S = 1.0


def killed_by_signal(exit_code: int) -> bool:
    """A shell's status for a command that died of signal N (128 + N)."""
    return 128 < exit_code <= 128 + 64


def device_survived(probe: Callable[[], object], grace_s: float = GONE_GRACE_S) -> bool:
    """After a command died of a signal: does the device still answer `probe` (a trivial command
    that raises a FarmError when the device is gone or the command fails) after `grace_s`?"""
    time.sleep(grace_s)
    try:
        probe()
    except FarmError:
        return False
    return True


def kill_script(pid: int) -> str:
    """Kill the shell of a timed-out command and its children (children first: no orphans)."""
    return f"pkill -KILL -P {pid}; kill -KILL {pid}"


class Lines:
    """Splits a byte stream into text lines for `on_line`, keeping every byte for the result."""

    def __init__(self, on_line: LineCallback | None) -> None:
        self.on_line, self.parts, self.pending = on_line, [], b""

    def feed(self, data: bytes) -> None:
        self.parts.append(data)
        if self.on_line is None:
            return
        self.pending += data
        *lines, self.pending = self.pending.split(b"\n")
        for line in lines:
            self.on_line(line.decode(errors="replace").rstrip("\r"))

    def text(self) -> str:
        if self.on_line is not None and self.pending:
            self.on_line(self.pending.decode(errors="replace"))
            self.pending = b""
        return b"".join(self.parts).decode(errors="replace")


class StdoutFilter(Lines):
    """stdout minus the leading PID line, which it remembers."""

    def __init__(self, on_line: LineCallback | None) -> None:
        super().__init__(None)
        self.user = on_line
        self.pid: int | None = None
        self.head = b""
        # The v1 fallback's exit marker is not the command's output.
        self.lines = Lines(None if on_line is None else
                            lambda line: None if line.startswith(EXIT_MARK) else on_line(line))

    def feed(self, data: bytes) -> None:
        if self.pid is None:
            self.head += data
            if b"\n" not in self.head:
                return
            first, _, data = self.head.partition(b"\n")
            with contextlib.suppress(ValueError):
                self.pid = int(first.decode().removeprefix(PID_MARK))
            self.head = b""
        self.lines.feed(data)

    def body(self) -> bytes:
        return b"".join(self.lines.parts)

    def truncate(self, at: int) -> None:
        self.lines.parts = [self.body()[:at]]

    def text(self) -> str:
        return self.lines.text()

