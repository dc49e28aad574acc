"""Which ggml type each tensor gets: llama-quantize's per-tensor recipe for the k-quant file types.

A port of ``llama_tensor_get_type`` (src/llama-quant.cpp) of the llama.cpp farm builds (the copy vendored in
llama-cpp-python 0.3.36, `farm.backends.llamacpp_build.LLAMA_CPP_PYTHON_VERSION`), without an importance
matrix, for dense llama-family models (no experts, not Falcon, not the 70B special case):

- ``output.weight``, or ``token_embd.weight`` when the embedding is tied, is q6_K (q8_0 when its rows are
  not a multiple of the base type's block);
- attn_v and ffn_down take more bits in some layers (``use_more_bits``), attn_output in the q2/q3 mixes;
- a row length that is not a multiple of 256 falls back (``tensor_type_fallback``): q2_K/q3_K -> q4_0,
  q4_K -> q5_0, q5_K -> q5_1, q6_K -> q8_0, and f16 when even 32 does not divide it.

Tensors are visited in llama-quantize's order (``weight_name_comparer``: by layer, then name), which is the
order its attn_v / ffn_down counters run in. The legacy file types (q4_0, q8_0, ...) are written by the zoo
with the --pure recipe instead (every matrix in the one type), as before.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from farm.backends.llamacpp_build import LLAMA_CPP_PYTHON_VERSION

RECIPE_NAME = (f"llama-quantize's per-tensor recipe (llama.cpp of llama-cpp-python {LLAMA_CPP_PYTHON_VERSION}, "
               "no imatrix)")

# llama_ftype_get_default_type for the k-quant file types farm names.
DEFAULT_TYPE: dict[str, str] = {
    "q2_k": "q2_k", "q3_k_s": "q3_k", "q3_k_m": "q3_k", "q3_k_l": "q3_k", "q4_k_s": "q4_k", "q4_k_m": "q4_k",
    "q5_k_s": "q5_k", "q5_k_m": "q5_k", "q6_k": "q6_k",
}
K_MIXES: tuple[str, ...] = tuple(DEFAULT_TYPE)

_BLOCK = {"q2_k": 256, "q3_k": 256, "q4_k": 256, "q5_k": 256, "q6_k": 256, "q4_0": 32, "q4_1": 32, "q5_0": 32,
          "q5_1": 32, "q8_0": 32, "f16": 1, "f32": 1}
# tensor_type_fallback
_FALLBACK = {"q2_k": "q4_0", "q3_k": "q4_0", "q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0"}


def use_more_bits(i_layer: int, n_layers: int) -> bool:
    """llama-quant.cpp's use_more_bits: the first and last eighth of the layers, and every third between."""
    return i_layer < n_layers // 8 or i_layer >= 7 * n_layers // 8 or (i_layer - n_layers // 8) % 3 == 2


def _category(name: str) -> str:
    """tensor_get_category (the roles a dense llama-family model has)."""
    if name == "output.weight":
        return "output"
    if name in ("token_embd.weight", "per_layer_token_embd.weight"):
        return "token_embd"
    for role in ("attn_qkv.weight", "attn_kv_b.weight", "attn_v.weight", "attn_k.weight", "attn_q.weight",
                 "attn_output.weight", "ffn_up", "ffn_gate", "ffn_down"):
        if role in name:
            return role.removesuffix(".weight")
    return "other"


def _quantizable(name: str, n_dims: int) -> bool:
    """tensor_allows_quantization: matrices named *weight, not norms (the checks a dense model reaches)."""
    return n_dims >= 2 and name.endswith("weight") and "_norm.weight" not in name


def _order(name: str) -> tuple[int, str]:
    """weight_name_comparer: layer number first (-1 outside blocks), then the name."""
    m = re.match(r"blk\.(\d+)\.", name)
    return (int(m.group(1)) if m else -1, name)


def _fallback(new_type: str, ncols: int) -> str:
    """tensor_type_fallback."""
    if ncols % _BLOCK[new_type] == 0:
        return new_type
    back = _FALLBACK.get(new_type, new_type)
    return back if ncols % _BLOCK[back] == 0 else "f16"


def tensor_types(tensors: Iterable[tuple[str, tuple[int, ...], str]], ftype: str, n_layer: int,
                 n_gqa: int) -> dict[str, str]:
    """{tensor name: ggml type} under llama-quantize's recipe for `ftype` (one of K_MIXES).

    `tensors` are (name, ggml shape with the row length first, source type); tensors llama-quantize does
    not quantize keep their source type. `n_layer` is the block count, `n_gqa` n_head / n_head_kv.
    """
    if ftype not in DEFAULT_TYPE:
        raise ValueError(f"no llama-quantize recipe here for {ftype!r} (k-quant mixes: {', '.join(K_MIXES)})")
    default = DEFAULT_TYPE[ftype]
    items = sorted(tensors, key=lambda t: _order(t[0]))
    cats = {name: _category(name) for name, _, _ in items}
    n_wv = sum(1 for c in cats.values() if c in ("attn_v", "attn_qkv", "attn_kv_b"))
    tied = "output" not in cats.values()
    i_wv = i_down = 0
    out: dict[str, str] = {}
    for name, shape, source in items:
        n_dims = max((i + 1 for i, d in enumerate(shape) if d > 1), default=1)  # ggml_n_dims
        if not _quantizable(name, n_dims):
            out[name] = source
            continue
        cat, t = cats[name], default
        if cat == "output" or (tied and cat == "token_embd"):
            t = "q8_0" if shape[0] % _BLOCK[default] else "q6_k"  # default is never q8_0 here
        elif cat in ("attn_v", "attn_qkv", "attn_kv_b"):
            if ftype == "q2_k":
                t = "q4_k" if n_gqa >= 4 else "q3_k"
            elif ftype == "q3_k_m":
                t = "q5_k" if i_wv < 2 else "q4_k"
            elif ftype == "q3_k_l":
                t = "q5_k"
            elif ftype in ("q4_k_m", "q5_k_m") and use_more_bits(i_wv, n_wv):
                t = "q6_k"
            elif ftype == "q4_k_s" and i_wv < 4:
                t = "q5_k"
            i_wv += 1
        elif cat == "ffn_down":
            i_layer = i_down
            if ftype == "q2_k":
                t = "q3_k"
            elif ftype == "q3_k_m":
                t = "q5_k" if i_layer < n_layer // 16 else "q4_k"  # (q3_K only for Falcon)
            elif ftype == "q3_k_l":
                t = "q5_k"
            elif ftype == "q4_k_m":
                if use_more_bits(i_layer, n_layer):
                    t = "q6_k"
            elif ftype == "q5_k_m" and use_more_bits(i_layer, n_layer):
                t = "q6_k"
            elif ftype == "q4_k_s" and i_layer < n_layer // 8:
                t = "q5_k"
            i_down += 1
        elif cat == "attn_output":
            t = {"q2_k": "q3_k", "q3_k_m": "q4_k", "q3_k_l": "q5_k"}.get(ftype, t)
        out[name] = _fallback(t, shape[0])
    return out
