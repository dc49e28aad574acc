"""The device cache runs only what was built: a corrupted or truncated copy is pushed again.

Through the CLI on the virtual lab (a phone behind the real adb server, a board behind a real sshd):
sweep, damage the staged model inside the device's sandbox (one byte flipped, size kept; then cut
in half), sweep again: the model is pushed again and the run is done. On the local transport, one
connection hashes a cached file once and afterwards trusts its stat signature until the file
changes; two inventory entries sharing one workdir stage side by side without colliding.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from farm.agent.artifacts import read_manifest, stage
from farm.backends.base import Artifact
from farm.store import Store
from farm.transports.local import LocalTransport

REPO = Path(__file__).resolve().parent.parent
WORKDIRS = {"phone1": "/data/local/tmp/farm", "board1": "/var/tmp/farm"}

# thermal_gate: false — what this test judges is the cache; the gate waits a full stable window
# (10 s) before every job, which would triple this test's time. The gate with the shipped defaults
# runs on every profile in tests/test_lab_profiles.py. Everything else is the shipped default.
SWEEP = """version: 1
name: cache-check
models: [farm-tiny]
quants: [q4_0]
backends: [reference]
devices: [{devices}]
prompt_tokens: [16]
gen_tokens: [8]
threads: [1]
repetitions: 1
warmup: 0
thermal_gate: false   # the artifact cache is judged here; the gate with its defaults: test_lab_profiles
"""


def farm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "farm.cli.main", *args], capture_output=True, text=True,
                          timeout=600, cwd=REPO, env=dict(os.environ))


def submit(sweep: Path, db: str, inventory: Path) -> dict[str, int]:
    """`farm submit`; every job done; returns bytes pushed per device."""
    proc = farm("submit", str(sweep), "--db", db, "--devices", str(inventory))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_id = re.search(r"run (\d{8}-\d{6}-[0-9a-f]{4})", proc.stdout).group(1)  # type: ignore[union-attr]
    assert f"run {run_id}: done" in proc.stdout, proc.stdout
    rows = Store(db).job_rows(run_id)
    assert rows and all(r.status == "done" for r in rows), [(r.device, r.status, r.error) for r in rows]
    return {r.device: r.bytes_pushed for r in rows}


def staged_model(root: Path) -> Path:
    (model,) = [p for p in (root / "cache").glob("*.gguf")]
    return model


def flip_byte(path: Path) -> None:
    """One byte in the middle of the file, inverted in place: same size, other content."""
    with path.open("r+b") as f:
        f.seek(path.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))


def sha256_of(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_damaged_copy_on_a_phone_and_a_board_is_pushed_again(lab, tmp_path: Path) -> None:
    devices = sorted(WORKDIRS)
    roots = {d: lab.sandbox_file(d, WORKDIRS[d]) for d in devices}
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(SWEEP.format(devices=", ".join(devices)))
    db = f"sqlite:///{tmp_path / 'farm.db'}"

    submit(sweep, db, lab.inventory_path)  # whatever the devices held before, the model is staged now
    models = {d: staged_model(roots[d]) for d in devices}
    good = {d: sha256_of(m) for d, m in models.items()}
    size = {d: m.stat().st_size for d, m in models.items()}
    assert submit(sweep, db, lab.inventory_path) == dict.fromkeys(devices, 0)  # an intact cache: nothing pushed

    for d in devices:
        flip_byte(models[d])
        assert models[d].stat().st_size == size[d] and sha256_of(models[d]) != good[d]
    pushed = submit(sweep, db, lab.inventory_path)
    assert pushed == size, pushed  # exactly the model again, the intact engine stays
    assert {d: sha256_of(models[d]) for d in devices} == good

    for d in devices:
        os.truncate(models[d], size[d] // 2)
    pushed = submit(sweep, db, lab.inventory_path)
    assert pushed == size, pushed
    assert {d: sha256_of(models[d]) for d in devices} == good
    leftovers = [p for d in devices for p in (roots[d] / "cache").iterdir() if p.name.endswith("part")]
    assert not leftovers, leftovers


class CountingTransport(LocalTransport):
    """The local transport, counting how often it hashes a device file (the cost this cache saves)."""

    def __init__(self) -> None:
        super().__init__()
        self.hashed: list[str] = []

    def sha256(self, remote: str) -> str | None:
        self.hashed.append(remote)
        return super().sha256(remote)


def test_one_connection_hashes_once_then_trusts_an_unchanged_signature(tmp_path: Path) -> None:
    src = tmp_path / "model.gguf"
    src.write_bytes(os.urandom(1 << 20))
    art = Artifact("model", src, sha256_of(src))
    workdir = str(tmp_path / "device")

    first = CountingTransport()
    staged, pushed = stage(first, workdir, [art])
    remote = Path(staged["model"])
    assert pushed == 1 << 20 and sha256_of(remote) == art.sha256
    assert [Path(p).name for p in first.hashed] == [Path(p).name for p in first.hashed if p.endswith(".part")]
    first.hashed.clear()
    assert stage(first, workdir, [art]) == (staged, 0)
    assert first.hashed == []  # verified when pushed on this connection; the signature is unchanged

    second = CountingTransport()  # a new connection (the next `farm submit`): hashes once, then trusts
    assert stage(second, workdir, [art]) == (staged, 0) and second.hashed == [str(remote)]
    assert stage(second, workdir, [art]) == (staged, 0) and second.hashed == [str(remote)]

    flip_byte(remote)  # in place, same size: the signature moves (mtime, ctime), the hash finds the damage
    assert stage(second, workdir, [art]) == (staged, 1 << 20)
    assert sha256_of(remote) == art.sha256
    os.truncate(remote, 1000)  # a cut copy: its size alone sends it again
    second.hashed.clear()
    assert stage(second, workdir, [art]) == (staged, 1 << 20)
    assert all(p.endswith(".part") for p in second.hashed)  # only the fresh push was hashed
    assert read_manifest(second, workdir)[art.remote_name]["sha256"] == art.sha256


def test_a_corrupt_push_is_refused_before_it_can_run(tmp_path: Path) -> None:
    src = tmp_path / "model.gguf"
    src.write_bytes(b"GGUF" + os.urandom(4096))
    art = Artifact("model", src, "0" * 64)  # the device will not hash what we claim
    from farm.errors import InfraError

    with pytest.raises(InfraError, match="corrupt on the device"):
        stage(LocalTransport(), str(tmp_path / "device"), [art])
    assert not [p for p in (tmp_path / "device" / "cache").iterdir() if p.name != "manifest.json"]


def test_concurrent_stagers_on_one_workdir_agree(tmp_path: Path) -> None:
    """Many connections staging the same artifacts into one workdir at the same moment all succeed."""
    arts = []
    for i in range(3):
        src = tmp_path / f"m{i}.gguf"
        src.write_bytes(os.urandom(256 << 10))
        arts.append(Artifact(f"m{i}", src, sha256_of(src)))
    workdir = str(tmp_path / "device")
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def one() -> None:
        try:
            start.wait()
            stage(LocalTransport(), workdir, arts)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    cache = Path(workdir) / "cache"
    assert all(sha256_of(cache / a.remote_name) == a.sha256 for a in arts)
    assert not [p.name for p in cache.iterdir() if p.name.endswith("part")]
    assert stage(LocalTransport(), workdir, arts)[1] == 0  # a manifest entry lost to the race costs no push
    manifest = read_manifest(LocalTransport(), workdir)
    assert all(manifest[a.remote_name]["sha256"] == a.sha256 for a in arts)  # ... and is written back
