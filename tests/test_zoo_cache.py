"""The model cache and the user file registry, on real (tiny) GGUF files.

Builds use farm-tiny (~2 MB, well under a second). The concurrency test runs two real processes that
ask for the same model at the same moment and checks that exactly one file was written.
"""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path
from typing import Any

import pytest
from gguf import GGUFReader

from farm.errors import ConfigError
from farm.zoo import cache, writer
from farm.zoo.cache import ensure_model, sha256_file
from farm.zoo.cards import load_card
from farm.zoo.files import register_file, registered_files, resolve_model


@pytest.fixture(autouse=True)
def farm_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FARM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def counts(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count GGUF writes and sha256 passes, to prove reuse costs neither."""
    seen = {"write": 0, "hash": 0}
    real_write, real_hash = writer.write_gguf, cache.sha256_file

    def write(*args: object, **kwargs: object) -> Path:
        seen["write"] += 1
        return real_write(*args, **kwargs)  # type: ignore[arg-type]

    def digest(path: Path) -> str:
        seen["hash"] += 1
        return real_hash(path)

    monkeypatch.setattr(writer, "write_gguf", write)
    monkeypatch.setattr(cache, "sha256_file", digest)
    return seen


def _models_dir(home: Path) -> Path:
    return home / "cache" / "models"


def test_build_writes_file_and_sidecar(farm_home: Path) -> None:
    card = load_card("farm-tiny")
    m = ensure_model(card, "q4_0")
    assert m.path.parent == _models_dir(farm_home) and m.path.suffix == ".gguf"
    assert m.size == m.path.stat().st_size and m.sha256 == sha256_file(m.path)
    side = json.loads(Path(str(m.path) + ".json").read_text())
    assert side["sha256"] == m.sha256 and side["size"] == m.size and side["quant"] == "q4_0"
    assert side["mtime_ns"] == m.path.stat().st_mtime_ns and side["card"] == "farm-tiny"
    # The card's parameter formula and the writer's tensors agree.
    assert m.n_params == card.n_params() == sum(int(t.n_elements) for t in GGUFReader(str(m.path)).tensors)
    assert not [p for p in m.path.parent.iterdir() if p.name.endswith((".part", ".tmp"))]


def test_reuse_neither_rebuilds_nor_rehashes(counts: dict[str, int]) -> None:
    card = load_card("farm-tiny")
    first = ensure_model(card, "q4_0")
    assert counts == {"write": 1, "hash": 1}
    assert ensure_model(card, "q4_0") == first
    assert counts == {"write": 1, "hash": 1}


def test_touched_file_is_rehashed_once_then_trusted(counts: dict[str, int]) -> None:
    m = ensure_model(load_card("farm-tiny"), "f16")
    os.utime(m.path, ns=(1_000_000_000, 1_000_000_000))
    assert ensure_model(load_card("farm-tiny"), "f16").sha256 == m.sha256
    assert counts == {"write": 1, "hash": 2}
    ensure_model(load_card("farm-tiny"), "f16")
    assert counts == {"write": 1, "hash": 2}  # the sidecar learned the new mtime


def test_damaged_files_are_rebuilt(counts: dict[str, int]) -> None:
    card = load_card("farm-tiny")
    m = ensure_model(card, "q8_0")
    with open(m.path, "r+b") as f:  # truncated: the size check catches it without hashing
        f.truncate(m.size // 2)
    assert ensure_model(card, "q8_0").sha256 == m.sha256 and counts["write"] == 2
    st = m.path.stat()
    with open(m.path, "r+b") as f:  # same size, same mtime: only verify=True can see it
        f.seek(m.size - 100)
        f.write(b"\xff" * 100)
    os.utime(m.path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert ensure_model(card, "q8_0", verify=True).sha256 == m.sha256 and counts["write"] == 3
    assert sha256_file(m.path) == m.sha256


def test_key_separates_quant_seed_and_shape() -> None:
    card = load_card("farm-tiny")
    paths = {
        ensure_model(card, "q4_0").path,
        ensure_model(card, "q4_0", seed=1).path,
        ensure_model(card, "q8_0").path,
        ensure_model(card.with_overrides(n_layers=2), "q4_0").path,
    }
    assert len(paths) == 4
    assert ensure_model(card, "q4_0").sha256 != ensure_model(card, "q4_0", seed=1).sha256


def test_unsupported_cards_and_quants_are_refused() -> None:
    with pytest.raises(ConfigError, match="soft-capping"):
        ensure_model(load_card(Path(__file__).parent / "data" / "unrunnable-card.yaml"), "q4_0")
    with pytest.raises(ConfigError, match="the zoo writes"):
        ensure_model(load_card("farm-tiny"), "q5_k")


def _build_in_child(home: str, barrier: Any, log: str, out: Any) -> None:
    os.environ["FARM_HOME"] = home
    real = writer.write_gguf

    def logged(*args: object, **kwargs: object) -> Path:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    writer.write_gguf = logged  # type: ignore[assignment]
    barrier.wait()  # both processes ask at the same moment
    m = ensure_model(load_card("farm-tiny"), "q4_0", seed=7)
    out.put((str(m.path), m.sha256))


def test_two_processes_build_one_file(farm_home: Path, tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    barrier, out, log = ctx.Barrier(2), ctx.Queue(), tmp_path / "writes.log"
    procs = [ctx.Process(target=_build_in_child, args=(str(farm_home), barrier, str(log), out)) for _ in "ab"]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert results[0] == results[1]
    assert len(log.read_text().split()) == 1  # the second process waited and reused the first's file
    files = sorted(p.name for p in _models_dir(farm_home).iterdir() if not p.name.startswith("."))
    assert files == [Path(results[0][0]).name, Path(results[0][0]).name + ".json"]
    assert sha256_file(Path(results[0][0])) == results[0][1]


def test_register_file_checks_sha256(tmp_path: Path) -> None:
    m = ensure_model(load_card("farm-tiny"), "q4_0")
    wrong = "0" * 64
    with pytest.raises(ConfigError) as info:
        register_file("tiny", m.path, sha256=wrong)
    assert wrong in str(info.value) and m.sha256 in str(info.value)
    assert registered_files() == []
    r = register_file("tiny", m.path, sha256=m.sha256.upper())
    assert (r.sha256, r.quant, r.kind, r.n_params) == (m.sha256, "q4_0", "file", m.n_params)
    assert [e["name"] for e in registered_files()] == ["tiny"]
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(ConfigError, match="not a readable GGUF"):
        register_file("junk", tmp_path / "junk.gguf")
    with pytest.raises(ConfigError, match="bad model name"):
        register_file("file:x", m.path)


def test_resolve_model_forms(tmp_path: Path) -> None:
    card_file = resolve_model("farm-tiny", "q4_0")
    assert card_file.kind == "card" and card_file.name == "farm-tiny"
    derived = resolve_model("farm-tiny[n_layers=2]", "q4_0")
    assert derived.name == "farm-tiny[n_layers=2]" and derived.n_params < card_file.n_params
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(card_file.path.read_bytes())
    by_path = resolve_model(f"file:{copy}")
    assert (by_path.sha256, by_path.quant) == (card_file.sha256, "q4_0")
    register_file("mine", copy)
    assert resolve_model("file:mine", "q4_0").path == copy.resolve()
    with pytest.raises(ConfigError, match="holds q4_0 weights, not q8_0"):
        resolve_model("file:mine", "q8_0")
    with pytest.raises(ConfigError, match="sha256 mismatch"):
        resolve_model("farm-tiny", "q4_0", sha256="ab" * 32)
    with pytest.raises(ConfigError, match="a quant is needed"):
        resolve_model("farm-tiny")
    with pytest.raises(ConfigError, match="neither a registered model"):
        resolve_model("file:nothing-here")
    with open(copy, "r+b") as f:  # the registered file changes behind farm's back
        f.seek(-1, os.SEEK_END)
        f.write(b"\x01")
    with pytest.raises(ConfigError, match="changed since registration"):
        resolve_model("file:mine")
