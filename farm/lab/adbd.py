"""A device-side ADB daemon over TCP: the "phone" end of a virtual phone.

Speaks the ADB transport protocol (system/core/adb/protocol.txt) to a real adb server that ran
``adb connect 127.0.0.1:PORT``: 24-byte little-endian headers (command, arg0, arg1, length,
checksum, magic), CNXN answered at once without AUTH, OPEN/OKAY/WRTE/CLSE streams. Flow
control is the pre-"delayed_ack" one adb 29 uses: after a WRTE we send nothing more on that
stream until the host's OKAY.

Services: ``shell:`` (v1, stdout+stderr merged, no exit status, as on a phone without
shell_v2), ``shell,v2,...:`` (shell protocol packets: 0 stdin, 1 stdout, 2 stderr, 3 exit,
4 close-stdin) and ``sync:`` (STAT/LSTA/LIST/SEND/RECV/QUIT plus STA2/LST2/LIS2 of stat_v2 and
ls_v2). Commands run with /bin/sh in a new session so a closed stream can kill the whole job,
as adbd does when the host goes away. The process is expected to run inside the phone's
namespaces (see :mod:`farm.lab.nsexec`), so absolute paths are the phone's.

Run: ``python -m farm.lab.adbd --port 55551 --props FILE --path BIN_DIR [--features LIST]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import struct
from pathlib import Path

A_SYNC, A_CNXN, A_OPEN, A_OKAY = 0x434E5953, 0x4E584E43, 0x4E45504F, 0x59414B4F
A_CLSE, A_WRTE, A_AUTH = 0x45534C43, 0x45545257, 0x48545541
VERSION = 0x01000001  # no checksums
MAXDATA = 256 * 1024
SYNC_MAX = 64 * 1024
FEATURES = "shell_v2,cmd,stat_v2,ls_v2,fixed_push_mkdir"
HEADER = struct.Struct("<6I")


class Stream:
    """One OPENed service: our id, the host's id, and the write window."""

    def __init__(self, conn: Connection, local_id: int, remote_id: int) -> None:
        self.conn, self.local_id, self.remote_id = conn, local_id, remote_id
        self.can_write = asyncio.Event()
        self.can_write.set()  # the first WRTE may follow our OKAY; later ones wait for the host's
        self.inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.closed = False
        self.task: asyncio.Task | None = None
        self.proc: asyncio.subprocess.Process | None = None

    async def write(self, data: bytes) -> None:
        limit = self.conn.maxdata
        for i in range(0, len(data), limit):
            await self.can_write.wait()
            if self.closed:
                raise ConnectionResetError("stream closed by host")
            self.can_write.clear()
            await self.conn.send(A_WRTE, self.local_id, self.remote_id, data[i:i + limit])

    async def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.can_write.set()
            await self.conn.send(A_CLSE, self.local_id, self.remote_id)
        self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)


class Connection:
    """One TCP connection from the adb server = one adb transport."""

    def __init__(self, daemon: Adbd, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.daemon, self.reader, self.writer = daemon, reader, writer
        self.maxdata = MAXDATA
        self.streams: dict[int, Stream] = {}
        self.next_id = 1
        self.lock = asyncio.Lock()

    async def send(self, cmd: int, arg0: int, arg1: int, data: bytes = b"") -> None:
        async with self.lock:
            self.writer.write(HEADER.pack(cmd, arg0, arg1, len(data), 0, cmd ^ 0xFFFFFFFF) + data)
            await self.writer.drain()

    async def run(self) -> None:
        try:
            while True:
                cmd, arg0, arg1, length, _check, _magic = HEADER.unpack(await self.reader.readexactly(24))
                data = await self.reader.readexactly(length) if length else b""
                await self.dispatch(cmd, arg0, arg1, data)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            for s in list(self.streams.values()):
                s.closed = True
                s.can_write.set()
                s.inbox.put_nowait(None)
                s.kill()
            self.writer.close()

    async def dispatch(self, cmd: int, arg0: int, arg1: int, data: bytes) -> None:
        if cmd == A_CNXN:
            self.maxdata = min(arg1 or MAXDATA, MAXDATA)
            await self.send(A_CNXN, VERSION, MAXDATA, self.daemon.banner.encode())
        elif cmd == A_OPEN:
            local_id, self.next_id = self.next_id, self.next_id + 1
            stream = Stream(self, local_id, arg0)
            service = data.rstrip(b"\0").decode(errors="replace")
            handler = self.daemon.handler(service)
            if handler is None:
                await self.send(A_CLSE, 0, arg0)
                return
            self.streams[local_id] = stream
            await self.send(A_OKAY, local_id, arg0)
            stream.task = asyncio.create_task(self._serve(stream, handler))
        elif cmd == A_OKAY:
            stream = self.streams.get(arg1)
            if stream is not None:
                stream.can_write.set()
        elif cmd == A_WRTE:
            stream = self.streams.get(arg1)
            if stream is not None:
                stream.inbox.put_nowait(data)
                await self.send(A_OKAY, stream.local_id, stream.remote_id)
        elif cmd == A_CLSE:
            stream = self.streams.pop(arg1, None)
            if stream is not None:
                stream.closed = True
                stream.can_write.set()
                stream.inbox.put_nowait(None)
                stream.kill()
        # A_AUTH and A_SYNC are never needed: we do not ask for AUTH.

    async def _serve(self, stream: Stream, handler) -> None:
        try:
            await handler(stream)
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            await _quiet(stream.close())
            self.streams.pop(stream.local_id, None)


async def _quiet(coro) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        await coro


class Adbd:
    """The daemon: a banner, an environment for shells, a TCP listener."""

    def __init__(self, props: dict[str, str], env: dict[str, str], features: str = FEATURES) -> None:
        self.props = props
        self.env = env
        self.banner = (f"device::ro.product.name={props.get('ro.product.name', '')};"
                       f"ro.product.model={props.get('ro.product.model', '')};"
                       f"ro.product.device={props.get('ro.product.device', '')};features={features}")

    def handler(self, service: str):
        if service.startswith("shell"):
            head, _, command = service.partition(":")
            args = head.split(",")[1:]
            return (lambda s: self.shell_v2(s, command)) if "v2" in args else (lambda s: self.shell_v1(s, command))
        if service == "sync:":
            from farm.lab.adbsync import serve_sync
            return serve_sync
        return None

    async def _spawn(self, command: str, merge: bool) -> asyncio.subprocess.Process:
        argv = ["/bin/sh", "-c", command] if command else ["/bin/sh", "-i"]
        return await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT if merge else asyncio.subprocess.PIPE,
            cwd="/", env=self.env, start_new_session=True)

    async def shell_v1(self, stream: Stream, command: str) -> None:
        proc = stream.proc = await self._spawn(command, merge=True)
        feeder = asyncio.create_task(_feed_raw(stream, proc))
        while chunk := await proc.stdout.read(SYNC_MAX):
            await stream.write(chunk)
        await proc.wait()
        feeder.cancel()

    async def shell_v2(self, stream: Stream, command: str) -> None:
        proc = stream.proc = await self._spawn(command, merge=False)
        feeder = asyncio.create_task(_feed_v2(stream, proc))

        async def pump(reader: asyncio.StreamReader, ident: int) -> None:
            while chunk := await reader.read(SYNC_MAX):
                await stream.write(bytes([ident]) + struct.pack("<I", len(chunk)) + chunk)

        await asyncio.gather(pump(proc.stdout, 1), pump(proc.stderr, 2))
        code = await proc.wait()
        feeder.cancel()
        # Shell protocol exit packet: one byte, the status (128+signal for a killed process).
        await stream.write(bytes([3]) + struct.pack("<I", 1) + bytes([code & 0xFF if code >= 0 else 128 - code]))


async def _feed_raw(stream: Stream, proc: asyncio.subprocess.Process) -> None:
    while (data := await stream.inbox.get()) is not None:
        proc.stdin.write(data)
        with contextlib.suppress(ConnectionError):
            await proc.stdin.drain()
    proc.stdin.close()


async def _feed_v2(stream: Stream, proc: asyncio.subprocess.Process) -> None:
    buf = b""
    while (data := await stream.inbox.get()) is not None:
        buf += data
        while len(buf) >= 5:
            ident, length = buf[0], struct.unpack("<I", buf[1:5])[0]
            if len(buf) < 5 + length:
                break
            payload, buf = buf[5:5 + length], buf[5 + length:]
            if ident == 0:
                proc.stdin.write(payload)
                with contextlib.suppress(ConnectionError):
                    await proc.stdin.drain()
            elif ident == 4:
                proc.stdin.close()
    proc.stdin.close()


def read_props(path: Path) -> dict[str, str]:
    props = {}
    for line in path.read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            props[key.strip()] = value.strip()
    return props


async def serve(port: int, props: dict[str, str], env: dict[str, str], host: str = "127.0.0.1",
                features: str = FEATURES) -> None:
    daemon = Adbd(props, env, features)

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await Connection(daemon, reader, writer).run()

    server = await asyncio.start_server(on_client, host, port, reuse_address=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m farm.lab.adbd")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--props", type=Path, required=True, help="key=value lines (getprop)")
    parser.add_argument("--path", default="", help="directories prepended to the shells' PATH")
    parser.add_argument("--features", default=FEATURES,
                        help="features the banner advertises (leave out shell_v2 to act as an Android < 7 phone)")
    ns = parser.parse_args(argv)
    props = read_props(ns.props)
    env = {"PATH": os.pathsep.join(p for p in [ns.path, "/usr/sbin:/usr/bin:/sbin:/bin"] if p),
           "HOME": "/data/local/tmp", "TMPDIR": "/data/local/tmp", "ANDROID_DATA": "/data",
           "LANG": "C.UTF-8", "FARM_LAB_AARCH64": os.environ.get("FARM_LAB_AARCH64", "")}
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    asyncio.run(serve(ns.port, props, env, features=ns.features))


if __name__ == "__main__":
    main()

