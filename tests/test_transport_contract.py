"""One contract, every transport: local, adb (virtual phone via the real adb server), ssh (real sshd)."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from farm.errors import InfraError, JobError
from farm.transports import Transport, open_transport
from farm.transports.base import quote_argv

HOSTILE = ["a b", "'", '"', "$(touch /tmp/farm-pwned)", ";rm -rf x", "new\nline", "ünïcødé ☃", "`id`",
           "*", "-n", "\\", ""]
KINDS = ["local", "adb", "ssh"]


@pytest.fixture(params=KINDS)
def dev(request, tmp_path) -> tuple[Transport, str]:
    """(transport, a scratch directory on the device)."""
    if request.param == "local":
        return open_transport("local"), str(tmp_path / "dev")
    get = request.getfixturevalue("lab_transport")
    if request.param == "adb":
        return get("phone1"), f"/data/local/tmp/farm-contract/{request.node.name[-12:]}"
    return get("board1"), f"/var/tmp/farm/contract-{os.getpid()}"


def test_exit_code_stdout_stderr(dev):
    t, _ = dev
    r = t.shell("echo out; echo err >&2; exit 3")
    assert (r.exit_code, r.stdout, r.stderr) == (3, "out\n", "err\n")
    assert t.shell("true").exit_code == 0
    with pytest.raises(JobError):
        t.shell("exit 9").check("x")


def test_hostile_arguments_arrive_literally(dev):
    t, _ = dev
    r = t.run(["printf", "%s|", *HOSTILE])
    assert r.exit_code == 0
    assert r.stdout == "".join(f"{h}|" for h in HOSTILE)
    assert not t.exists("/tmp/farm-pwned")


def test_timeout_is_a_job_error_and_kills_the_command(dev):
    t, _ = dev
    start = time.monotonic()
    with pytest.raises(JobError, match="timed out"):
        t.shell("sleep 47; echo never", timeout=1)
    assert time.monotonic() - start < 8
    time.sleep(0.3)
    assert t.shell("pgrep -f 'slee[p] 47' || true").stdout.strip() == ""


def test_lines_stream_while_running(dev):
    t, _ = dev
    seen: list[tuple[float, str]] = []
    r = t.shell("echo first; sleep 0.6; echo second", on_line=lambda s: seen.append((time.monotonic(), s)))
    end = time.monotonic()
    assert [s for _, s in seen] == ["first", "second"]
    assert end - seen[0][0] > 0.4  # the first line arrived before the command finished
    assert r.stdout == "first\nsecond\n"


def test_push_pull_sha256_exists(dev, tmp_path):
    t, workdir = dev
    payload = os.urandom(3 * 1024 * 1024 + 17)
    local = tmp_path / "engine.bin"
    local.write_bytes(payload)
    local.chmod(0o755)
    remote = f"{workdir}/sub dir/engine.bin"
    try:
        assert t.push(local, remote) == len(payload)
        assert t.sha256(remote) == hashlib.sha256(payload).hexdigest()
        assert t.exists(remote) and not t.exists(remote + ".farm-part")
        assert t.run(["test", "-x", remote]).exit_code == 0  # executables keep their mode
        back = tmp_path / "back.bin"
        t.pull(remote, back)
        assert back.read_bytes() == payload
        assert t.sha256(f"{workdir}/missing") is None
        with pytest.raises(InfraError):
            t.pull(f"{workdir}/missing", tmp_path / "nope")
    finally:
        t.run(["rm", "-rf", workdir])


def test_stat_signature_moves_when_a_file_changes(dev, tmp_path):
    """The cache's cheap check: stable while a file is left alone; an in-place write of the same size,
    a truncation or a replacement each give another signature; a missing file has none."""
    t, workdir = dev
    local = tmp_path / "model.gguf"
    local.write_bytes(os.urandom(64 * 1024))
    a, b = f"{workdir}/it's a file", f"{workdir}/missing"
    try:
        t.push(local, a)
        first, missing = t.stat_signatures([a, b])
        assert first is not None and missing is None and first.split()[0] == str(64 * 1024)
        assert t.stat_signatures([a]) == [first]
        time.sleep(0.02)  # past the file system's timestamp granularity
        t.shell(f"printf x | dd of={quote_argv([a])} bs=1 seek=100 conv=notrunc 2>/dev/null").check("write")
        rewritten = t.stat_signatures([a])[0]
        assert rewritten not in (None, first) and rewritten.split()[0] == first.split()[0]
        t.push(local, a)  # a replacement (rename into place)
        replaced = t.stat_signatures([a])[0]
        assert replaced not in (None, first, rewritten)
        t.shell(f"truncate -s 10 {quote_argv([a])} 2>/dev/null || : > {quote_argv([a])}").check("truncate")
        assert t.stat_signatures([a])[0].split()[0] in ("10", "0")
        assert t.stat_signatures([]) == []
    finally:
        t.run(["rm", "-rf", workdir])


def test_info_identifies_the_device(dev):
    t, _ = dev
    info = t.info()
    assert info.model and info.kernel and info.abi
    assert info.ram_bytes and info.ram_bytes > 256 * 1024 * 1024
    assert info.fingerprint()["serial"]


def test_concurrent_commands(dev):
    t, _ = dev
    out: list[str] = []

    def one(i: int) -> None:
        out.append(t.run(["echo", str(i)]).stdout.strip())

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(out) == ["0", "1", "2", "3"]


def test_lab_devices_answer_real_paths(lab, lab_transport):
    phone, board = lab_transport("phone1"), lab_transport("board1")
    assert phone.info().model == "Pixel 8" and phone.info().abi == "arm64-v8a"
    assert int(phone.read_text("/sys/class/power_supply/battery/voltage_now")) > 3_000_000
    assert "Current Battery Service state:" in phone.shell("dumpsys battery").stdout
    assert board.info().abi == "aarch64"
    hw = board.shell("cat /sys/class/hwmon/hwmon*/in1_label /sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*/name")
    assert hw.stdout.split() == ["VDD_IN", "ina3221"]
    Path(lab.sandbox_file("board1", "/sys/class/thermal/thermal_zone0/temp")).write_text("51234\n")
    assert board.read_text("/sys/class/thermal/thermal_zone0/temp").strip() == "51234"


def test_wait_exited_returns_the_status_and_times_out() -> None:
    import subprocess

    from farm.transports.local import wait_exited

    assert wait_exited(subprocess.Popen(["sh", "-c", "exit 7"]), 10) == 7
    assert wait_exited(subprocess.Popen(["true"]), None) == 0
    slow = subprocess.Popen(["sleep", "5"])
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            wait_exited(slow, 0.1)
    finally:
        slow.kill()
        slow.wait()


def test_more_concurrent_commands_than_sshd_allows_sessions(lab_transport):
    # sshd's MaxSessions is 10 per connection (the SFTP channel counts): 14 commands at once on one
    # board must all run, waiting for a session rather than failing.
    t = lab_transport("board1")
    t.shell("true")
    out: list[str] = []
    errors: list[Exception] = []

    def one(i: int) -> None:
        try:
            out.append(t.shell(f"sleep 0.5; echo {i}").stdout.strip())
        except Exception as exc:  # collected: a thread's exception would not fail the test
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(14)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == [] and sorted(out, key=int) == [str(i) for i in range(14)]
