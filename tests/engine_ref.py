"""Numpy reference of the reference engine's forward pass, for the engine tests.

Independent of the C code: it reads the GGUF with `gguf.GGUFReader`, dequantizes with `gguf.quants`
and follows llama.cpp's graph (RMSNorm, RoPE norm/neox by architecture name, GQA attention, SwiGLU (or
ReLU-gated as farm.hidden_act says), tied or separate output, qwen2 q/k/v bias, gemma2, openelm). Two optional
emulations make the comparison tight:

- ``quantize_acts``: activations entering a q8_0/q4_0 matmul are rounded through q8_0 blocks exactly as
  the engine does (d = amax/127 stored as f16, q = round-half-even(x / d)). The integer dot of the engine
  then equals float64 ``dequant(x) . dequant(w)`` up to summation order.
- ``kv_f16``: K and V are rounded to f16 when stored, as in the engine's f16 KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, quants

_QUANT_TYPES = (GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q4_0)


def q8_0_roundtrip(x: np.ndarray) -> np.ndarray:
    """x rounded through q8_0 blocks of 32 with the engine's exact float32 arithmetic."""
    xb = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, 32)
    amax = np.abs(xb).max(axis=1, keepdims=True)
    d = amax / np.float32(127.0)
    with np.errstate(divide="ignore"):
        inv = np.where(d != 0, np.float32(1.0) / d, np.float32(0.0)).astype(np.float32)
    q = np.rint(xb * inv)  # numpy rint = round half to even, like lrintf / cvtps / vcvtnq
    d16 = d.astype(np.float16).astype(np.float32)
    return (q * d16).astype(np.float32).reshape(x.shape)


@dataclass
class _Matrix:
    w: np.ndarray  # float32 [n_out, n_in], exact dequantized values
    quantized: bool


class RefModel:
    """A GGUF model loaded into float32 numpy arrays."""

    def __init__(self, path: Path) -> None:
        r = GGUFReader(str(path))
        self.arch = str(r.get_field("general.architecture").contents())
        a = self.arch

        def meta(key: str, default: float | None = None) -> float:
            f = r.get_field(f"{a}.{key}")
            if f is None:
                assert default is not None, key
                return default
            return f.contents()

        self.n_layers = int(meta("block_count"))
        self.d_model = int(meta("embedding_length"))
        def per_layer(value: object) -> list[int]:  # openelm: one value per layer; others: one for all
            return [int(x) for x in value] if isinstance(value, list) else [int(value)] * self.n_layers

        self.n_heads = per_layer(meta("attention.head_count"))
        self.n_kv_heads = per_layer(meta("attention.head_count_kv", self.n_heads))
        self.d_ff = per_layer(meta("feed_forward_length"))
        self.head_dim = int(meta("attention.key_length", self.d_model // self.n_heads[0]))
        self.rope_theta = float(meta("rope.freq_base", 10000.0))
        self.eps = float(np.float32(meta("attention.layer_norm_rms_epsilon", 1e-5)))
        self.neox = a in ("qwen2", "gemma2", "openelm")  # llama.cpp: rope type from the architecture name
        act = r.get_field("farm.hidden_act")  # farm's key: ReLU-gated FFN (PhoneLM); absent means SiLU
        self.hidden_act = str(act.contents()) if act is not None else "silu"
        self.gemma2 = a == "gemma2"
        if self.gemma2:  # llama.cpp's gemma2 graph: GeGLU, soft-capping, sliding window on even layers
            self.hidden_act = "gelu_tanh"
            self.attn_softcap = float(meta("attn_logit_softcapping", 50.0))
            self.final_softcap = float(meta("final_logit_softcapping", 30.0))
            self.n_swa = int(meta("attention.sliding_window", 4096))
        self.t: dict[str, np.ndarray] = {}
        self.quantized: dict[str, bool] = {}
        for t in r.tensors:
            arr = quants.dequantize(t.data, t.tensor_type).astype(np.float32)
            n_in = int(t.shape[0])
            self.t[t.name] = arr.reshape(-1, n_in) if len(t.shape) > 1 else arr.reshape(-1)
            self.quantized[t.name] = t.tensor_type in _QUANT_TYPES
        self.vocab = self.t["token_embd.weight"].shape[0]

    def mat(self, name: str) -> _Matrix:
        return _Matrix(self.t[name], self.quantized[name])


def _matmul(x: np.ndarray, m: _Matrix, quantize_acts: bool) -> np.ndarray:
    if m.quantized and quantize_acts:
        x = q8_0_roundtrip(x)
    return (x.astype(np.float64) @ m.w.T.astype(np.float64)).astype(np.float32)


def _rmsnorm(x: np.ndarray, w: np.ndarray, eps: float) -> np.ndarray:
    ms = (x.astype(np.float64) ** 2).mean(axis=-1, keepdims=True)
    scale = (1.0 / np.sqrt(ms + eps)).astype(np.float32)
    return (x * scale * w).astype(np.float32)


def _rope(x: np.ndarray, pos: np.ndarray, theta: float, neox: bool, freqs: np.ndarray | None = None) -> np.ndarray:
    """x: [n_tok, n_heads, hd]. llama (NORM) rotates pairs (2i, 2i+1); NEOX rotates (i, i + hd/2).
    `freqs` (rope_freqs.weight, llama3 rope scaling) divides each angle, as llama.cpp's freq_factors do."""
    hd = x.shape[-1]
    half = hd // 2
    ang = pos[:, None].astype(np.float64) * theta ** (-2.0 * np.arange(half) / hd)
    if freqs is not None:
        ang = ang / freqs.astype(np.float64)
    cos = np.cos(ang).astype(np.float32)[:, None, :]
    sin = np.sin(ang).astype(np.float32)[:, None, :]
    out = x.copy()
    if neox:
        a, b = x[..., :half], x[..., half:]
        out[..., :half] = a * cos - b * sin
        out[..., half:] = a * sin + b * cos
    else:
        a, b = x[..., 0::2], x[..., 1::2]
        out[..., 0::2] = a * cos - b * sin
        out[..., 1::2] = a * sin + b * cos
    return out


def _gate(g: np.ndarray, hidden_act: str, gelu_f16: bool = False) -> np.ndarray:
    if hidden_act == "relu":
        return np.maximum(g, np.float32(0.0))
    if hidden_act == "gelu_tanh" and gelu_f16:  # ggml's GGML_GELU_FP16 table: f16 in, f16 out, |x| >= 10 exact
        y = _gate(g.astype(np.float16).astype(np.float32), hidden_act).astype(np.float16).astype(np.float32)
        return np.where(g <= -10, np.float32(0.0), np.where(g >= 10, g, y)).astype(np.float32)
    if hidden_act == "gelu_tanh":
        g64 = g.astype(np.float64)
        return (0.5 * g64 * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (g64 + 0.044715 * g64**3)))).astype(np.float32)
    assert hidden_act == "silu", hidden_act
    return (g / (1.0 + np.exp(-g.astype(np.float64)))).astype(np.float32)


def forward(model: RefModel, tokens: list[int], quantize_acts: bool = True, kv_f16: bool = True,
            gelu_f16: bool = False) -> np.ndarray:
    """Logits [n_tokens, vocab] after processing `tokens` from position 0. `gelu_f16`: GELU as llama.cpp's
    CPU backend computes it (a lookup at f16 precision) instead of the exact tanh formula the engine uses."""
    m = model
    n = len(tokens)
    hd = m.head_dim
    x = m.t["token_embd.weight"][np.asarray(tokens)].astype(np.float32)
    if m.gemma2:
        x = (x * np.float32(np.sqrt(m.d_model))).astype(np.float32)
    pos = np.arange(n)
    mask = np.triu(np.full((n, n), -np.inf), k=1)
    # gemma2's sliding-window layers also hide keys n_swa or more positions back
    swa_mask = mask + np.tril(np.full((n, n), -np.inf), k=-m.n_swa) if m.gemma2 else mask
    for layer in range(m.n_layers):
        p = f"blk.{layer}."
        nh, nkv = m.n_heads[layer], m.n_kv_heads[layer]
        h = _rmsnorm(x, m.t[p + "attn_norm.weight"], m.eps)
        if p + "attn_qkv.weight" in m.t:  # openelm: fused, q heads then k then v
            qkv = _matmul(h, m.mat(p + "attn_qkv.weight"), quantize_acts)
            q, k, v = np.split(qkv, [nh * hd, (nh + nkv) * hd], axis=1)
        else:
            q = _matmul(h, m.mat(p + "attn_q.weight"), quantize_acts)
            k = _matmul(h, m.mat(p + "attn_k.weight"), quantize_acts)
            v = _matmul(h, m.mat(p + "attn_v.weight"), quantize_acts)
        if p + "attn_q.bias" in m.t:
            q, k, v = q + m.t[p + "attn_q.bias"], k + m.t[p + "attn_k.bias"], v + m.t[p + "attn_v.bias"]
        q, k = q.reshape(n, nh, hd), k.reshape(n, nkv, hd)
        if p + "attn_q_norm.weight" in m.t:  # openelm: RMSNorm of each head
            q = _rmsnorm(q, m.t[p + "attn_q_norm.weight"], m.eps)
            k = _rmsnorm(k, m.t[p + "attn_k_norm.weight"], m.eps)
        freqs = m.t.get("rope_freqs.weight")
        q = _rope(q, pos, m.rope_theta, m.neox, freqs)
        k = _rope(k, pos, m.rope_theta, m.neox, freqs)
        v = v.reshape(n, nkv, hd)
        if kv_f16:
            k = k.astype(np.float16).astype(np.float32)
            v = v.astype(np.float16).astype(np.float32)
        k = np.repeat(k, nh // nkv, axis=1)  # GQA: query head h reads kv head h // group
        v = np.repeat(v, nh // nkv, axis=1)
        s = np.einsum("thd,shd->hts", q.astype(np.float64), k.astype(np.float64)) / np.sqrt(hd)
        if m.gemma2:
            s = m.attn_softcap * np.tanh(s / m.attn_softcap)
        s = s + (swa_mask if m.gemma2 and layer % 2 == 0 else mask)
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        s /= s.sum(axis=-1, keepdims=True)
        att = np.einsum("hts,shd->thd", s, v.astype(np.float64)).reshape(n, nh * hd).astype(np.float32)
        x = x + _post(m, p + "post_attention_norm.weight", _matmul(att, m.mat(p + "attn_output.weight"), quantize_acts))
        h = _rmsnorm(x, m.t[p + "ffn_norm.weight"], m.eps)
        g = _matmul(h, m.mat(p + "ffn_gate.weight"), quantize_acts)
        u = _matmul(h, m.mat(p + "ffn_up.weight"), quantize_acts)
        act = _gate(g, m.hidden_act, gelu_f16) * u
        x = x + _post(m, p + "post_ffw_norm.weight", _matmul(act, m.mat(p + "ffn_down.weight"), quantize_acts))
    h = _rmsnorm(x, m.t["output_norm.weight"], m.eps)
    out = m.mat("output.weight") if "output.weight" in m.t else m.mat("token_embd.weight")
    logits = _matmul(h, out, quantize_acts)
    if m.gemma2:
        logits = (m.final_softcap * np.tanh(logits.astype(np.float64) / m.final_softcap)).astype(np.float32)
    return logits


def _post(m: RefModel, name: str, y: np.ndarray) -> np.ndarray:
    """gemma2's sandwich norm of a sub-layer's output before the residual add; other archs have none."""
    return _rmsnorm(y, m.t[name], m.eps) if name in m.t else y


# ---- helpers shared by the engine tests --------------------------------------------------------------

TOKENS = [5, 17, 99, 3, 250, 42, 7, 8, 200, 31, 64, 1, 2, 300, 11, 12, 13, 14, 15, 16, 100, 101, 102, 103, 104,
          105, 106, 107, 108, 109, 110, 111, 112, 113, 114, 115, 119]  # 37: crosses a 32-token GEMM tile, odd


def tiny_arch(arch: str):  # -> Architecture
    """2 layers, d_model 128, 4 heads / 2 KV heads (GQA, head_dim 32), d_ff 256, vocab 320.

    llama: separate output matrix, pairwise RoPE; qwen2: tied embeddings, q/k/v bias, neox RoPE.
    """
    from farm.zoo.arch import Architecture

    qwen = arch == "qwen2"
    return Architecture(arch=arch, n_layers=2, d_model=128, n_heads=4, n_kv_heads=2, d_ff=256, vocab_size=320,
                        rope_theta=1e6 if qwen else 1e4, rope_style="neox" if qwen else "norm",
                        rms_eps=1e-6 if qwen else 1e-5, tied_embeddings=qwen, qkv_bias=qwen)


def run_logits(exe: Path | list[str], model: Path, tokens: list[int], *extra: str) -> np.ndarray:
    """The engine's logits (last token, or [n, vocab] with --all) as float32."""
    import json
    import subprocess

    cmd = [*(exe if isinstance(exe, list) else [str(exe)]), "logits", "-m", str(model), "--tokens",
           ",".join(map(str, tokens)), *extra]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    return np.asarray(out["logits"], dtype=np.float32)


# ---- k-quant models (gguf-py has a k-quant dequantizer but no quantizer) ---------------------------------

# type -> (block bytes, f16 fields (byte offset, value before scaling), int8 scales (offset, count) or None).
# q4_K/q5_K: d, and dmin at ~E[q] * d so the mins cancel the mean; q6_K: d, its int8 scales kept small so d
# stays a normal f16 after scaling.
_KQUANT = {
    "q4_K": (144, ((0, 1.0), (2, 7.5)), None),
    "q5_K": (176, ((0, 1.0), (2, 15.5)), None),
    "q6_K": (210, ((208, 1.0),), (192, 16)),
}


def kquant_arch(arch: str):  # -> Architecture
    """tiny_arch with every row length a multiple of 256 (the k-quant block): d_model 256, d_ff 512."""
    return tiny_arch(arch).model_copy(update={"d_model": 256, "d_ff": 512})


def write_kquant_gguf(arch, path: Path, quant: str, seed: int) -> Path:
    """`arch`'s model with every matrix in `quant` (q4_K | q5_K | q6_K): random quant bits and sub-block scales,
    one f16 block scale per tensor chosen so its values have the zoo writer's std (1/sqrt(n_in)). Any bytes are
    a valid k-quant block, so this exercises every bit of the kernels; metadata and norms come from the writer."""
    from gguf import GGUFValueType, GGUFWriter

    from farm.zoo.writer import write_gguf

    nbytes, f16s, i8 = _KQUANT[quant]
    qtype = GGMLQuantizationType[quant.upper()]
    base = write_gguf(arch, path.with_name(path.stem + ".f16.gguf"), "f16", seed=seed)
    reader = GGUFReader(str(base))
    w = GGUFWriter(str(path), arch.arch)
    for f in reader.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        sub = f.types[-1] if f.types[0] == GGUFValueType.ARRAY else None
        w.add_key_value(f.name, f.contents(), f.types[0], sub_type=sub)
    rng = np.random.default_rng(seed)
    for t in reader.tensors:
        shape = tuple(reversed(t.shape.tolist()))
        if len(shape) < 2 or min(shape) == 1:
            w.add_tensor(t.name, np.asarray(t.data, dtype=np.float32).reshape(shape))
            continue
        rows, cols = shape
        nb = cols // 256
        raw = rng.integers(0, 256, (rows, nb, nbytes), dtype=np.uint8)
        if i8 is not None:
            raw[..., i8[0]:i8[0] + i8[1]] = rng.integers(-32, 32, (rows, nb, i8[1])).astype(np.int8).view(np.uint8)
        factor = 1.0
        for _ in range(2):  # unit block scales, then the factor that gives the target std
            for off, v in f16s:
                raw[..., off:off + 2] = np.full((rows, nb, 1), v * factor, np.float16).view(np.uint8)
            factor = 1.0 / np.sqrt(cols) / float(quants.dequantize(raw.reshape(rows, -1), qtype).std())
        w.add_tensor(t.name, raw.reshape(rows, -1), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    base.unlink()
    return path
