"""Re-encode a real GGUF's weights in another type: the f32 reference, the legacy types and the k-quant mixes.

`requantize` keeps every metadata key and the tokenizer, dequantizes each tensor (gguf.quants) and writes
its matrices in `quant` with the zoo's recipes: llama-quantize's --pure recipe for the legacy types (every
matrix in the one type, norms f32), llama-quantize's per-tensor recipe (`farm.zoo.recipe`) with ggml's
reference k-quantizers (`farm.zoo.kquants`) for the k-quant mixes (q4_k_m, ...).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import numpy as np

from farm.errors import ConfigError
from farm.zoo import kquants, recipe

PURE = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")


def _encode(x: np.ndarray, qtype: str) -> tuple[np.ndarray, object]:
    """(data, raw_dtype) for GGUFWriter.add_tensor: `x` (rows, row length) float32 stored as `qtype`."""
    from gguf import GGMLQuantizationType, quants

    if qtype == "f32":
        return x, None
    if qtype == "f16":
        return x.astype(np.float16), None
    gtype = GGMLQuantizationType[qtype.upper()]
    if qtype in kquants.BLOCK_BYTES:
        return kquants.quantize(x, qtype), gtype
    return quants.quantize(x, gtype), gtype


def requantize(src: str | Path, dst: str | Path, quant: str) -> Path:
    """Write `src` to `dst` in `quant`: one of PURE (every matrix in it, vectors in f32) or a k-quant mix of
    recipe.K_MIXES (llama-quantize's per-tensor types)."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter, LlamaFileType, quants

    if quant not in PURE and quant not in recipe.K_MIXES:
        raise ConfigError(f"requantize writes {', '.join(PURE + recipe.K_MIXES)}, not {quant!r}")
    reader = GGUFReader(str(src))
    arch = str(reader.get_field("general.architecture").contents())

    def field(key: str) -> int:
        return int(reader.get_field(f"{arch}.{key}").contents())

    mixed: dict[str, str] = {}
    if quant in recipe.K_MIXES:
        kv = reader.get_field(f"{arch}.attention.head_count_kv")
        n_head = field("attention.head_count")
        n_gqa = n_head // (int(kv.contents()) if kv is not None else n_head)
        mixed = recipe.tensor_types([(t.name, tuple(int(d) for d in t.shape), "f32") for t in reader.tensors], quant,
                                    field("block_count"), n_gqa)
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    w = GGUFWriter(str(tmp), arch)
    for f in reader.fields.values():
        if f.name.startswith("GGUF.") or f.name in ("general.architecture", "general.file_type",
                                                    "general.quantization_version"):
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == GGUFValueType.ARRAY else None
        w.add_key_value(f.name, f.contents(), vtype, sub_type=sub)
    w.add_file_type(int(LlamaFileType["ALL_F32" if quant == "f32" else f"MOSTLY_{quant.upper()}"]))
    w.add_quantization_version(2)
    for t in reader.tensors:
        x = quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(tuple(reversed(t.shape.tolist())))
        if mixed:
            data, raw = _encode(x, mixed[t.name])
            w.add_tensor(t.name, data, raw_dtype=raw)  # type: ignore[arg-type]
        elif x.ndim < 2 or min(x.shape) == 1 or quant == "f32":
            w.add_tensor(t.name, x)
        else:
            data, raw = _encode(x, quant)
            w.add_tensor(t.name, data, raw_dtype=raw)  # type: ignore[arg-type]
    try:
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(dst)
    return dst
