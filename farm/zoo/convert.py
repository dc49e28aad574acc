"""Re-encode a real GGUF's weights in another type: the f32 reference and the legacy types of one model.

`requantize` keeps every metadata key and the tokenizer, dequantizes each tensor (gguf.quants) and writes
its matrices in `quant` with llama-quantize's --pure recipe (every matrix in the one type, norms f32), the
recipe the zoo uses. K-quant mixes are llama-quantize's own job (`farm.backends.llamacpp_build`).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import numpy as np

from farm.errors import ConfigError

PURE = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1")


def requantize(src: str | Path, dst: str | Path, quant: str) -> Path:
    """Write `src` to `dst` with every matrix in `quant` (one of PURE) and vectors in f32."""
    from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, LlamaFileType, quants

    if quant not in PURE:
        raise ConfigError(f"requantize writes {', '.join(PURE)}, not {quant!r}")
    reader = GGUFReader(str(src))
    arch = str(reader.get_field("general.architecture").contents())
    dst = Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    w = GGUFWriter(str(tmp), arch)
    qtype = GGMLQuantizationType[quant.upper()]
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
        if x.ndim < 2 or min(x.shape) == 1 or quant == "f32":
            w.add_tensor(t.name, x)
        elif quant == "f16":
            w.add_tensor(t.name, x.astype(np.float16))
        else:
            w.add_tensor(t.name, quants.quantize(x, qtype), raw_dtype=qtype)
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
