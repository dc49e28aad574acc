"""Run a command inside a virtual device's private namespaces (owns the path strategy of the lab).

A virtual phone or board must answer the *real* device paths (``/data/local/tmp``,
``/sys/class/power_supply/battery/current_now``, ``/sys/class/hwmon/hwmon0/in1_input``...) so
farm's code under test is the code that runs on hardware. Each virtual device therefore runs its
daemon (our adbd, or a real sshd) as::

    python -m farm.lab.nsexec --bind SRC:DST ... [--binfmt-aarch64] -- COMMAND...

which forks a child into a new *user* namespace (uid/gid mapped 1:1, so it is still root and
sshd can still switch to its test user) and a new *mount* namespace, bind-mounts the sandbox
directories over the device paths there, and execs COMMAND. Everything the daemon spawns (adb
shells, ssh sessions) inherits the view; the host sees none of it.

The user namespace also buys a private ``binfmt_misc`` instance (Linux >= 6.7): registering
``qemu-aarch64-static`` there makes the aarch64-static engine binary farm pushes run by plain
``exec`` from any shell, script or ``timeout`` wrapper, exactly as on an arm64 phone, without
touching the host's binfmt table. On older kernels the host's own registration is used if
present (``update-binfmts --enable qemu-aarch64``); otherwise aarch64 binaries fail with
``Exec format error`` and the lab says so at start-up.

The parent stays alive as the child's reaper and forwards SIGTERM/SIGINT, so the lab stops a
device by the pid it started.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import signal
import sys
from pathlib import Path

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
PR_SET_CHILD_SUBREAPER = 36

QEMU = "/usr/bin/qemu-aarch64-static"
# ELF64, little-endian, EM_AARCH64 (0xb7), as in Debian's /usr/lib/binfmt.d/qemu-aarch64.conf.
AARCH64_MAGIC = r"\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00"
AARCH64_MASK = r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
BINFMT = "/proc/sys/fs/binfmt_misc"

_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src: str, dst: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    _check(_libc.mount(src.encode(), dst.encode(), fstype.encode() if fstype else None, flags,
                       data.encode() if data else None), f"mount {src} on {dst}")


def host_binfmt_aarch64() -> bool:
    """The host already runs aarch64 ELF files through qemu (binfmt registered and enabled)."""
    entry = Path(BINFMT) / "qemu-aarch64"
    try:
        return entry.read_text().startswith("enabled")
    except OSError:
        return False


def _register_binfmt() -> str:
    """Private binfmt_misc with qemu-aarch64; returns how aarch64 binaries will run."""
    try:
        _mount("binfmt_misc", BINFMT, "binfmt_misc", 0)
    except OSError as exc:
        return "host" if host_binfmt_aarch64() else f"unavailable ({exc.strerror})"
    # F: qemu is opened now, so it works whatever the namespace's mounts later hide.
    rule = f":qemu-aarch64:M::{AARCH64_MAGIC}:{AARCH64_MASK}:{QEMU}:F"
    try:
        Path(BINFMT, "register").write_text(rule)
    except OSError as exc:
        return f"unavailable ({exc.strerror})"
    return "private"


def _child(binds: list[tuple[str, str]], binfmt: bool, ready_w: int, go_r: int, argv: list[str]) -> None:
    _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare")
    os.write(ready_w, b"1")
    os.read(go_r, 1)  # the parent has written our uid/gid maps
    os.setgid(0)
    os.setuid(0)
    _mount("none", "/", None, MS_REC | MS_PRIVATE)
    for src, dst in binds:
        Path(dst).mkdir(parents=True, exist_ok=True)
        _mount(src, dst, None, MS_BIND | MS_REC)
    if binfmt:
        os.environ["FARM_LAB_AARCH64"] = _register_binfmt()
    os.execvp(argv[0], argv)


def main(args: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m farm.lab.nsexec")
    parser.add_argument("--bind", action="append", default=[], help="SRC:DST, bind-mount SRC over DST")
    parser.add_argument("--binfmt-aarch64", action="store_true")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    ns = parser.parse_args(args)
    argv = ns.command[1:] if ns.command[:1] == ["--"] else ns.command
    if not argv:
        parser.error("no command")
    binds = [tuple(b.split(":", 1)) for b in ns.bind]
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    # Subreaper: sessions orphaned when the device is killed come to us to be reaped, not to a
    # pid 1 that may never reap them (containers).
    _libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    pid = os.fork()
    if pid == 0:
        try:
            _child(binds, ns.binfmt_aarch64, ready_w, go_r, argv)  # type: ignore[arg-type]
        except BaseException as exc:  # report and leave without running the parent's cleanup
            print(f"nsexec: {exc}", file=sys.stderr, flush=True)
            os._exit(127)
    os.read(ready_r, 1)
    # Identity maps: root stays root and every user (sshd's privsep and test users) exists.
    Path(f"/proc/{pid}/uid_map").write_text("0 0 4294967295\n")
    Path(f"/proc/{pid}/gid_map").write_text("0 0 4294967295\n")
    os.write(go_w, b"1")
    def forward(sig: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)
    status = 0
    while True:
        try:
            done, st = os.waitpid(-1, 0)
        except ChildProcessError:
            break
        if done == pid:
            status = st
            break
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass
    sys.exit(os.waitstatus_to_exitcode(status) & 0xFF if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))


if __name__ == "__main__":
    main()
