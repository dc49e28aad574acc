"""The on-device sampler: build ``farm-sampler``, stage it on the device, launch, stop, fetch.

``farm-sampler`` (farm/engine/src/sampler/sampler.c) timestamps readings with the device's
CLOCK_MONOTONIC, the clock the reference engine prints phase markers on, so power samples and
phases line up without any clock translation. It is built for the profile's engine target (host or
aarch64-linux-static) by the engine build (``farm.engine.build``, program ``farm-sampler``), which
caches it by source, compiler and flags.
"""

from __future__ import annotations

import hashlib
import importlib
import shlex
import time
from pathlib import Path

from farm.errors import InfraError
from farm.power.trace import SamplerOutput, parse_sampler_output
from farm.transports.base import Transport, quote_argv

PROGRAM = "farm-sampler"
SOURCES = ["sampler/sampler.c"]  # relative to farm/engine/src


def sampler_binary(target: str) -> Path:
    """A farm-sampler executable for `target`, built (and cached) by the engine build."""
    engine_build = importlib.import_module("farm.engine.build")  # the package re-exports a build() function

    # build.py lists the program; setdefault keeps working if that entry is ever dropped
    engine_build.PROGRAMS.setdefault(PROGRAM, SOURCES)
    return Path(engine_build.build(target=target, program=PROGRAM).path)


class DeviceSampler:
    """One farm-sampler process on a device, run as a detached daemon writing to a file."""

    def __init__(self, transport: Transport, target: str, workdir: str) -> None:
        self.transport = transport
        self.target = target
        self.workdir = workdir.rstrip("/") or "/"
        self.remote_bin = f"{self.workdir}/bin/{PROGRAM}"
        self._staged = False
        self._pid: int | None = None
        self._pidfile = ""
        self._out = f"{self.workdir}/power/trace.txt"

    def stage(self) -> str:
        """Push the binary unless the device already has the same one."""
        if self._staged:
            return self.remote_bin
        local = sampler_binary(self.target)
        want = hashlib.sha256(local.read_bytes()).hexdigest()
        if self.transport.sha256(self.remote_bin) != want:
            self.transport.mkdir(f"{self.workdir}/bin")
            self.transport.push(local, self.remote_bin)
            self.transport.run(["chmod", "755", self.remote_bin], timeout=10)
        self.transport.mkdir(f"{self.workdir}/power")
        self._staged = True
        return self.remote_bin

    def now_ns(self) -> int:
        """The device's CLOCK_MONOTONIC (used to translate host-side meters onto the device clock)."""
        result = self.transport.run([self.stage(), "-n"], timeout=10)
        if result.exit_code != 0 or not result.stdout.strip().isdigit():
            raise InfraError(f"{PROGRAM} -n failed on the device: {result.stderr.strip() or result.stdout}")
        return int(result.stdout.strip())

    def launch(self, mode: str, args: list[str], rate_hz: float, max_s: float = 3600.0,
               tag: str = "trace") -> None:
        """Start sampling in the background. mode: 'f' files, 's' stream command, 'x' repeat command."""
        if self._pid is not None:
            raise InfraError(f"{PROGRAM} already running on the device (pid {self._pid})")
        binary = self.stage()
        self._out = f"{self.workdir}/power/{tag}.txt"
        pidfile = self._pidfile = f"{self.workdir}/run/sampler-{tag}.pid"  # farm.agent.scope kills from it
        argv = [binary, "-r", f"{rate_hz:g}", "-o", self._out, "-P", pidfile, "-t", f"{max_s:g}", f"-{mode}"]
        argv += ["--", *args] if mode in "sx" else args
        # every fd redirected: a daemon holding the shell's stdout would keep adb/ssh sessions open
        # a fresh trace file: a sampler left by a killed run may still hold the old one open
        script = (f"mkdir {shlex.quote(self.workdir + '/run')} 2>/dev/null; rm -f {shlex.quote(pidfile)} "
                  f"{shlex.quote(self._out)}; {quote_argv(argv)} </dev/null >/dev/null "
                  f"2>{shlex.quote(self._out + '.err')} && cat {shlex.quote(pidfile)}")
        result = self.transport.shell(script, timeout=20)
        pid = result.stdout.strip()
        if result.exit_code != 0 or not pid.isdigit():
            err = self._read(self._out + ".err") or result.stderr
            raise InfraError(f"cannot start {PROGRAM} on the device: {err.strip()[-300:]}")
        self._pid = int(pid)

    def stop(self, timeout: float = 5.0) -> SamplerOutput:
        """Stop the daemon (SIGTERM lets it flush and write its end line) and parse its file."""
        if self._pid is None:
            raise InfraError(f"{PROGRAM} is not running")
        pid, self._pid = self._pid, None
        self.transport.run(["kill", "-TERM", str(pid)], timeout=10)
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self._read(self._out)
            if "\n# end " in text:
                break
            time.sleep(0.05)
        else:
            self.transport.run(["kill", "-KILL", str(pid)], timeout=10)
        self.transport.run(["rm", "-f", self._pidfile], timeout=10)  # its id must not outlive it (pid reuse)
        out = parse_sampler_output(text)
        if not out.ended:
            err = self._read(self._out + ".err").strip()
            if not out.rows:
                raise InfraError(f"{PROGRAM} produced no readings: {err[-300:] or 'no output'}")
        return out

    def _read(self, remote: str) -> str:
        try:
            return self.transport.read_text(remote, timeout=30)
        except InfraError:
            return ""
