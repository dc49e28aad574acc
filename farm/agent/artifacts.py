"""Staging artifacts on a device, once: a content-addressed cache with a manifest on the device.

Files live at ``<workdir>/cache/<sha256[:16]>-<name>``; ``<workdir>/cache/manifest.json`` maps
each name to its sha256, size and role (a record for people and tools: the decision below never
trusts it, so an entry lost to two writers racing costs nothing). A repeated sweep pushes 0 bytes,
and what runs is what was built: a cached copy is used only when its content is known to be the
artifact's.

How that is known, cheaply. The first time a connection (one transport object) uses a cached file,
the device hashes it (sha256); the file's stat signature (size, inode, mtime, ctime) is then kept
for that connection, and later jobs on it compare only the signature (one shell call for all
artifacts). A copy written in place (a flipped byte keeps the size, not mtime/ctime), truncated or
replaced changes its signature and is hashed again; a copy whose hash differs is pushed again. The
hash per connection also catches what leaves metadata alone (flash bit rot, a manifest from an
older farm): its cost, one read of each artifact per agent process or ``farm submit``, is measured
by ``bench/artifact_cache.py`` (a 1 GiB model: seconds on the device, against milliseconds for the
signature). A push goes to a unique part name, is hashed there and renamed into place, so a
corrupt push is refused (InfraError) before anything can run it, and two pushers sharing a workdir
never write the same file.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
import tempfile
import threading
import uuid
import weakref
from pathlib import Path

from farm.backends.base import Artifact
from farm.errors import InfraError
from farm.transports.base import Transport

# Per connection: device path → (sha256 it was verified to have, stat signature at that moment).
_verified: weakref.WeakKeyDictionary[Transport, dict[str, tuple[str, str]]] = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _manifest_path(workdir: str) -> str:
    return posixpath.join(workdir, "cache", "manifest.json")


def _part(remote: str) -> str:
    """A name no other pusher (another inventory entry on the same workdir, another process) uses."""
    return f"{remote}.{uuid.uuid4().hex[:12]}.part"


def read_manifest(transport: Transport, workdir: str) -> dict[str, dict]:
    result = transport.run(["cat", _manifest_path(workdir)], timeout=15)
    if result.exit_code != 0:
        return {}
    try:
        data = json.loads(result.stdout)
    except json.JSONDecodeError:
        return {}  # a torn manifest only costs a re-push
    return data if isinstance(data, dict) else {}


def _write_manifest(transport: Transport, workdir: str, updates: dict[str, dict]) -> None:
    # Merged into the manifest as it is now: another pusher on this workdir may have added entries since
    # we read it. A race between the read and the rename can still drop an entry: that costs a re-push.
    manifest = {**read_manifest(transport, workdir), **updates}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        local = Path(f.name)
    try:
        tmp = _part(_manifest_path(workdir))
        transport.push(local, tmp)
        transport.run(["mv", "-f", tmp, _manifest_path(workdir)], timeout=15).check("update manifest")
    finally:
        local.unlink(missing_ok=True)


def _size(signature: str | None) -> int | None:
    try:
        return int(signature.split()[0]) if signature else None
    except ValueError:
        return None


def _remember(transport: Transport, remote: str, sha256: str, signature: str | None) -> None:
    with _lock:
        known = _verified.setdefault(transport, {})
        if signature is None:
            known.pop(remote, None)
        else:
            known[remote] = (sha256, signature)


def _cached(transport: Transport, remote: str, art: Artifact, size: int, signature: str | None) -> bool:
    """Whether the device's copy at `remote` is the artifact, hashing it only when this connection has not."""
    if signature is None or _size(signature) != size:
        return False
    with _lock:
        if _verified.get(transport, {}).get(remote) == (art.sha256, signature):
            return True
    if transport.sha256(remote) != art.sha256:
        return False
    _remember(transport, remote, art.sha256, signature)
    return True


def _push(transport: Transport, art: Artifact, remote: str) -> int:
    part = _part(remote)
    try:
        pushed = transport.push(art.local, part)
        if art.executable:
            transport.run(["chmod", "755", part], timeout=15).check(f"chmod {part}")
        got = transport.sha256(part)
        if got != art.sha256:
            raise InfraError(f"push of {art.local.name} is corrupt on the device: sha256 {got} != {art.sha256}")
        transport.run(["mv", "-f", part, remote], timeout=15).check(f"rename {part}")
    except Exception:  # (not on Ctrl-C: an interrupt is not held up by a device that may be gone)
        with contextlib.suppress(Exception):  # a device that went away keeps its part: names never repeat
            transport.run(["rm", "-f", part], timeout=15)
        raise
    _remember(transport, remote, art.sha256, transport.stat_signatures([remote])[0])  # after the rename (ctime)
    return pushed


def stage(transport: Transport, workdir: str, artifacts: list[Artifact]) -> tuple[dict[str, str], int]:
    """Make every artifact present and intact on the device; returns role → device path, and bytes pushed."""
    cache = posixpath.join(workdir, "cache")
    transport.mkdir(cache)
    manifest = read_manifest(transport, workdir)
    remotes = [posixpath.join(cache, art.remote_name) for art in artifacts]
    signatures = transport.stat_signatures(remotes)
    staged: dict[str, str] = {}
    pushed = 0
    updates: dict[str, dict] = {}
    for art, remote, signature in zip(artifacts, remotes, signatures, strict=True):
        size = art.local.stat().st_size
        if not _cached(transport, remote, art, size, signature):
            pushed += _push(transport, art, remote)
        entry = {"sha256": art.sha256, "size": size, "role": art.role}
        if manifest.get(art.remote_name) != entry:
            updates[art.remote_name] = entry
        staged[art.role] = remote
    if updates:
        _write_manifest(transport, workdir, updates)
    return staged, pushed
