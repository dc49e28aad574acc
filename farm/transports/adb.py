"""The `adb` transport: a phone reached through an adb server, spoken to with adbutils.

Commands use the shell protocol v2 (``shell,v2:``) read packet by packet, so stdout lines reach
``on_line`` while the benchmark runs and the real exit status comes back in the exit packet.
Devices without the ``shell_v2`` feature (Android < 7) fall back to ``shell:`` with an
``echo __FARM_EXIT__$?`` marker; there stderr is merged into stdout, as adb itself does.

Every command is prefixed with ``echo __FARM_PID__$$`` (stripped from the output) so a timed-out
command can be killed on the phone (``pkill -P``, then ``kill``): closing the adb stream alone
leaves a pinned engine burning the battery and heating the next run.

Files move over ``sync:`` with 64 KiB DATA chunks (the protocol maximum) to a temporary name,
then ``mv -f`` makes the push atomic; executables are sent with mode 0755.

Errors: anything from the adb server or the socket (device offline, not found, connection
reset, EOF before the exit packet) is an InfraError; a non-zero exit or a timeout is the job's,
except a death by signal (137...) after which the phone no longer answers: the phone went down
and took the command with it (see :func:`farm.transports.streams.device_survived`).
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import adbutils
from adbutils.errors import AdbError
from pydantic import Field

from farm.errors import InfraError, JobError
from farm.registry import PluginOptions
from farm.transports.base import CommandResult, DeviceInfo, LineCallback, Transport
from farm.transports.streams import (
    EXIT_MARK,
    Lines,
    StdoutFilter,
    device_survived,
    kill_script,
    killed_by_signal,
    with_pid,
)

SYNC_CHUNK = 64 * 1024


class _Client(adbutils.AdbClient):
    """An AdbClient that never starts a server on a non-default port behind the user's back."""

    def make_connection(self, timeout: float | None = None):  # type: ignore[override]
        if self.port != 5037:
            try:
                socket.create_connection((self.host, self.port), timeout=3).close()
            except OSError as exc:
                raise InfraError(f"no adb server at {self.host}:{self.port} ({exc.strerror or exc}); "
                                 f"start it with `adb -P {self.port} start-server`") from exc
        return super().make_connection(timeout=timeout)


def _is_network(serial: str) -> bool:
    host, sep, port = serial.rpartition(":")
    return bool(sep and host and port.isdigit())


class AdbTransport(Transport):
    """One phone: `serial` on the adb server at `adb_host:adb_port`."""

    kind = "adb"

    class Options(PluginOptions):
        serial: str = Field(min_length=1)
        adb_host: str = "127.0.0.1"
        adb_port: int = Field(default=5037, ge=1, le=65535)
        connect: bool | None = None
        connect_timeout: float = Field(default=15.0, gt=0)

    def __init__(self, serial: str, adb_host: str = "127.0.0.1", adb_port: int = 5037,
                 connect: bool | None = None, connect_timeout: float = 15.0) -> None:
        self.serial = serial
        self.connect = _is_network(serial) if connect is None else connect
        self.connect_timeout = connect_timeout
        self.client = _Client(host=adb_host, port=int(adb_port))
        self.device = self.client.device(serial)
        self._features: set[str] | None = None
        if self.connect and self._state() != "device":
            self.reconnect()

    # -- plumbing ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _infra(self, what: str) -> Iterator[None]:
        try:
            yield
        except (AdbError, OSError, EOFError) as exc:
            if isinstance(exc, InfraError):
                raise
            raise InfraError(f"adb device {self.serial} ({self.client.host}:{self.client.port}): "
                             f"{what} failed: {exc or type(exc).__name__}") from exc

    def _state(self) -> str:
        try:
            return self.device.get_state()
        except (AdbError, OSError, EOFError):
            return "absent"

    def features(self) -> set[str]:
        if self._features is None:
            with self._infra("reading features"):
                self._features = set(self.device.get_features().split(","))
        return self._features

    # -- commands ---------------------------------------------------------------------------

    def shell(self, script: str, *, timeout: float | None = None,
              on_line: LineCallback | None = None) -> CommandResult:
        start = time.monotonic()
        v2 = "shell_v2" in self.features()
        # v1 has no exit packet: the shell prints the status on its way out, also after `exit N` or a
        # syntax error (a marker appended after the script would never be reached then)
        command = with_pid(script if v2 else f"trap 'echo {EXIT_MARK}$?' EXIT\n{script}")
        err = Lines(None)
        lines = StdoutFilter(on_line)
        deadline = None if timeout is None else start + timeout
        with self._infra("shell"):
            conn = self.device.open_transport(timeout=10)
            try:
                conn.send_command(("shell,v2,raw:" if v2 else "shell:") + command)
                conn.check_okay()
                code = self._read_v2(conn, lines, err, deadline) if v2 else \
                    self._read_v1(conn, lines, deadline)
            finally:
                conn.close()
        if code is None:
            self._kill(lines.pid)
            raise JobError(f"command timed out after {timeout:.0f}s on {self.serial}: {script[:120]}")
        if killed_by_signal(code) and not device_survived(lambda: self.run(["true"], timeout=10).check("probe")):
            raise InfraError(f"adb device {self.serial} went away: the command died of signal {code - 128} "
                             f"and the phone no longer answers: {script[:120]}")
        return CommandResult(script, code, lines.text(), err.text(), time.monotonic() - start)

    def _recv(self, conn, deadline: float | None) -> bytes | None:
        """Next bytes from the device; None at the deadline; EOFError when the stream died."""
        sock = conn.conn
        while True:
            wait = 1.0 if deadline is None else deadline - time.monotonic()
            if wait <= 0:
                return None
            sock.settimeout(min(wait, 1.0))
            try:
                data = sock.recv(SYNC_CHUNK)
            except TimeoutError:
                continue
            if not data:
                raise EOFError("device stream closed before the command finished (device gone?)")
            return data

    def _read_v2(self, conn, out: StdoutFilter, err: Lines, deadline: float | None) -> int | None:
        buf = b""
        while True:
            while len(buf) >= 5:
                ident, length = buf[0], struct.unpack("<I", buf[1:5])[0]
                if len(buf) < 5 + length:
                    break
                payload, buf = buf[5:5 + length], buf[5 + length:]
                if ident == 1:
                    out.feed(payload)
                elif ident == 2:
                    err.feed(payload)
                elif ident == 3:
                    return payload[0] if payload else 255
            data = self._recv(conn, deadline)
            if data is None:
                return None
            buf += data

    def _read_v1(self, conn, out: StdoutFilter, deadline: float | None) -> int | None:
        while True:
            try:
                data = self._recv(conn, deadline)
            except EOFError:
                body = out.body()
                at = body.rfind(EXIT_MARK.encode())
                if at < 0:
                    raise
                out.truncate(at)
                return int(body[at + len(EXIT_MARK):].split()[0])
            if data is None:
                return None
            out.feed(data)

    def _kill(self, pid: int | None) -> None:
        if pid is None:
            return
        with contextlib.suppress(InfraError, AdbError, OSError, EOFError):
            self.device.shell2(kill_script(pid), timeout=10)

    # -- files ------------------------------------------------------------------------------

    def push(self, local: Path, remote: str) -> int:
        local = Path(local)
        mode = 0o755 if local.stat().st_mode & 0o111 else 0o644
        part = f"{remote}.farm-part"
        if "fixed_push_mkdir" not in self.features():
            self.run(["mkdir", "-p", os.path.dirname(remote) or "/"], timeout=30).check("mkdir")
        size = 0
        with self._infra(f"push {local} -> {remote}"):
            conn = self.device.open_transport(timeout=60)
            try:
                conn.send_command("sync:")
                conn.check_okay()
                spec = f"{part},{stat.S_IFREG | mode}".encode()
                conn.conn.sendall(b"SEND" + struct.pack("<I", len(spec)) + spec)
                with local.open("rb") as fh:
                    while chunk := fh.read(SYNC_CHUNK):
                        conn.conn.sendall(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
                        size += len(chunk)
                conn.conn.sendall(b"DONE" + struct.pack("<I", int(time.time())))
                status = conn.read_exact(8)
                if status[:4] != b"OKAY":
                    message = conn.read(struct.unpack("<I", status[4:])[0]).decode(errors="replace")
                    raise InfraError(f"adb push to {self.serial}:{remote} refused: {message}")
            finally:
                conn.close()
        self.run(["mv", "-f", part, remote], timeout=30).check(f"rename {part}")
        return size

    def pull(self, remote: str, local: Path) -> None:
        local = Path(local)
        part = local.with_name(local.name + ".part")
        with self._infra(f"pull {remote}"):
            try:
                with part.open("wb") as fh:
                    for chunk in self.device.sync.iter_content(remote):
                        fh.write(chunk)
            except AdbError as exc:
                part.unlink(missing_ok=True)
                raise InfraError(f"cannot pull {remote} from {self.serial}: {exc.args[0]}") from exc
        os.replace(part, local)

    # -- identity and link ------------------------------------------------------------------

    def info(self) -> DeviceInfo:
        keys = ["ro.product.model", "ro.serialno", "ro.product.cpu.abi", "ro.soc.model",
                "ro.build.fingerprint", "ro.build.version.sdk"]
        script = "; ".join(f"echo \"$(getprop {k})\"" for k in keys)
        result = self.shell(f"{script}; uname -r; grep MemTotal /proc/meminfo", timeout=30)
        lines = result.check("getprop").stdout.splitlines()
        if len(lines) < len(keys) + 1:
            raise InfraError(f"unexpected getprop output from {self.serial}: {result.stdout!r}")
        props = dict(zip(keys, lines, strict=False))
        ram = None
        meminfo = lines[len(keys) + 1] if len(lines) > len(keys) + 1 else ""
        if meminfo.startswith("MemTotal:"):
            ram = int(meminfo.split()[1]) * 1024
        return DeviceInfo(serial=props["ro.serialno"] or self.serial, model=props["ro.product.model"],
                          abi=props["ro.product.cpu.abi"], kernel=lines[len(keys)], ram_bytes=ram,
                          cpu=props["ro.soc.model"],
                          extra={"adb_serial": self.serial, "build": props["ro.build.fingerprint"],
                                 "sdk": props["ro.build.version.sdk"]})

    def reconnect(self) -> None:
        """`adb disconnect` + `adb connect` for network serials, then wait for state `device`."""
        self._features = None
        deadline = time.monotonic() + self.connect_timeout
        last = ""
        while time.monotonic() < deadline:
            if self.connect:
                with contextlib.suppress(AdbError, OSError):
                    self.client.disconnect(self.serial)
                    last = self.client.connect(self.serial, timeout=5)
            if self._state() == "device":
                return
            time.sleep(0.2)
        raise InfraError(f"adb device {self.serial} did not come back within {self.connect_timeout:.0f}s"
                         f"{f' (adb: {last})' if last else ''}; check cable/network and "
                         f"`adb -P {self.client.port} devices`")

    def close(self) -> None:
        self._features = None
