"""Synthetic-weight GGUF files: the real tensor shapes and metadata of an `Architecture`, seeded weights.

Owns the file format side of the zoo: `write_gguf` writes a GGUF v3 file that both farm's reference
engine and llama.cpp's llama-bench load (llama.cpp tensor names, metadata keys and a minimal
"llama" tokenizer), and `read_arch` reads the architecture back from such a file.

Speed of a transformer does not depend on the weight values, only on shapes and types, so weights are
random but scaled like a trained model (std 1/sqrt(fan_in), norms around 1) to keep activations
finite through every layer. Tensors are generated, quantized and written one at a time so a 0.5B
model needs a few hundred MB of memory at most.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFWriter, LlamaFileType, TokenType, quants

from farm.errors import ConfigError
from farm.zoo import kquants, recipe
from farm.zoo.arch import QUANTS, Architecture

_QTYPE = {
    "f32": GGMLQuantizationType.F32,
    "f16": GGMLQuantizationType.F16,
    "q8_0": GGMLQuantizationType.Q8_0,
    "q4_0": GGMLQuantizationType.Q4_0,
    "bf16": GGMLQuantizationType.BF16,
    "q4_1": GGMLQuantizationType.Q4_1,
    "q5_0": GGMLQuantizationType.Q5_0,
    "q5_1": GGMLQuantizationType.Q5_1,
    "q2_k": GGMLQuantizationType.Q2_K,
    "q3_k": GGMLQuantizationType.Q3_K,
    "q4_k": GGMLQuantizationType.Q4_K,
    "q5_k": GGMLQuantizationType.Q5_K,
    "q6_k": GGMLQuantizationType.Q6_K,
}
_FILE_TYPE = {
    "f32": LlamaFileType.ALL_F32,
    "f16": LlamaFileType.MOSTLY_F16,
    "q8_0": LlamaFileType.MOSTLY_Q8_0,
    "q4_0": LlamaFileType.MOSTLY_Q4_0,
    "bf16": LlamaFileType.MOSTLY_BF16,
    "q4_1": LlamaFileType.MOSTLY_Q4_1,
    "q5_0": LlamaFileType.MOSTLY_Q5_0,
    "q5_1": LlamaFileType.MOSTLY_Q5_1,
    **{mix: LlamaFileType[f"MOSTLY_{mix.upper()}"] for mix in recipe.K_MIXES},
}
SYNTHETIC_NAME = "farm synthetic weights"
RECIPE = "pure"  # llama-quantize --pure: every matrix in the one type (no q6_K output, no mixes)
_BLOCK = {"q8_0": (32, 34), "q4_0": (32, 18), "q4_1": (32, 20), "q5_0": (32, 22), "q5_1": (32, 24),
          **{t: (kquants.QK_K, size) for t, size in kquants.BLOCK_BYTES.items()}}
RECIPE_KEY = "farm.quantize.recipe"  # the GGUF key naming the recipe a zoo file was written with


def recipe_text(quant: str) -> str:
    """Which recipe the zoo writes `quant` with (stored in the file under RECIPE_KEY)."""
    if quant in recipe.K_MIXES:
        return f"{quant}: {recipe.RECIPE_NAME}; k-quant blocks by ggml's reference quantizers"
    if quant in ("f32", "f16", "bf16"):
        return f"{quant}: every matrix in {quant}, norms and biases f32"
    return f"{quant}: llama-quantize --pure (every matrix, the embedding included, in {quant}; norms f32)"
ALIGNMENT = 32
BOS_ID, EOS_ID, UNK_ID = 1, 2, 0
HIDDEN_ACT_KEY = "farm.hidden_act"
# Rows generated per chunk: bounds the f32 scratch of the 151936-row embedding to ~30 MB.
_CHUNK_ROWS = 8192


def _tensor_plan(arch: Architecture) -> list[tuple[str, tuple[int, int] | tuple[int], str, float]]:
    """(name, numpy shape (rows, cols), kind, scale) in file order; kind is matrix | norm | bias."""
    d, hd = arch.d_model, arch.dim_head
    plan: list[tuple[str, tuple[int, int] | tuple[int], str, float]] = [
        ("token_embd.weight", (arch.vocab_size, d), "matrix", 1.0 / np.sqrt(d)),
    ]
    for i in range(arch.n_layers):
        b = f"blk.{i}."
        n_heads, n_kv_heads, d_ff = arch.layer_shape(i)
        q_out, kv_out = n_heads * hd, n_kv_heads * hd
        plan.append((b + "attn_norm.weight", (d,), "norm", 0.0))
        if arch.arch == "openelm":  # fused q, k, v rows (llama.cpp's openelm) and per-head q/k norms
            plan.append((b + "attn_qkv.weight", (q_out + 2 * kv_out, d), "matrix", 1.0 / np.sqrt(d)))
            plan.append((b + "attn_q_norm.weight", (hd,), "norm", 0.0))
            plan.append((b + "attn_k_norm.weight", (hd,), "norm", 0.0))
        else:
            plan.append((b + "attn_q.weight", (q_out, d), "matrix", 1.0 / np.sqrt(d)))
            plan.append((b + "attn_k.weight", (kv_out, d), "matrix", 1.0 / np.sqrt(d)))
            plan.append((b + "attn_v.weight", (kv_out, d), "matrix", 1.0 / np.sqrt(d)))
        if arch.qkv_bias:
            plan.append((b + "attn_q.bias", (q_out,), "bias", 0.1))
            plan.append((b + "attn_k.bias", (kv_out,), "bias", 0.1))
            plan.append((b + "attn_v.bias", (kv_out,), "bias", 0.1))
        plan.append((b + "attn_output.weight", (d, q_out), "matrix", 1.0 / np.sqrt(q_out)))
        if arch.arch == "gemma2":  # sandwich norms; Gemma's (1 + w) is stored as such, like convert_hf_to_gguf
            plan.append((b + "post_attention_norm.weight", (d,), "norm", 0.0))
        plan.append((b + "ffn_norm.weight", (d,), "norm", 0.0))
        plan.append((b + "ffn_gate.weight", (d_ff, d), "matrix", 1.0 / np.sqrt(d)))
        plan.append((b + "ffn_up.weight", (d_ff, d), "matrix", 1.0 / np.sqrt(d)))
        plan.append((b + "ffn_down.weight", (d, d_ff), "matrix", 1.0 / np.sqrt(d_ff)))
        if arch.arch == "gemma2":
            plan.append((b + "post_ffw_norm.weight", (d,), "norm", 0.0))
    plan.append(("output_norm.weight", (d,), "norm", 0.0))
    if arch.rope_scaling is not None:
        plan.append(("rope_freqs.weight", (hd // 2,), "rope_freqs", 0.0))
    if not arch.tied_embeddings:
        plan.append(("output.weight", (arch.vocab_size, d), "matrix", 1.0 / np.sqrt(d)))
    return plan


def tensor_types(arch: Architecture, quant: str) -> dict[str, str]:
    """{tensor name: ggml type} of the zoo's `quant` file of `arch`: the --pure recipe for the legacy
    types (matrices in `quant`, the rest f32), llama-quantize's per-tensor recipe for the k-quant mixes."""
    plan = _tensor_plan(arch)
    if quant not in recipe.K_MIXES:
        return {name: (quant if kind == "matrix" else "f32") for name, _shape, kind, _scale in plan}
    return recipe.tensor_types([(name, tuple(reversed(shape)), "f32") for name, shape, _kind, _scale in plan],
                               quant, arch.n_layers, arch.n_heads // arch.n_kv_heads)


def tensor_bytes(arch: Architecture, quant: str) -> int:
    """The bytes of tensor data in the zoo's `quant` file of `arch` (its size less the metadata)."""
    types = tensor_types(arch, quant)
    return sum(_nbytes(shape, types[name]) for name, shape, _kind, _scale in _tensor_plan(arch))


def _nbytes(shape: tuple[int, ...], qtype: str) -> int:
    n = int(np.prod(shape))
    if qtype in _BLOCK:
        block, size = _BLOCK[qtype]
        return n // block * size
    return n * (4 if qtype == "f32" else 2)


def _encode(x: np.ndarray, qtype: str) -> np.ndarray:
    if qtype == "f32":
        return x.astype(np.float32)
    if qtype == "f16":
        return x.astype(np.float16)
    if qtype in kquants.BLOCK_BYTES:
        return kquants.quantize(x, qtype)
    return quants.quantize(x.astype(np.float32), _QTYPE[qtype]).view(np.uint8)  # bf16 comes as uint16


def _generate(index: int, seed: int, shape: tuple[int, ...], kind: str, scale: float, qtype: str) -> np.ndarray:
    """One tensor's stored bytes, deterministic in (seed, tensor index) whatever the chunking."""
    rng = np.random.default_rng([seed, index])
    if kind == "rope_freqs":
        raise AssertionError("rope_freqs is computed, not generated")
    if kind == "norm":
        return (1.0 + 0.1 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    if kind == "bias":
        return (scale * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    rows, cols = shape
    parts = []
    for r0 in range(0, rows, _CHUNK_ROWS):
        n = min(_CHUNK_ROWS, rows - r0)
        chunk = rng.standard_normal((n, cols), dtype=np.float32)
        chunk *= np.float32(scale)
        parts.append(_encode(chunk, qtype))
    return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=0)


def _tokens(vocab_size: int) -> Iterator[tuple[bytes, float, int]]:
    """A minimal SentencePiece-style vocabulary: unk/bos/eos, the 256 byte tokens if room, then fillers."""
    specials = [(b"<unk>", TokenType.UNKNOWN), (b"<s>", TokenType.CONTROL), (b"</s>", TokenType.CONTROL)]
    for i in range(vocab_size):
        if i < 3:
            text, ttype = specials[i]
        elif i < 259 and vocab_size >= 259 + 1:
            text, ttype = f"<0x{i - 3:02X}>".encode(), TokenType.BYTE
        else:
            text, ttype = f"\u2581t{i}".encode(), TokenType.NORMAL
        yield text, -float(i), int(ttype)


def _write(w_path: Path, arch: Architecture, quant: str, seed: int, name: str, plan: list) -> None:
    w = GGUFWriter(str(w_path), arch.arch)
    # llama.cpp keys tokenizer quirks on general.name (a name containing "phi-3" looks up Phi-3's special
    # tokens, which this synthetic vocabulary lacks, and the load fails): the card's name goes in
    # general.basename, general.name only says what the file is.
    w.add_name(SYNTHETIC_NAME)
    w.add_basename(name)
    w.add_file_type(int(_FILE_TYPE[quant]))
    w.add_custom_alignment(ALIGNMENT)
    w.add_quantization_version(2)
    w.add_string(RECIPE_KEY, recipe_text(quant))
    w.add_block_count(arch.n_layers)
    w.add_context_length(arch.context_length)
    w.add_embedding_length(arch.d_model)
    # openelm: arrays, one value per layer (as convert_hf_to_gguf writes OpenELM)
    w.add_feed_forward_length(list(arch.layer_d_ff) if arch.layer_d_ff else arch.d_ff)
    w.add_head_count(list(arch.layer_n_heads) if arch.layer_n_heads else arch.n_heads)
    w.add_head_count_kv(list(arch.layer_n_kv_heads) if arch.layer_n_kv_heads else arch.n_kv_heads)
    w.add_layer_norm_rms_eps(arch.rms_eps)
    w.add_rope_freq_base(arch.rope_theta)
    w.add_rope_dimension_count(arch.dim_head)
    w.add_vocab_size(arch.vocab_size)
    if arch.dim_head * arch.n_heads != arch.d_model or arch.arch == "openelm":
        w.add_key_length(arch.dim_head)
        w.add_value_length(arch.dim_head)
    w.add_tokenizer_model("llama")
    toks, scores, types = zip(*_tokens(arch.vocab_size), strict=True)
    w.add_token_list(list(toks))
    w.add_token_scores(list(scores))
    w.add_token_types(list(types))
    w.add_bos_token_id(BOS_ID)
    w.add_eos_token_id(EOS_ID)
    w.add_unk_token_id(UNK_ID)
    w.add_add_bos_token(False)
    if arch.attn_softcap is not None:
        w.add_attn_logit_softcapping(arch.attn_softcap)
    if arch.final_softcap is not None:
        w.add_final_logit_softcapping(arch.final_softcap)
    if arch.sliding_window is not None:
        w.add_sliding_window(arch.sliding_window)
    if arch.hidden_act == "relu":
        # No llama.cpp key names the FFN activation of the llama arch (its graph hard-codes SiLU), so this
        # is farm's own: the reference engine computes it, llama.cpp ignores it and runs SiLU.
        w.add_string(HIDDEN_ACT_KEY, arch.hidden_act)

    types = tensor_types(arch, quant)
    for tname, shape, _kind, _scale in plan:
        qt = types[tname]
        if qt not in ("f32", "f16"):
            byte_shape = (shape[0], _nbytes(shape, qt) // shape[0])
            w.add_tensor_info(tname, byte_shape, np.dtype(np.uint8), _nbytes(shape, qt), raw_dtype=_QTYPE[qt])
        else:
            dt = np.dtype(np.float32 if qt == "f32" else np.float16)
            w.add_tensor_info(tname, shape, dt, _nbytes(shape, qt))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    for index, (tname, shape, kind, scale) in enumerate(plan):
        if kind == "rope_freqs":
            w.write_tensor_data(np.asarray(arch.rope_freq_factors(), dtype=np.float32))
        else:
            w.write_tensor_data(_generate(index, seed, shape, kind, scale, types[tname]))
    w.close()


def write_gguf(arch: Architecture, path: Path, quant: str, seed: int = 0, name: str = "synthetic") -> Path:
    """Write a synthetic-weight GGUF v3 model of `arch` with matrices in `quant`; returns `path`.

    Norm weights and biases are f32 (as llama.cpp stores them). For the legacy types every matrix, the
    token embedding included, is in `quant` (--pure); the k-quant mixes (q4_k_m, ...) follow llama-quantize's
    per-tensor recipe (`farm.zoo.recipe`), fallbacks for odd row lengths included. Raises ConfigError for an
    unknown quant or a row length that is not a multiple of the 32-element block of the legacy q types.
    """
    if quant not in QUANTS:
        raise ConfigError(f"unknown quant {quant!r}; choose one of {', '.join(QUANTS)}")
    if quant in _BLOCK and quant not in recipe.K_MIXES:
        shapes = [arch.layer_shape(i) for i in range(arch.n_layers)]
        for width in {arch.d_model} | {ff for _, _, ff in shapes} | {nh * arch.dim_head for nh, _, _ in shapes}:
            if width % 32:
                raise ConfigError(f"{quant} needs row lengths divisible by 32, got {width}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # unique temp name + rename: concurrent writers of one path never see or leave a half-written file
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    plan = _tensor_plan(arch)

    try:
        _write(w_path=tmp, arch=arch, quant=quant, seed=seed, name=name, plan=plan)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(path)
    return path


def _field(reader: GGUFReader, key: str, default: object = None) -> object:
    f = reader.get_field(key)
    if f is None:
        return default
    return f.contents()


def read_arch(path: Path) -> Architecture:
    """The `Architecture` recorded in a GGUF file's metadata (llama.cpp keys)."""
    try:
        r = GGUFReader(str(path))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: not a readable GGUF file ({exc})") from exc
    a = str(_field(r, "general.architecture"))
    if a not in ("llama", "qwen2", "gemma2", "openelm"):
        raise ConfigError(f"{path}: unsupported architecture {a!r} (llama, qwen2, gemma2, openelm)")
    names = {t.name for t in r.tensors}
    emb = next(t for t in r.tensors if t.name == "token_embd.weight")
    d_model = int(_field(r, f"{a}.embedding_length"))
    per_layer = _per_layer(r, a)
    n_heads, n_kv_heads, d_ff = (round(sum(x) / len(x)) for x in per_layer)  # uniform (the means for openelm)
    key_len = _field(r, f"{a}.attention.key_length")
    head_dim = int(key_len) if key_len is not None and (int(key_len) * n_heads != d_model or a == "openelm") else None
    # llama.cpp takes the rotation from the architecture name (llama: pairwise, qwen2: neox), so do we;
    # a card's rope_style that disagrees with its arch has no effect on the file.
    style = "neox" if a in ("qwen2", "gemma2", "openelm") else "norm"

    def opt(key: str, kind: type) -> object:
        value = _field(r, f"{a}.{key}")
        return None if value is None else kind(f"{float(value):.7g}") if kind is float else kind(value)

    return Architecture(
        arch=a,  # type: ignore[arg-type]
        n_layers=int(_field(r, f"{a}.block_count")),
        d_model=d_model,
        n_heads=n_heads,
        n_kv_heads=n_kv_heads,
        d_ff=d_ff,
        vocab_size=int(emb.shape[1]),
        head_dim=head_dim,
        context_length=int(_field(r, f"{a}.context_length", 2048)),
        rope_theta=float(f"{float(_field(r, f'{a}.rope.freq_base', 10000.0)):.7g}"),
        rope_style=style,  # type: ignore[arg-type]
        # Stored as f32: print at f32 precision so 1e-6 reads back as 1e-6, not 9.99999997e-07.
        rms_eps=float(f"{float(_field(r, f'{a}.attention.layer_norm_rms_epsilon', 1e-5)):.7g}"),
        tied_embeddings="output.weight" not in names,
        qkv_bias="blk.0.attn_q.bias" in names,
        hidden_act="gelu_tanh" if a == "gemma2" else str(_field(r, HIDDEN_ACT_KEY, "silu")),  # type: ignore[arg-type]
        attn_softcap=opt("attn_logit_softcapping", float),
        final_softcap=opt("final_logit_softcapping", float),
        sliding_window=opt("attention.sliding_window", int),
        **({"layer_n_heads": per_layer[0], "layer_n_kv_heads": per_layer[1], "layer_d_ff": per_layer[2]}
           if a == "openelm" else {}),
    )


def _per_layer(r: GGUFReader, a: str) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Query heads, KV heads and d_ff of every layer (a scalar key: the same for all layers)."""
    n = int(_field(r, f"{a}.block_count"))

    def values(key: str, default: object = None) -> tuple[int, ...]:
        v = _field(r, f"{a}.{key}", default)
        return tuple(int(x) for x in v) if isinstance(v, list) else (int(v),) * n  # type: ignore[arg-type]

    heads = values("attention.head_count")
    return heads, values("attention.head_count_kv", list(heads)), values("feed_forward_length")
