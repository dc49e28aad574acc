"""The architecture of a decoder-only transformer, as the zoo, the planner and the engine see it.

This is the shape of a model, not its weights: enough to write a synthetic-weight GGUF with the
real tensor shapes, to estimate memory (weights + KV cache) and to vary a design in a sweep.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# The quants the zoo writes: the legacy types with llama-quantize's --pure recipe (every matrix, the
# embedding included, in that type; norms and biases f32), the k-quant mixes with llama-quantize's per-tensor
# recipe (farm.zoo.recipe) and ggml's reference k-quantizers (farm.zoo.kquants).
QUANTS: tuple[str, ...] = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_s", "q3_k_m",
                           "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k")

# Bytes per weight of each GGML type (block bytes / block elements, ggml-common.h): q8_0 = 32 int8 + f16
# scale (34 B / 32), q4_0 = 32 nibbles + f16 scale (18 B / 32), q4_K = 144 B / 256, ...
BYTES_PER_WEIGHT: dict[str, float] = {
    "f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_1": 20 / 32, "q5_0": 22 / 32,
    "q5_1": 24 / 32, "q2_k": 84 / 256, "q3_k": 110 / 256, "q4_k": 144 / 256, "q5_k": 176 / 256, "q6_k": 210 / 256,
}


class RopeScaling(BaseModel):
    """Hugging Face rope_scaling of type llama3 (Llama 3.1/3.2): per-frequency divisors of RoPE's angles.
    In GGUF it is the tensor rope_freqs.weight (convert_hf_to_gguf computes it; `rope_freq_factors`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    rope_type: Literal["llama3"] = "llama3"
    factor: float = Field(gt=0)
    low_freq_factor: float = Field(gt=0)
    high_freq_factor: float = Field(gt=0)
    original_max_position_embeddings: int = Field(gt=0)


class Architecture(BaseModel):
    """Shape of a llama-family decoder. Field names follow Hugging Face config.json where one exists."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # GGUF general.architecture; qwen2 = llama + q/k/v bias; gemma2 = Gemma-2, openelm = OpenELM (fields below)
    arch: Literal["llama", "qwen2", "gemma2", "openelm"] = "llama"
    n_layers: int = Field(gt=0)
    d_model: int = Field(gt=0)  # hidden_size
    n_heads: int = Field(gt=0)
    n_kv_heads: int = Field(gt=0)
    d_ff: int = Field(gt=0)  # intermediate_size
    vocab_size: int = Field(gt=0)
    head_dim: int | None = None  # defaults to d_model // n_heads
    context_length: int = Field(default=2048, gt=0)
    rope_theta: float = 10000.0
    rope_style: Literal["norm", "neox"] = "norm"  # llama pairwise vs neox half-split
    rms_eps: float = 1e-5
    tied_embeddings: bool = False
    qkv_bias: bool = False
    rope_scaling: RopeScaling | None = None
    # The gated FFN's activation (Hugging Face hidden_act): act(W_gate x) * W_up x. llama.cpp's llama arch
    # knows only SiLU; a relu file carries farm.hidden_act, which the reference engine reads (writer.py).
    hidden_act: Literal["silu", "relu", "gelu_tanh"] = "silu"
    # Gemma-2 (arch gemma2 only): tanh soft-capping of attention scores and of the final logits, and the
    # window of the sliding-window layers (even layers; llama.cpp's swa pattern 2).
    attn_softcap: float | None = Field(default=None, gt=0)
    final_softcap: float | None = Field(default=None, gt=0)
    sliding_window: int | None = Field(default=None, gt=0)
    # OpenELM (arch openelm only, all three): per-layer query heads, KV heads and FFN widths (layer-wise
    # scaling). n_heads, n_kv_heads and d_ff then hold the rounded means, the uniform equivalent.
    layer_n_heads: tuple[int, ...] | None = None
    layer_n_kv_heads: tuple[int, ...] | None = None
    layer_d_ff: tuple[int, ...] | None = None

    @model_validator(mode="after")
    def _check(self) -> Architecture:
        if self.arch == "openelm":
            return self._check_openelm()
        if self.layer_n_heads or self.layer_n_kv_heads or self.layer_d_ff:
            raise ValueError("per-layer shapes (layer_n_heads, layer_n_kv_heads, layer_d_ff) are openelm fields")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(f"d_model {self.d_model} is not divisible by n_heads {self.n_heads}")
        if self.dim_head % 2:
            raise ValueError(f"head_dim {self.dim_head} must be even for RoPE")
        gemma = self.arch == "gemma2"
        if gemma != (self.hidden_act == "gelu_tanh"):
            raise ValueError("hidden_act gelu_tanh goes with arch gemma2 (and gemma2 with it)")
        if gemma and not (self.tied_embeddings and self.rope_style == "neox" and not self.qkv_bias):
            raise ValueError("gemma2 has tied embeddings, neox RoPE and no q/k/v bias")
        if not gemma and (self.attn_softcap or self.final_softcap or self.sliding_window):
            raise ValueError("attn_softcap, final_softcap and sliding_window are gemma2 fields")
        return self

    def _check_openelm(self) -> Architecture:
        lists = (self.layer_n_heads, self.layer_n_kv_heads, self.layer_d_ff)
        if any(x is None or len(x) != self.n_layers for x in lists):
            raise ValueError("openelm needs layer_n_heads, layer_n_kv_heads and layer_d_ff, one value per layer")
        if self.head_dim is None or self.head_dim % 2:
            raise ValueError("openelm needs an even head_dim")
        if not self.tied_embeddings or self.qkv_bias or self.rope_style != "neox" or self.hidden_act != "silu":
            raise ValueError("openelm has tied embeddings, no q/k/v bias, neox RoPE and a SiLU-gated FFN")
        for layer, (q, kv, ff) in enumerate(zip(*lists, strict=True)):  # type: ignore[call-overload]
            if min(q, kv, ff) <= 0 or q % kv:
                raise ValueError(f"layer {layer}: {q} query heads, {kv} KV heads, d_ff {ff}")
        uniform = tuple(round(sum(x) / self.n_layers) for x in lists)  # type: ignore[arg-type]
        if (self.n_heads, self.n_kv_heads, self.d_ff) != uniform:
            raise ValueError(f"openelm's n_heads, n_kv_heads, d_ff are the per-layer means {uniform}")
        return self

    def layer_shape(self, layer: int) -> tuple[int, int, int]:
        """(query heads, KV heads, d_ff) of one layer: the per-layer values of openelm, else the uniform ones."""
        if self.layer_n_heads and self.layer_n_kv_heads and self.layer_d_ff:
            return self.layer_n_heads[layer], self.layer_n_kv_heads[layer], self.layer_d_ff[layer]
        return self.n_heads, self.n_kv_heads, self.d_ff

    @property
    def dim_head(self) -> int:
        return self.head_dim if self.head_dim is not None else self.d_model // self.n_heads

    def rope_freq_factors(self) -> list[float] | None:
        """rope_freqs.weight as convert_hf_to_gguf writes it for llama3 rope scaling (None without scaling)."""
        import math

        rs = self.rope_scaling
        if rs is None:
            return None
        dim = self.dim_head
        low_wavelen = rs.original_max_position_embeddings / rs.low_freq_factor
        high_wavelen = rs.original_max_position_embeddings / rs.high_freq_factor
        out = []
        for i in range(0, dim, 2):
            freq = 1.0 / (self.rope_theta ** (i / dim))
            wavelen = 2 * math.pi / freq
            if wavelen < high_wavelen:
                out.append(1.0)
            elif wavelen > low_wavelen:
                out.append(rs.factor)
            else:
                smooth = (rs.original_max_position_embeddings / wavelen - rs.low_freq_factor) / (
                    rs.high_freq_factor - rs.low_freq_factor)
                out.append(1 / ((1 - smooth) / rs.factor + smooth))
        return out

    def n_params(self) -> int:
        """Parameter count (embeddings included once when tied)."""
        hd, d = self.dim_head, self.d_model
        total = 0
        for layer in range(self.n_layers):
            nh, nkv, ff = self.layer_shape(layer)
            q = d * nh * hd
            kv = 2 * d * nkv * hd
            o = nh * hd * d
            bias = (nh + 2 * nkv) * hd if self.qkv_bias else 0
            mlp = 3 * d * ff
            norms = (4 if self.arch == "gemma2" else 2) * d  # gemma2: + post-attention/-FFN norms
            qk_norms = 2 * hd if self.arch == "openelm" else 0
            total += q + kv + o + bias + mlp + norms + qk_norms
        emb = self.vocab_size * d
        out = 0 if self.tied_embeddings else self.vocab_size * d
        freqs = self.dim_head // 2 if self.rope_scaling else 0  # rope_freqs.weight
        return total + emb + out + d + freqs

    def weight_bytes(self, quant: str) -> int:
        """Tensor bytes of the zoo's `quant` file: each tensor in the type its recipe gives it (--pure for the
        legacy types; llama-quantize's per-tensor recipe for the k-quant mixes, fallbacks included)."""
        from farm.zoo.writer import tensor_bytes

        return tensor_bytes(self, quant)

    def kv_cache_bytes(self, n_ctx: int, kv_type: str = "f16") -> int:
        """KV cache for `n_ctx` tokens: 2 (K and V) x layers x kv heads x head_dim x bytes."""
        elt = 4 if kv_type == "f32" else 2
        kv_heads = sum(self.layer_shape(layer)[1] for layer in range(self.n_layers))
        return 2 * kv_heads * self.dim_head * n_ctx * elt
