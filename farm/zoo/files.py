"""The user's own GGUF files and the resolution of model references.

Owns the registry `data_dir()/models.yaml` (entries `{name, path, sha256}` plus size and mtime so a
later use costs a stat, not a re-hash), `register_file`, and `resolve_model`, which turns a sweep's
or the CLI's model reference (`smollm2-135m`, `smollm2-135m[n_layers=20]`, `file:NAME`,
`file:/path/x.gguf`) into a `ModelFile` on this host. Building cards is `farm.zoo.cache`'s job.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from farm.errors import ConfigError
from farm.paths import data_dir
from farm.yamlio import load_yaml
from farm.zoo.arch import QUANTS
from farm.zoo.cache import ModelFile, ensure_model, locked, sha256_file, still_valid, write_atomic
from farm.zoo.cards import load_card

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _registry_path() -> Path:
    return data_dir() / "models.yaml"


def _load_registry() -> list[dict[str, Any]]:
    path = _registry_path()
    if not path.exists():
        return []
    data = load_yaml(path)[0] or {}
    entries = data.get("models", []) if isinstance(data, dict) else None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and "name" in e and "path" in e for e in entries):
        raise ConfigError(f"{path}: expected 'models:' as a list of {{name, path, sha256}} entries")
    return entries


def registered_files() -> list[dict[str, Any]]:
    """Entries of the user's model registry: name, path, sha256 (+ size, mtime_ns)."""
    return _load_registry()


def _inspect(path: Path) -> tuple[int, str]:
    """(parameter count, label of its mix) of a GGUF, from its tensor table (farm.zoo.mix)."""
    from farm.zoo.mix import read_gguf

    info = read_gguf(path)
    return info.n_params, info.label


def _file_model(name: str, path: Path, sha256: str, size: int) -> ModelFile:
    n_params, quant = _inspect(path)
    return ModelFile(name=name, path=path, sha256=sha256, size=size, n_params=n_params, quant=quant, kind="file")


def register_file(name: str, path: str | Path, sha256: str | None = None) -> ModelFile:
    """Add (or replace) `name` -> `path` in the registry after hashing the file.

    With `sha256` given, a file with other content is refused: ConfigError naming both hashes.
    """
    if not _NAME.match(name):
        raise ConfigError(f"bad model name {name!r}: use letters, digits, '.', '_' and '-'")
    path = Path(path).expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    actual = sha256_file(path)
    if sha256 is not None and sha256.strip().lower() != actual:
        raise ConfigError(f"{path}: sha256 mismatch: expected {sha256.strip().lower()}, file has {actual}")
    st = path.stat()
    model = _file_model(name, path, actual, st.st_size)
    entry = {"name": name, "path": str(path), "sha256": actual, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    with locked(data_dir() / ".models.yaml.lock"):
        entries = [e for e in _load_registry() if e["name"] != name] + [entry]
        write_atomic(_registry_path(), yaml.safe_dump({"models": entries}, sort_keys=False))
    return model


def _resolve_file(target: str) -> ModelFile:
    entry = next((e for e in _load_registry() if e["name"] == target), None)
    if entry is None:
        path = Path(target).expanduser().resolve()
        if not path.is_file():
            names = ", ".join(e["name"] for e in _load_registry()) or "none"
            raise ConfigError(f"file:{target}: neither a registered model ({names}) nor an existing file")
        # An unregistered path is hashed on every use; `farm zoo add` makes later uses a stat.
        return _file_model(path.name, path, sha256_file(path), path.stat().st_size)
    path = Path(entry["path"])
    meta = still_valid(path, entry, verify=False)
    if meta is None:
        found = sha256_file(path) if path.is_file() else "no file"
        raise ConfigError(
            f"file:{target}: {path} changed since registration: expected "
            f"{entry.get('sha256')}, found {found}; re-register it with `farm zoo add`"
        )
    return _file_model(target, path, meta["sha256"], meta["size"])


def resolve_model(ref: str, quant: str | None = None, seed: int = 0, sha256: str | None = None) -> ModelFile:
    """A model reference from a sweep or the CLI, as a file on this host.

    `NAME` or `NAME[field=value,...]` is a card built by `ensure_model` (quant required);
    `file:NAME` is a registered file and `file:PATH` any GGUF. A file's quant is what the file holds:
    asking for another one is a ConfigError rather than a mislabelled result. `sha256`, when given,
    must match the resolved file (a sweep pinning the exact file it was written for).
    """
    if ref.startswith("file:"):
        model = _resolve_file(ref.removeprefix("file:").strip())
        if quant is not None and model.quant != quant:
            raise ConfigError(f"{ref} holds {model.quant} weights, not {quant}")
    elif quant is None:
        raise ConfigError(f"{ref}: a quant is needed to build a card ({', '.join(QUANTS)})")
    else:
        model = ensure_model(load_card(ref), quant, seed)
    if sha256 is not None and sha256.strip().lower() != model.sha256:
        raise ConfigError(f"{ref}: sha256 mismatch: expected {sha256.strip().lower()}, file has {model.sha256}")
    return model
