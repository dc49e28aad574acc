"""The `ssh` transport: an edge board reached over SSH with paramiko.

Host keys are verified against a known_hosts file (``~/.ssh/known_hosts`` unless given) with a
reject policy: an unknown or changed key is an InfraError that names the host and says what to
do. ``insecure_accept_any_host_key`` opts out, loudly, for throw-away lab boards.

Commands run in an ``exec`` channel with stdout and stderr read as they arrive (``on_line``).
A timed-out command is killed on the board by the pid its shell reported (see
:mod:`farm.transports.streams`): sshd does not stop a non-PTY command when the channel closes.
Files go over SFTP to a temporary name, are chmod'ed to the local mode, then renamed with
``posix-rename`` so a reader never sees half a binary. A ``jump`` host (ProxyJump) is reached
first and the board through its ``direct-tcpip`` channel. Keep-alives find dead links early.
A command that died of a signal on a board that then stops answering is an InfraError (the board
went down with it), as on adb (:func:`farm.transports.streams.device_survived`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
from pydantic import Field
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from farm.errors import InfraError, JobError
from farm.registry import PluginOptions
from farm.transports.base import CommandResult, DeviceInfo, LineCallback, Transport
from farm.transports.streams import Lines, StdoutFilter, device_survived, kill_script, killed_by_signal, with_pid

log = logging.getLogger(__name__)
CHUNK = 64 * 1024


def _host_id(host: str, port: int) -> str:
    """The name known_hosts uses for host:port."""
    return host if port == 22 else f"[{host}]:{port}"


def load_known_hosts(client: paramiko.SSHClient, path: str) -> dict[tuple[str, str], int]:
    """Load `path` into `client`; returns the ``@revoked`` keys ((type, base64) → line number).

    paramiko cannot parse OpenSSH's markers (it raises InvalidHostKey on the whole file). A revoked key
    must never be accepted, whichever host offers it, so those lines are kept aside and checked by
    :func:`refuse_revoked`. ``@cert-authority`` is refused: farm does not check host certificates.
    """
    import tempfile

    revoked: dict[tuple[str, str], int] = {}
    kept: list[str] = []
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError as exc:
        raise InfraError(f"cannot read known_hosts {path}: {exc.strerror or exc}") from exc
    for n, line in enumerate(lines, 1):
        fields = line.split()
        if fields and fields[0] == "@revoked" and len(fields) >= 4:
            revoked[(fields[2], fields[3])] = n
        elif fields and fields[0].startswith("@"):
            raise InfraError(f"{path}:{n}: marker {fields[0]} is not supported (farm checks plain host keys "
                             f"and @revoked); remove the line or use a separate known_hosts for farm")
        else:
            kept.append(line)
    with tempfile.NamedTemporaryFile("w", suffix=".known_hosts") as tmp:
        tmp.write("\n".join(kept) + "\n")
        tmp.flush()
        try:
            client.get_host_keys().load(tmp.name)
        except (OSError, paramiko.SSHException, paramiko.hostkeys.InvalidHostKey) as exc:
            raise InfraError(f"cannot read known_hosts {path}: {exc}") from exc
    return revoked


def refuse_revoked(key: paramiko.PKey, hostname: str, known_hosts: str, revoked: dict[tuple[str, str], int]) -> None:
    line = revoked.get((key.get_name(), key.get_base64()))
    if line is not None:
        raise InfraError(f"ssh host key of {hostname} ({key.get_name()} {key.fingerprint}) is REVOKED in "
                         f"{known_hosts}:{line}; refusing to connect")


class _Reject(paramiko.MissingHostKeyPolicy):
    def __init__(self, known_hosts: str, revoked: dict[tuple[str, str], int] | None = None) -> None:
        self.known_hosts = known_hosts
        self.revoked = revoked or {}

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        refuse_revoked(key, hostname, self.known_hosts, self.revoked)
        fp = key.fingerprint if hasattr(key, "fingerprint") else key.get_base64()[:24]
        raise InfraError(
            f"unknown ssh host key for {hostname} ({key.get_name()} {fp}), not in {self.known_hosts}. "
            f"Verify the fingerprint on the board (`ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub`), then add it: "
            f"`ssh-keyscan -p PORT HOST >> {self.known_hosts}`")


class _AcceptLoudly(paramiko.MissingHostKeyPolicy):
    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        log.warning("INSECURE: accepting ssh host key %s %s of %s without verification "
                    "(insecure_accept_any_host_key=true); anyone on the path can impersonate this board",
                    key.get_name(), getattr(key, "fingerprint", ""), hostname)


class SshTransport(Transport):
    """One board at `user@host:port`, optionally behind a `jump` host."""

    kind = "ssh"

    class Options(PluginOptions):
        host: str = Field(min_length=1)
        port: int = Field(default=22, ge=1, le=65535)
        user: str | None = None
        key_file: str | None = None
        known_hosts: str | None = None
        insecure_accept_any_host_key: bool = False
        jump: SshTransport.Options | None = None
        keepalive_s: float = Field(default=15, ge=0)
        connect_timeout: float = Field(default=10, gt=0)

    def __init__(self, host: str, port: int = 22, user: str | None = None, key_file: str | None = None,
                 known_hosts: str | None = None, insecure_accept_any_host_key: bool = False,
                 jump: dict[str, Any] | None = None, keepalive_s: float = 15,
                 connect_timeout: float = 10) -> None:
        self.host, self.port = host, int(port)
        self.user = user or os.environ.get("USER") or "root"
        self.key_file = os.path.expanduser(key_file) if key_file else None
        self.known_hosts = os.path.expanduser(known_hosts or "~/.ssh/known_hosts")
        self.insecure = insecure_accept_any_host_key
        self.jump = dict(jump) if jump else None
        self.keepalive_s = keepalive_s
        self.connect_timeout = connect_timeout
        self._client: paramiko.SSHClient | None = None
        self._jump: SshTransport | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._connect()

    @property
    def where(self) -> str:
        return f"{self.user}@{self.host}:{self.port}"

    # -- connection -------------------------------------------------------------------------

    def _connect(self) -> None:
        client = paramiko.SSHClient()
        revoked: dict[tuple[str, str], int] = {}
        if self.insecure:
            client.set_missing_host_key_policy(_AcceptLoudly())
        else:
            if os.path.exists(self.known_hosts):
                revoked = load_known_hosts(client, self.known_hosts)
            client.set_missing_host_key_policy(_Reject(self.known_hosts, revoked))
        sock = None
        if self.jump:
            self._jump = SshTransport(**self.jump)
            try:
                sock = self._jump.client.get_transport().open_channel(
                    "direct-tcpip", (self.host, self.port), ("127.0.0.1", 0), timeout=self.connect_timeout)
            except (paramiko.SSHException, OSError) as exc:
                raise InfraError(f"jump host {self._jump.where} cannot reach {self.host}:{self.port}: "
                                 f"{exc}") from exc
        try:
            client.connect(self.host, port=self.port, username=self.user, key_filename=self.key_file,
                           look_for_keys=self.key_file is None, allow_agent=self.key_file is None,
                           timeout=self.connect_timeout, banner_timeout=self.connect_timeout,
                           auth_timeout=self.connect_timeout, sock=sock)
        except paramiko.BadHostKeyException as exc:
            host_id = _host_id(self.host, self.port)
            raise InfraError(
                f"ssh host key of {host_id} CHANGED: {self.known_hosts} has {exc.expected_key.get_name()} "
                f"{exc.expected_key.fingerprint}, the board offers {exc.key.fingerprint}. If the board was "
                f"re-flashed, check the new key on its console, then `ssh-keygen -R '{host_id}' -f "
                f"{self.known_hosts}` and add the new one; otherwise someone is in the middle") from exc
        except paramiko.AuthenticationException as exc:
            raise InfraError(f"ssh authentication failed for {self.where} with key "
                             f"{self.key_file or '(agent/default keys)'}: {exc}") from exc
        except InfraError:
            client.close()
            raise
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise InfraError(f"cannot connect to {self.where}: {exc}") from exc
        try:  # a key listed both as known and as @revoked: revoked wins
            refuse_revoked(client.get_transport().get_remote_server_key(), _host_id(self.host, self.port),
                           self.known_hosts, revoked)
        except InfraError:
            client.close()
            raise
        client.get_transport().set_keepalive(int(self.keepalive_s))
        self._client = client

    @property
    def client(self) -> paramiko.SSHClient:
        if self._client is None or not self._client.get_transport() or \
                not self._client.get_transport().is_active():
            self.reconnect()
        return self._client  # type: ignore[return-value]

    @contextlib.contextmanager
    def _infra(self, what: str) -> Iterator[None]:
        try:
            yield
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise InfraError(f"ssh {self.where}: {what} failed: {exc or type(exc).__name__}") from exc

    def reconnect(self) -> None:
        """Drop the connection and connect again, retrying until `connect_timeout` has passed."""
        self.close()
        deadline = time.monotonic() + self.connect_timeout
        while True:
            try:
                self._connect()
                return
            except InfraError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)

    def close(self) -> None:
        for thing in (self._sftp, self._client, self._jump):
            if thing is not None:
                with contextlib.suppress(Exception):
                    thing.close()
        self._sftp = self._client = self._jump = None

    # -- commands ---------------------------------------------------------------------------

    def shell(self, script: str, *, timeout: float | None = None,
              on_line: LineCallback | None = None) -> CommandResult:
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        out, err = StdoutFilter(on_line), Lines(None)
        with self._infra("shell"):
            chan = self._exec(script)
            try:
                chan.shutdown_write()
                code = self._pump(chan, out, err, deadline)
            finally:
                chan.close()
        if code is None:
            with contextlib.suppress(InfraError, JobError):
                if out.pid is not None:
                    self.shell(kill_script(out.pid), timeout=10)
            raise JobError(f"command timed out after {timeout:.0f}s on {self.where}: {script[:120]}")
        if code < 0:
            raise InfraError(f"ssh {self.where}: connection lost while running: {script[:120]}")
        if killed_by_signal(code) and not device_survived(lambda: self.run(["true"], timeout=10).check("probe")):
            raise InfraError(f"ssh {self.where} went away: the command died of signal {code - 128} and the "
                             f"board no longer answers: {script[:120]}")
        return CommandResult(script, code, out.text(), err.text(), time.monotonic() - start)

    def _exec(self, script: str) -> paramiko.Channel:
        """A session channel running `script`.

        sshd refuses a session beyond its MaxSessions (10 per connection by default, the SFTP channel
        included), and closes one whose command it could not start: either way the command never
        ran, so the session is asked for again after a short wait (concurrent commands on one board
        - the engine, a power sampler, thermal reads - are normal use, not an error).
        """
        for attempt in Retrying(stop=stop_after_attempt(6), wait=wait_exponential(multiplier=0.05, max=1.0),
                                retry=retry_if_exception_type(paramiko.SSHException), reraise=True):
            with attempt:
                chan = self.client.get_transport().open_session(timeout=self.connect_timeout)
                try:
                    chan.exec_command(with_pid(script))
                except BaseException:
                    chan.close()
                    raise
                return chan
        raise AssertionError("unreachable: Retrying re-raises the last error")

    def _pump(self, chan: paramiko.Channel, out: Lines, err: Lines, deadline: float | None) -> int | None:
        while True:
            while chan.recv_ready():
                out.feed(chan.recv(CHUNK))
            while chan.recv_stderr_ready():
                err.feed(chan.recv_stderr(CHUNK))
            if chan.exit_status_ready() and not chan.recv_ready() and not chan.recv_stderr_ready():
                # sshd may send the exit status before the last output: read both streams to the
                # channel's EOF (recv returns b"" there), stderr too, or a late "err" line is lost.
                while data := chan.recv(CHUNK):
                    out.feed(data)
                while data := chan.recv_stderr(CHUNK):
                    err.feed(data)
                return chan.recv_exit_status()
            if chan.closed or not chan.get_transport().is_active():
                return -1
            wait = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if wait <= 0:
                return None
            select.select([chan], [], [], wait)

    # -- files ------------------------------------------------------------------------------

    @property
    def sftp(self) -> paramiko.SFTPClient:
        if self._sftp is None:
            with self._infra("opening sftp"):
                self._sftp = self.client.open_sftp()
        return self._sftp

    def _makedirs(self, remote_dir: str) -> None:
        missing = []
        path = remote_dir
        while path and path != "/":
            try:
                self.sftp.stat(path)
                break
            except FileNotFoundError:
                missing.append(path)
                path = os.path.dirname(path)
        for p in reversed(missing):
            with contextlib.suppress(OSError):
                self.sftp.mkdir(p)

    def push(self, local: Path, remote: str) -> int:
        local = Path(local)
        part = f"{remote}.farm-part"
        with self._infra(f"push {local} -> {remote}"):
            self._makedirs(os.path.dirname(remote))
            attrs = self.sftp.put(str(local), part, confirm=True)
            self.sftp.chmod(part, stat.S_IMODE(local.stat().st_mode))
            self.sftp.posix_rename(part, remote)
        return int(attrs.st_size or 0)

    def pull(self, remote: str, local: Path) -> None:
        local = Path(local)
        part = local.with_name(local.name + ".part")
        try:
            with self._infra(f"pull {remote}"):
                self.sftp.get(remote, str(part))
        except InfraError as exc:
            part.unlink(missing_ok=True)
            if isinstance(exc.__cause__, FileNotFoundError):
                raise InfraError(f"no such file on {self.where}: {remote}") from exc
            raise
        os.replace(part, local)

    def info(self) -> DeviceInfo:
        dt = "/sys/firmware/devicetree/base"
        # One value per line, each through echo "$(...)" so a missing file still yields its line.
        script = "; ".join(f'echo "$({cmd})"' for cmd in [
            "uname -m", "uname -r", "hostname", "grep MemTotal /proc/meminfo",
            f"tr -d '\\000' < {dt}/model 2>/dev/null",
            f"tr -d '\\000' < {dt}/serial-number 2>/dev/null || cat /etc/machine-id 2>/dev/null",
            "grep -m1 -E '^(model name|Model|Hardware)' /proc/cpuinfo | cut -d: -f2-"])
        lines = [line.strip() for line in self.shell(script, timeout=30).check("info").stdout.splitlines()]
        lines += [""] * (7 - len(lines))
        machine, kernel, hostname, mem, model, serial, cpu = lines[:7]
        ram = int(mem.split()[1]) * 1024 if mem.startswith("MemTotal:") else None
        return DeviceInfo(serial=serial or hostname, model=model or hostname, abi=machine, kernel=kernel,
                          ram_bytes=ram, cpu=cpu, extra={"hostname": hostname, "ssh": self.where})

