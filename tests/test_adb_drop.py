"""A phone that drops off mid-command is an InfraError (retry elsewhere), never a JobError."""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import pytest

from farm.errors import InfraError
from farm.transports.adb import AdbTransport
from tests.lab_fixtures import need_lab_tools


@pytest.fixture(scope="module")
def small_lab():
    need_lab_tools()
    from farm.lab import Lab

    with Lab(Path(tempfile.mkdtemp(prefix="farm-droplab-")), phones=1, boards=0) as running:
        yield running


def test_drop_mid_command_then_reconnect(small_lab):
    phone = small_lab.phones["phone1"]
    t = AdbTransport(**{k: v for k, v in phone.transport.items() if k != "kind"}, connect_timeout=20)
    assert t.run(["echo", "up"]).stdout == "up\n"
    errors: list[BaseException] = []

    def long_command() -> None:
        try:
            t.shell("echo started; sleep 30", timeout=60)
        except BaseException as exc:  # collected for the assertion below
            errors.append(exc)

    runner = threading.Thread(target=long_command)
    runner.start()
    time.sleep(0.5)
    small_lab.kill_phone("phone1")
    runner.join(timeout=15)
    assert not runner.is_alive()
    assert len(errors) == 1 and isinstance(errors[0], InfraError), errors

    with pytest.raises(InfraError):
        t.run(["true"])  # still gone

    small_lab.restart_phone("phone1", reconnect=False)
    start = time.monotonic()
    t.reconnect()  # adb disconnect + connect instead of waiting ~10 s for adb to retry
    elapsed = time.monotonic() - start
    assert t.run(["echo", "back"]).stdout == "back\n"
    assert elapsed < 10


def test_unknown_serial_is_infra(small_lab):
    with pytest.raises(InfraError):
        AdbTransport("127.0.0.1:1", adb_port=small_lab.adb_port, connect_timeout=1)


def test_no_server_is_infra():
    # A port where no adb server runs: refused without starting one behind the user's back.
    with pytest.raises(InfraError, match="no adb server"):
        AdbTransport("emulator-5554", adb_port=1).run(["true"])
