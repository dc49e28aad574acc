"""Host keys of boards are verified: changed or unknown keys are refused; the opt-out warns."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pytest

from farm.errors import InfraError
from farm.transports.ssh import SshTransport


@pytest.fixture
def board(lab):
    return lab.boards["board1"].transport


def test_known_key_connects(board):
    t = SshTransport(**{k: v for k, v in board.items() if k != "kind"})
    assert t.run(["echo", "ok"]).stdout == "ok\n"
    t.close()


def test_changed_host_key_is_refused(board, tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "other")], check=True)
    kind, key = (tmp_path / "other.pub").read_text().split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{board['port']} {kind} {key}\n")
    opts = {k: v for k, v in board.items() if k != "kind"} | {"known_hosts": str(known)}
    with pytest.raises(InfraError) as err:
        SshTransport(**opts)
    msg = str(err.value)
    assert "CHANGED" in msg and f"[127.0.0.1]:{board['port']}" in msg and "ssh-keygen -R" in msg


def test_unknown_host_key_is_refused(board, tmp_path):
    known = tmp_path / "empty_known_hosts"
    known.write_text("")
    opts = {k: v for k, v in board.items() if k != "kind"} | {"known_hosts": str(known)}
    with pytest.raises(InfraError, match=r"unknown ssh host key for \[127.0.0.1\]"):
        SshTransport(**opts)


def test_opt_out_accepts_with_a_loud_warning(board, tmp_path, caplog):
    opts = {k: v for k, v in board.items() if k != "kind"} | {
        "known_hosts": str(tmp_path / "none"), "insecure_accept_any_host_key": True}
    with caplog.at_level(logging.WARNING, logger="farm.transports.ssh"):
        t = SshTransport(**opts)
    assert t.run(["true"]).exit_code == 0
    assert any("INSECURE" in r.getMessage() for r in caplog.records)
    t.close()


def test_jump_host_reaches_the_board(board):
    opts = {k: v for k, v in board.items() if k != "kind"}
    # The board is its own jump host: ProxyJump through a direct-tcpip channel of sshd.
    t = SshTransport(**opts, jump=dict(opts))
    assert t.run(["echo", "via jump"]).stdout == "via jump\n"
    t.close()


@pytest.mark.parametrize("also_known", [False, True])
def test_revoked_host_key_is_refused_in_one_line(board, tmp_path, also_known):
    """OpenSSH's `@revoked` marker (paramiko cannot parse it): the board's own key, revoked, is refused by name,
    even when the same key is also listed as known."""
    line = next(ln for ln in Path(board["known_hosts"]).read_text().splitlines() if ln.strip())
    known = tmp_path / "known_hosts"
    known.write_text(f"@revoked {line}\n" + (f"{line}\n" if also_known else ""))
    opts = {k: v for k, v in board.items() if k != "kind"} | {"known_hosts": str(known)}
    with pytest.raises(InfraError) as err:
        SshTransport(**opts)
    assert "REVOKED" in str(err.value) and f"{known}:1" in str(err.value) and "\n" not in str(err.value)
