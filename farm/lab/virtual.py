"""Virtual phones and boards as processes (owns their start, stop and simulated failures).

A :class:`VirtualPhone` is our adbd (farm.lab.adbd) inside the phone's namespaces; a
:class:`VirtualBoard` is the system's real ``/usr/sbin/sshd`` with its own config, host key and
authorized key, inside the board's namespaces, serving a test user. Both are stopped by killing
every process of their mount namespace by pid (found through ``/proc/PID/ns/mnt``), so the
commands they spawned die with them and nothing else on the machine is touched. A device with a
``feed`` (:class:`farm.lab.powerfeed.DeviceFeed`) has its power sensors fed while it runs, with
the CPU use of that same namespace as the load.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from farm.errors import InfraError
from farm.lab.powerfeed import DeviceFeed, PowerFeeder
from farm.paths import REPO_ROOT

SSHD = "/usr/sbin/sshd"
LAB_USER = "farmlab"


def port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_port(port: int, timeout: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise InfraError(f"{what} exited with {proc.returncode} before listening on {port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise InfraError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f}s")


def python_env(**extra: str) -> dict[str, str]:
    """Environment for lab daemons: farm importable even when it is not installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _mnt_ns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def kill_namespace(ns: str, also: list[int]) -> None:
    """SIGKILL every process whose mount namespace is `ns` (until none is left), then `also`.

    Members first: the launcher (in `also`) then reaps its child instead of leaving a zombie."""
    for _ in range(50):
        victims = [int(p.name) for p in Path("/proc").iterdir()
                   if p.name.isdigit() and int(p.name) != os.getpid() and _mnt_ns(int(p.name)) == ns]
        if not victims:
            break
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.02)
    for pid in also:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)


@dataclass
class VirtualDevice:
    """One virtual device: its sandbox, its port, its process tree."""

    name: str
    base_profile: str
    root: Path
    port: int
    binds: list[str]
    proc: subprocess.Popen | None = None
    ns: str | None = None
    transport: dict[str, Any] = field(default_factory=dict)
    feed: DeviceFeed | None = None  # its power sensors; fed while the device runs
    feeder: PowerFeeder | None = field(default=None, repr=False)

    kind = "device"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 15) -> None:
        log = (self.root / "log" / f"{self.kind}.log").open("ab")
        argv = [sys.executable, "-m", "farm.lab.nsexec", *[a for b in self.binds for a in ("--bind", b)],
                "--binfmt-aarch64", "--", *self.command()]
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                     env=python_env(), start_new_session=True)
        log.close()
        wait_port(self.port, timeout, self.proc, f"virtual {self.kind} {self.name}")
        kids = _children(self.proc.pid)
        self.ns = _mnt_ns(kids[0]) if kids else None
        if self.feed is not None:  # load = everything running in this device's mount namespace
            if self.feeder is not None:
                self.feeder.stop()
            self.feeder = self.feed.start(self.root / "fs", kids[0] if kids else None)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def aarch64_mode(self) -> str:
        """How aarch64 binaries run inside: private | host | unavailable (...), from the launcher."""
        kids = _children(self.proc.pid) if self.proc else []
        try:
            env = Path(f"/proc/{kids[0]}/environ").read_bytes().split(b"\0")
        except (OSError, IndexError):
            return "unknown"
        for item in env:
            if item.startswith(b"FARM_LAB_AARCH64="):
                return item.split(b"=", 1)[1].decode()
        return "unknown"

    def kill(self) -> None:
        """Stop now, with everything it runs: a device that dropped off the bus."""
        if self.feeder is not None:
            self.feeder.stop()
            self.feeder = None
        if self.proc is None:
            return
        if self.ns:
            kill_namespace(self.ns, [self.proc.pid])
        else:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None


@dataclass
class VirtualPhone(VirtualDevice):
    kind = "phone"
    features: str | None = None  # what adbd advertises (None: farm.lab.adbd.FEATURES, with shell_v2)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "farm.lab.adbd", "--port", str(self.port),
                "--props", str(self.root / "etc" / "props"), "--path", "/usr/local/bin",
                *(["--features", self.features] if self.features is not None else [])]


def ensure_lab_user(name: str = LAB_USER) -> str:
    """The board's test user: no home of its own, shell /bin/sh, password ``*`` (no password
    login, but not locked: a ``!`` password makes sshd refuse even keys)."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/var/tmp",
                        "--shell", "/bin/sh", name], check=True, capture_output=True)
    subprocess.run(["usermod", "-p", "*", name], check=True, capture_output=True)
    return name


SSHD_CONFIG = """# sshd of virtual board {name} (farm lab)
Port {port}
ListenAddress 127.0.0.1
HostKey {etc}/ssh_host_ed25519_key
PidFile {etc}/sshd.pid
AuthorizedKeysFile {etc}/authorized_keys
AllowUsers {user}
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin no
StrictModes no
PrintMotd no
Subsystem sftp internal-sftp
LogLevel ERROR
"""


@dataclass
class VirtualBoard(VirtualDevice):
    kind = "board"
    user: str = LAB_USER

    def prepare(self) -> None:
        """Host key, client key, known_hosts line, sshd_config."""
        etc = self.root / "etc"
        for key in ("ssh_host_ed25519_key", "id_ed25519"):
            if not (etc / key).exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"farm-lab-{self.name}",
                                "-f", str(etc / key)], check=True)
        (etc / "authorized_keys").write_text((etc / "id_ed25519.pub").read_text())
        (etc / "authorized_keys").chmod(0o644)
        host_pub = (etc / "ssh_host_ed25519_key.pub").read_text().split()
        (etc / "known_hosts").write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        (etc / "sshd_config").write_text(SSHD_CONFIG.format(name=self.name, port=self.port, etc=etc,
                                                           user=self.user))
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
        self.transport = {"kind": "ssh", "host": "127.0.0.1", "port": self.port, "user": self.user,
                          "key_file": str(etc / "id_ed25519"), "known_hosts": str(etc / "known_hosts")}

    def command(self) -> list[str]:
        return [SSHD, "-D", "-e", "-f", str(self.root / "etc" / "sshd_config")]
