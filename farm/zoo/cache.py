"""The cache of synthetic-weight GGUF files built from cards.

Owns `ModelFile` (path, sha256, size, parameter count: what a backend stages and a result records)
and `ensure_model`, which builds a card once per content key (architecture, name, quant, seed,
writer version) into `cache_dir("models")`. User files and model references are in `farm.zoo.files`.

Builds are atomic (unique temp file, then rename) and serialised per file with an advisory lock, so
two processes asking for the same model produce one file. The sha256 is kept in a `<file>.json`
sidecar with the file's size and mtime: reuse costs a stat, and only a touched file is re-hashed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from farm.errors import ConfigError
from farm.paths import cache_dir
from farm.zoo.arch import QUANTS, Architecture
from farm.zoo.cards import Card


class ModelFile(BaseModel):
    """One GGUF on this host, identified by content."""

    model_config = ConfigDict(frozen=True)

    name: str
    path: Path
    sha256: str
    size: int
    n_params: int
    quant: str  # farm's label of the file's mix (farm.zoo.mix): q4_k_m, q4_1, f16, ...
    kind: Literal["card", "file"]
    seed: int | None = None
    approximation: str | None = None  # carried into results: what the file does not model
    architecture: Architecture | None = None


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(4 << 20):
            h.update(chunk)
    return h.hexdigest()


@contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """Exclusive advisory lock across processes; released when the holder exits, even by a crash."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(text)
    os.replace(tmp, path)


def writer_version() -> str:
    """Identity of the GGUF writer: its WRITER_VERSION if it declares one, else a hash of its source (with the
    k-quantizers' and the recipe's).

    Part of the cache key, so a changed writer never serves files from an older one.
    """
    from farm.zoo import kquants, recipe, writer

    declared = getattr(writer, "WRITER_VERSION", None)
    if declared is not None:
        return str(declared)
    # the k-quantizers and the per-tensor recipe decide a k-quant file's bytes as much as the writer does
    h = hashlib.sha256()
    for mod in (writer, kquants, recipe):
        h.update(Path(mod.__file__).read_bytes())  # type: ignore[arg-type]
    return "src-" + h.hexdigest()[:12]


def cache_key(card: Card, quant: str, seed: int) -> str:
    # The name is in the key because the writer stores it in general.basename: same shape, other bytes.
    payload = {
        "architecture": card.architecture.model_dump(mode="json"),
        "name": card.name,
        "quant": quant,
        "seed": seed,
        "writer": writer_version(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def still_valid(path: Path, meta: dict[str, Any] | None, verify: bool) -> dict[str, Any] | None:
    """`meta` (refreshed) if `path` still holds the content it describes, else None."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    if not meta or st.st_size != meta.get("size"):
        return None
    if verify or st.st_mtime_ns != meta.get("mtime_ns"):
        # Touched since it was hashed (copied, restored): hash once, and remember the new mtime.
        if sha256_file(path) != meta.get("sha256"):
            return None
        meta = {**meta, "mtime_ns": st.st_mtime_ns}
    return meta


def ensure_model(card: Card, quant: str, seed: int = 0, *, verify: bool = False) -> ModelFile:
    """The cached GGUF of `card` in `quant` with weights from `seed`, built if missing or damaged.

    `verify=True` re-hashes an existing file instead of trusting its sidecar. Raises ConfigError for
    a card the engine cannot run (its `unsupported` reason) or an unknown quant.
    """
    if not card.runnable:
        raise ConfigError(f"{card.name}: no file is built for this card: {card.unsupported}")
    if quant not in QUANTS:
        raise ConfigError(f"the zoo writes {', '.join(QUANTS)}, not {quant!r}")
    key = cache_key(card, quant, seed)
    root = cache_dir("models")
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", card.name).strip("_")
    path = root / f"{slug}.{quant}.s{seed}.{key}.gguf"
    with locked(root / f".{path.name}.lock"):
        try:
            stored = json.loads(_sidecar(path).read_text())
        except (OSError, ValueError):
            stored = None
        meta = still_valid(path, stored, verify)
        if meta is None:
            meta = _build(card, quant, seed, key, path)
        elif meta != stored:
            write_atomic(_sidecar(path), json.dumps(meta, indent=1))
    return ModelFile(
        name=card.name,
        path=path,
        sha256=meta["sha256"],
        size=meta["size"],
        n_params=meta["n_params"],
        quant=quant,
        kind="card",
        seed=seed,
        approximation=card.approximation,
        architecture=card.architecture,
    )


def _build(card: Card, quant: str, seed: int, key: str, path: Path) -> dict[str, Any]:
    from farm.zoo import writer  # imported here: numpy + gguf are not needed to list cards

    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part")
    try:
        writer.write_gguf(card.architecture, tmp, quant, seed=seed, name=card.name)
        digest = sha256_file(tmp)
        st = tmp.stat()
        os.replace(tmp, path)  # rename keeps the mtime recorded below
        meta = {
            "sha256": digest,
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "key": key,
            "card": card.name,
            "quant": quant,
            "seed": seed,
            "n_params": card.n_params(),
            "writer": writer_version(),
            "architecture": card.architecture.model_dump(mode="json"),
        }
        write_atomic(_sidecar(path), json.dumps(meta, indent=1))
        return meta
    finally:
        tmp.unlink(missing_ok=True)
        tmp.with_name(tmp.name + ".tmp").unlink(missing_ok=True)  # the writer's own temp on failure
