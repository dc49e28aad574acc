"""The ``sync:`` service of the virtual phone's adbd (file transfer, as in adb's file_sync_protocol).

Requests are ``ID(4) LEN(u32) PAYLOAD``. Implemented: STAT (v1, lstat), STA2/LST2 (stat_v2),
LIST/LIS2 (ls_v1/ls_v2), SEND (``path,mode``, DATA chunks, DONE with mtime; parents created as
with the ``fixed_push_mkdir`` feature), RECV (DATA chunks of at most 64 KiB, then DONE) and QUIT.
Failures answer ``FAIL`` with a message, as adbd does, so the host prints a real error.
"""

from __future__ import annotations

import contextlib
import os
import stat
import struct
from pathlib import Path

from farm.lab.adbd import SYNC_MAX, Stream

STAT_V2 = struct.Struct("<IQQIIIIQqqq")  # error dev ino mode nlink uid gid size atime mtime ctime
DONE_DENT_V2 = b"DONE" + bytes(STAT_V2.size + 4)


class _Reader:
    def __init__(self, stream: Stream) -> None:
        self.stream = stream
        self.buf = bytearray()

    async def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            data = await self.stream.inbox.get()
            if data is None:
                raise ConnectionResetError("sync stream closed")
            self.buf += data
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out

    async def request(self) -> tuple[bytes, bytes]:
        ident, length = struct.unpack("<4sI", await self.read(8))
        return ident, await self.read(length)


def _stat_v2(path: str, follow: bool) -> bytes:
    try:
        st = os.stat(path) if follow else os.lstat(path)
    except OSError as exc:
        return STAT_V2.pack(exc.errno or 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    return STAT_V2.pack(0, st.st_dev, st.st_ino, st.st_mode, st.st_nlink, st.st_uid, st.st_gid,
                        st.st_size, int(st.st_atime), int(st.st_mtime), int(st.st_ctime))


def _fail(message: str) -> bytes:
    data = message.encode()
    return b"FAIL" + struct.pack("<I", len(data)) + data


async def serve_sync(stream: Stream) -> None:
    reader = _Reader(stream)
    while True:
        ident, payload = await reader.request()
        path = payload.decode(errors="replace") if isinstance(payload, bytes) else ""
        if ident == b"STAT":
            try:
                st = os.lstat(path)
                reply = struct.pack("<III", st.st_mode, st.st_size & 0xFFFFFFFF, int(st.st_mtime))
            except OSError:
                reply = bytes(12)
            await stream.write(b"STAT" + reply)
        elif ident in (b"STA2", b"LST2"):
            await stream.write(ident + _stat_v2(path, follow=ident == b"STA2"))
        elif ident in (b"LIST", b"LIS2"):
            await stream.write(_list(path, v2=ident == b"LIS2"))
        elif ident == b"SEND":
            await stream.write(await _receive_file(reader, path))
        elif ident == b"RECV":
            await _send_file(stream, path)
        elif ident == b"QUIT":
            return
        else:
            await stream.write(_fail(f"unknown sync command {ident!r}"))
            return


def _list(path: str, v2: bool) -> bytes:
    out = bytearray()
    with contextlib.suppress(OSError):
        for entry in os.scandir(path):
            name = entry.name.encode(errors="surrogateescape")
            if v2:
                out += b"DNT2" + _stat_v2(entry.path, follow=False) + struct.pack("<I", len(name)) + name
            else:
                st = entry.stat(follow_symlinks=False)
                out += b"DENT" + struct.pack("<IIII", st.st_mode, st.st_size & 0xFFFFFFFF,
                                             int(st.st_mtime), len(name)) + name
    return bytes(out) + (DONE_DENT_V2 if v2 else b"DONE" + bytes(16))


async def _receive_file(reader: _Reader, spec: str) -> bytes:
    path, _, mode_text = spec.rpartition(",")
    if not path:
        path, mode_text = spec, "33188"
    mode = int(mode_text or "33188")
    error = None
    handle = None
    try:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "wb")  # noqa: SIM115 - closed below, after DONE
    except OSError as exc:
        error = f"couldn't create file: {exc.strerror}"
    while True:
        ident, length = struct.unpack("<4sI", await reader.read(8))
        if ident == b"DATA":
            chunk = await reader.read(length)
            if handle is not None:
                handle.write(chunk)
        elif ident == b"DONE":
            break
        else:
            return _fail(f"invalid data message {ident!r}")
    if handle is not None:
        handle.close()
        with contextlib.suppress(OSError):
            os.chmod(path, stat.S_IMODE(mode))
            os.utime(path, (length, length))
    return _fail(error) if error else b"OKAY" + bytes(4)


async def _send_file(stream: Stream, path: str) -> None:
    try:
        handle = open(path, "rb")  # noqa: SIM115
    except OSError as exc:
        await stream.write(_fail(f"open failed: {exc.strerror}"))
        return
    with handle:
        while chunk := handle.read(SYNC_MAX):
            await stream.write(b"DATA" + struct.pack("<I", len(chunk)) + chunk)
    await stream.write(b"DONE" + bytes(4))
