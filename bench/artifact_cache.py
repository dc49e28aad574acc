"""What verifying the device cache costs: a 1 GiB artifact, full sha256 against the stat signature.

    python bench/artifact_cache.py [--gib 1 --repeat 3]

One run starts the virtual lab (a phone behind the real adb server, a board behind a real sshd) and
places the same 1 GiB file in the device cache of this host (local transport), the phone and the
board. Per transport, side by side (median of ``--repeat`` timings, wall clock, on this host):

- sha256: the device hashes the file (``sha256sum``; what a connection pays once per artifact);
- signature: one stat call (size, inode, mtime, ctime; what every later job on that connection pays);
- size only: ``wc -c``, the check 0183b25 did on every cache hit (it trusted the manifest for the rest);
- stage, new connection / same connection: :func:`farm.agent.artifacts.stage` on a cache hit (0 bytes
  pushed), the first time on a fresh transport (hashes) and again on the same one (signature only).

The file is in the page cache (written just before): the hash figures are the CPU cost of sha256
on this host; a phone reading cold flash adds its read time (~1-2 GB/s on UFS 3/4). Wall times
stretch with the host's load, so the run also prints the load average and the CPU time of one local
``sha256sum`` of the file (what the hash costs on an idle core).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from farm.agent.artifacts import stage
from farm.backends.base import Artifact
from farm.transports import Transport, open_transport
from farm.transports.base import quote_argv

WORKDIRS = {"local": None, "adb": "/data/local/tmp/farm-bench", "ssh": "/var/tmp/farm-bench"}


def timed(fn: Callable[[], object], repeat: int) -> float:
    """Median wall seconds of `repeat` calls."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def make_file(path: Path, size: int) -> str:
    """`size` random bytes at `path`; returns their sha256."""
    h = hashlib.sha256()
    with path.open("wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 16 << 20))
            h.update(chunk)
            f.write(chunk)
            left -= len(chunk)
    return h.hexdigest()


def place(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.unlink(missing_ok=True)
    try:
        os.link(src, dest)  # the same bytes without another GiB on disk
    except OSError:
        shutil.copyfile(src, dest)
    dest.chmod(0o644)


def measure(kind: str, connect: Callable[[], Transport], workdir: str, art: Artifact,
            repeat: int) -> dict[str, float]:
    remote = f"{workdir}/cache/{art.remote_name}"
    t = connect()
    try:
        size = art.local.stat().st_size
        assert t.sha256(remote) == art.sha256, f"{kind}: the placed file is not the artifact"
        row = {"sha256": timed(lambda: t.sha256(remote), repeat),
               "signature": timed(lambda: t.stat_signatures([remote]), max(repeat, 20)),
               "size only": timed(lambda: t.shell(f"wc -c < {quote_argv([remote])}"), max(repeat, 20))}
    finally:
        t.close()

    def fresh_hit() -> None:
        fresh = connect()  # the connect itself is not timed below: only what stage() adds to it
        try:
            t0 = time.perf_counter()
            assert stage(fresh, workdir, [art])[1] == 0
            fresh_times.append(time.perf_counter() - t0)
        finally:
            fresh.close()

    fresh_times: list[float] = []
    for _ in range(repeat):
        fresh_hit()
    row["stage, new connection"] = statistics.median(fresh_times)
    same = connect()
    try:
        stage(same, workdir, [art])
        row["stage, same connection"] = timed(lambda: stage(same, workdir, [art]), max(repeat, 20))
    finally:
        same.close()
    assert size > 0
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=1.0, help="artifact size in GiB")
    ap.add_argument("--repeat", type=int, default=3, help="timings per hash figure (median)")
    args = ap.parse_args(argv)

    from farm.lab import Lab, tools_missing

    missing = tools_missing()
    if missing:
        print(f"farm lab needs: {', '.join(missing)}", file=sys.stderr)
        return 3
    root = Path(tempfile.mkdtemp(prefix="farm-bench-cache-"))
    root.chmod(0o755)  # the board's user reaches its sandbox (and sshd its keys) through here
    size = int(args.gib * (1 << 30))
    try:
        src = root / "artifact.bin"
        t0 = time.perf_counter()
        sha = make_file(src, size)
        print(f"artifact: {size / (1 << 30):.2f} GiB random bytes, sha256 {sha[:16]}… "
              f"(written in {time.perf_counter() - t0:.1f} s)", file=sys.stderr)
        art = Artifact("model", src, sha)
        with Lab(root / "lab", phones=1, boards=1, power=False) as lab:
            local_workdir = str(root / "local-device")
            place(src, Path(local_workdir) / "cache" / art.remote_name)
            connects: dict[str, tuple[Callable[[], Transport], str]] = {
                "local": (functools.partial(open_transport, "local"), local_workdir)}
            for kind, name in (("adb", "phone1"), ("ssh", "board1")):
                dev = lab.device(name)
                options = {k: v for k, v in dev.transport.items() if k != "kind"}
                connect = functools.partial(open_transport, dev.transport["kind"], **options)
                with contextlib.closing(connect()) as t:  # the cache directory belongs to the device's user
                    t.mkdir(f"{WORKDIRS[kind]}/cache")
                place(src, lab.sandbox_file(name, f"{WORKDIRS[kind]}/cache/{art.remote_name}"))
                connects[kind] = (connect, str(WORKDIRS[kind]))
            load = os.getloadavg()
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            with contextlib.closing(open_transport("local")) as t:
                t.sha256(f"{local_workdir}/cache/{art.remote_name}")
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
            rows = {}
            for kind, (connect, workdir) in connects.items():
                print(f"measuring {kind} …", file=sys.stderr)
                rows[kind] = measure(kind, connect, workdir, art, args.repeat)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    cols = list(next(iter(rows.values())))
    print(f"\ncache check of one {size / (1 << 30):.2f} GiB artifact, median wall time on this host "
          f"({os.cpu_count()} cores, file in page cache):")
    print(f"{'transport':10}" + "".join(f"{c:>24}" for c in cols))
    for kind, row in rows.items():
        print(f"{kind:10}" + "".join(f"{_fmt(row[c]):>24}" for c in cols))
    hash_gbs = {k: size / r["sha256"] / 1e9 for k, r in rows.items()}
    print("sha256 throughput (wall): " + ", ".join(f"{k} {v:.2f} GB/s" for k, v in hash_gbs.items()))
    print(f"sha256sum CPU time (local, independent of load): {cpu_s:.2f} s = {size / cpu_s / 1e9:.2f} GB/s "
          f"per core; load average during the run {load[0]:.1f} → {os.getloadavg()[0]:.1f} on "
          f"{os.cpu_count()} cores (wall figures above stretch with it)")
    return 0


def _fmt(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    return f"{seconds * 1000:.1f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.0f} µs"


if __name__ == "__main__":
    raise SystemExit(main())
