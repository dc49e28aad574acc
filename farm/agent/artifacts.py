"""Staging artifacts on a device, once: a content-addressed cache with a manifest on the device.

Files live at ``<workdir>/cache/<sha256[:16]>-<name>``; ``<workdir>/cache/manifest.json`` maps
each name to its sha256 and size. A file already listed with the right size is not pushed again,
so a repeated sweep pushes 0 bytes. A fresh push is verified by hashing it on the device.
"""

from __future__ import annotations

import json
import posixpath
import tempfile
from pathlib import Path

from farm.backends.base import Artifact
from farm.errors import InfraError
from farm.transports.base import Transport, quote_argv


def _manifest_path(workdir: str) -> str:
    return posixpath.join(workdir, "cache", "manifest.json")


def read_manifest(transport: Transport, workdir: str) -> dict[str, dict]:
    result = transport.run(["cat", _manifest_path(workdir)], timeout=15)
    if result.exit_code != 0:
        return {}
    try:
        data = json.loads(result.stdout)
    except json.JSONDecodeError:
        return {}  # a torn manifest only costs a re-push
    return data if isinstance(data, dict) else {}


def _write_manifest(transport: Transport, workdir: str, manifest: dict[str, dict]) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        local = Path(f.name)
    try:
        tmp = _manifest_path(workdir) + ".part"
        transport.push(local, tmp)
        transport.run(["mv", "-f", tmp, _manifest_path(workdir)], timeout=15).check("update manifest")
    finally:
        local.unlink(missing_ok=True)


def _remote_size(transport: Transport, path: str) -> int | None:
    result = transport.shell(f"wc -c < {quote_argv([path])}", timeout=15)
    try:
        return int(result.stdout.strip()) if result.exit_code == 0 else None
    except ValueError:
        return None


def stage(transport: Transport, workdir: str, artifacts: list[Artifact]) -> tuple[dict[str, str], int]:
    """Make every artifact present on the device; returns role → device path, and bytes pushed."""
    cache = posixpath.join(workdir, "cache")
    transport.mkdir(cache)
    manifest = read_manifest(transport, workdir)
    staged: dict[str, str] = {}
    pushed = 0
    changed = False
    for art in artifacts:
        remote = posixpath.join(cache, art.remote_name)
        size = art.local.stat().st_size
        entry = manifest.get(art.remote_name)
        if entry and entry.get("sha256") == art.sha256 and _remote_size(transport, remote) == size:
            staged[art.role] = remote
            continue
        pushed += transport.push(art.local, remote)
        if art.executable:
            transport.run(["chmod", "755", remote], timeout=15).check(f"chmod {remote}")
        got = transport.sha256(remote)
        if got != art.sha256:
            transport.run(["rm", "-f", remote], timeout=15)
            raise InfraError(f"push of {art.local.name} is corrupt on the device: sha256 {got} != {art.sha256}")
        manifest[art.remote_name] = {"sha256": art.sha256, "size": size, "role": art.role}
        staged[art.role] = remote
        changed = True
    if changed:
        _write_manifest(transport, workdir, manifest)
    return staged, pushed
