"""The synthetic GGUF writer: llama.cpp names and keys, read-back of the architecture, determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader

from farm.errors import ConfigError
from farm.zoo.arch import Architecture
from farm.zoo.writer import read_arch, write_gguf
from tests.engine_ref import tiny_arch


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_names_keys_and_read_back(tmp_path: Path, arch: str) -> None:
    a = tiny_arch(arch)
    p = write_gguf(a, tmp_path / "m.gguf", "q4_0", seed=2, name="tiny")
    assert read_arch(p) == a
    r = GGUFReader(str(p))
    names = {t.name: t for t in r.tensors}
    assert ("output.weight" in names) == (not a.tied_embeddings)
    assert ("blk.1.attn_k.bias" in names) == a.qkv_bias
    assert names["blk.0.ffn_down.weight"].tensor_type == GGMLQuantizationType.Q4_0
    assert list(names["blk.0.ffn_down.weight"].shape) == [a.d_ff, a.d_model]  # ggml order: row length first
    assert names["blk.0.attn_norm.weight"].tensor_type == GGMLQuantizationType.F32
    assert r.get_field("general.alignment").contents() == 32
    assert r.get_field("general.file_type").contents() == 2  # MOSTLY_Q4_0
    assert r.get_field(f"{arch}.attention.head_count_kv").contents() == a.n_kv_heads
    tokens = r.get_field("tokenizer.ggml.tokens").contents()
    assert len(tokens) == a.vocab_size == len(set(tokens))
    assert r.get_field("tokenizer.ggml.model").contents() == "llama"
    # n_params of the file = the card's count (arch.n_params counts tied embeddings once)
    assert sum(int(np.prod(t.shape)) for t in r.tensors) == a.n_params()


def test_weights_are_deterministic_and_scaled(tmp_path: Path) -> None:
    a = tiny_arch("llama")
    one = write_gguf(a, tmp_path / "a.gguf", "f32", seed=5).read_bytes()
    two = write_gguf(a, tmp_path / "b.gguf", "f32", seed=5).read_bytes()
    other = write_gguf(a, tmp_path / "c.gguf", "f32", seed=6).read_bytes()
    assert one == two != other
    r = GGUFReader(str(tmp_path / "a.gguf"))
    w = next(t for t in r.tensors if t.name == "blk.0.ffn_down.weight").data
    assert abs(float(np.std(w)) - 1 / np.sqrt(a.d_ff)) < 0.1 / np.sqrt(a.d_ff)  # std 1/sqrt(fan_in)


def test_head_dim_keys_and_bad_quant(tmp_path: Path) -> None:
    a = Architecture(arch="llama", n_layers=1, d_model=64, n_heads=4, n_kv_heads=2, d_ff=64, vocab_size=64,
                     head_dim=32)
    p = write_gguf(a, tmp_path / "hd.gguf", "f16")
    assert GGUFReader(str(p)).get_field("llama.attention.key_length").contents() == 32
    assert read_arch(p) == a
    with pytest.raises(ConfigError):
        write_gguf(a, tmp_path / "x.gguf", "q5_k")
    odd = Architecture(arch="llama", n_layers=1, d_model=48, n_heads=4, n_kv_heads=2, d_ff=64, vocab_size=64)
    with pytest.raises(ConfigError):
        write_gguf(odd, tmp_path / "y.gguf", "q8_0")
