"""What a GGUF file holds: its architecture, the ggml type of every tensor, and the name of that mix.

A file's label is what farm stores with every result measured on it, so it is read from the tensors,
never from the sweep. The name follows llama-quantize (``Q4_K_M``, ``Q5_K_S``, ``Q6_K``, ``Q4_1``, ``F16``,
...; farm writes it lower case): ``general.file_type``, which llama-quantize records, is trusted when the
tensors agree with it (its base type, or the type llama-quantize falls back to for rows that are not a
multiple of 256, holds weights), else the label is inferred from the tensors alone and the disagreement is
reported. Which backend can run a file is decided here too, from these types (``cannot_run``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from farm.errors import ConfigError
from farm.zoo.recipe import K_MIXES

if TYPE_CHECKING:
    from farm.zoo.arch import Architecture

# llama-quantize's file types (llama.h LLAMA_FTYPE_*), as farm labels.
FTYPE_LABELS: dict[int, str] = {
    0: "f32", 1: "f16", 2: "q4_0", 3: "q4_1", 7: "q8_0", 8: "q5_0", 9: "q5_1", 10: "q2_k", 11: "q3_k_s",
    12: "q3_k_m", 13: "q3_k_l", 14: "q4_k_s", 15: "q4_k_m", 16: "q5_k_s", 17: "q5_k_m", 18: "q6_k",
    19: "iq2_xxs", 20: "iq2_xs", 21: "q2_k_s", 22: "iq3_xs", 23: "iq3_xxs", 24: "iq1_s", 25: "iq4_nl",
    26: "iq3_s", 27: "iq3_m", 28: "iq2_s", 29: "iq2_m", 30: "iq4_xs", 31: "iq1_m", 32: "bf16", 36: "tq1_0",
    37: "tq2_0", 38: "mxfp4_moe",
}

# llama-quantize's aliases: "Q4_K" is Q4_K_M, and so on.
ALIASES: dict[str, str] = {"q3_k": "q3_k_m", "q4_k": "q4_k_m", "q5_k": "q5_k_m"}

# The quant axis of a sweep: the types llama-quantize writes that farm names (aliases accepted too).
QUANT_LABELS: tuple[str, ...] = (
    "f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_s", "q3_k_m", "q3_k_l",
    "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k",
)

# The ggml type that holds most weights under each file type (llama-quantize's default_type).
BASE_TYPE: dict[str, str] = {
    "q2_k_s": "q2_k", "q3_k_s": "q3_k", "q3_k_m": "q3_k", "q3_k_l": "q3_k", "q4_k_s": "q4_k", "q4_k_m": "q4_k",
    "q5_k_s": "q5_k", "q5_k_m": "q5_k", "iq3_m": "iq3_s", "iq2_m": "iq2_s", "mxfp4_moe": "mxfp4",
}
# What llama-quantize writes instead of a k-quant for rows that are not a multiple of 256
# (llama-quant.cpp, "fallback quantization").
FALLBACK: dict[str, str] = {"q2_k": "q4_0", "q3_k": "iq4_nl", "q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0",
                            "iq4_xs": "iq4_nl"}

# Types the llama.cpp farm builds (llama-cpp-python 0.3.36's ggml.h) loads from a GGUF file.
LLAMA_CPP_TYPES: frozenset[str] = frozenset({
    "f32", "f16", "bf16", "f64", "i8", "i16", "i32", "i64", "q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k",
    "q3_k", "q4_k", "q5_k", "q6_k", "iq2_xxs", "iq2_xs", "iq3_xxs", "iq1_s", "iq4_nl", "iq3_s", "iq2_s",
    "iq4_xs", "iq1_m", "tq1_0", "tq2_0", "mxfp4", "nvfp4", "q1_0",
})

_MATRIX_ROLES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down", "attn_qkv")


def base_type(label: str) -> str:
    """The ggml type holding most weights of a file labelled `label` (q4_k_m -> q4_k, q8_0 -> q8_0)."""
    label = ALIASES.get(label, label)
    return BASE_TYPE.get(label, label)


def normalize(label: str) -> str:
    """A quant as a user may write it (Q4_K_M, q4_k, Q8_0) -> farm's label, or ConfigError."""
    low = label.strip().lower()
    low = ALIASES.get(low, low)
    if low not in QUANT_LABELS:
        raise ConfigError(f"unknown quant {label!r}; choose one of {', '.join(QUANT_LABELS)}")
    return low


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type: str  # ggml type name, lower case (q4_k, f32, ...)
    shape: tuple[int, ...]  # ggml order: ne[0] (row length) first

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def is_matrix(self) -> bool:
        return len([d for d in self.shape if d > 1]) >= 2


@dataclass(frozen=True)
class GGUFInfo:
    """The facts of one GGUF file that decide its label and who can run it."""

    path: Path
    arch: str
    name: str
    tensors: tuple[TensorInfo, ...]
    file_type: int | None  # general.file_type as written
    label: str  # farm's label of the mix: q4_k_m, q4_1, f16, ...
    note: str = ""  # why the label differs from general.file_type, when it does
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def types(self) -> frozenset[str]:
        """ggml types of every tensor."""
        return frozenset(t.type for t in self.tensors)

    def type_params(self) -> dict[str, int]:
        """Weights per ggml type, most first."""
        c: Counter[str] = Counter()
        for t in self.tensors:
            c[t.type] += t.n_elements
        return dict(c.most_common())


def _role(name: str) -> str:
    parts = name.split(".")
    return parts[-2] if name.startswith("blk.") and len(parts) >= 3 else name.removesuffix(".weight")


def label_from_tensors(tensors: tuple[TensorInfo, ...] | list[TensorInfo]) -> str:
    """llama-quantize's name for a mix, inferred from the tensor types alone."""
    mats = [t for t in tensors if t.is_matrix]
    body = [t for t in mats if _role(t.name) not in ("token_embd", "output")] or mats
    if not body:
        return "f32"
    by_type: Counter[str] = Counter()
    for t in body:
        by_type[t.type] += t.n_elements
    base = by_type.most_common(1)[0][0]
    vd = {t.type for t in body if _role(t.name) in ("attn_v", "ffn_down")}
    if base == "q4_k":
        return "q4_k_m" if "q6_k" in vd else "q4_k_s"
    if base == "q5_k":
        return "q5_k_m" if "q6_k" in vd else "q5_k_s"
    if base == "q3_k":
        down = {t.type for t in body if _role(t.name) == "ffn_down"}
        if down == {"q5_k"}:
            return "q3_k_l"
        return "q3_k_m" if vd & {"q4_k", "q5_k"} else "q3_k_s"
    return base


def mix_label(tensors: tuple[TensorInfo, ...] | list[TensorInfo], file_type: int | None) -> tuple[str, str]:
    """(label, note): general.file_type's name when the tensors bear it out, else the tensors' own."""
    inferred = label_from_tensors(tensors)
    claimed = FTYPE_LABELS.get(file_type) if file_type is not None else None
    if claimed is None:
        note = f"general.file_type {file_type} is not one llama-quantize writes" if file_type is not None else ""
        return inferred, note
    held = {t.type for t in tensors if t.is_matrix}
    base = base_type(claimed)
    if base in held or FALLBACK.get(base) in held:
        return claimed, ""
    return inferred, f"general.file_type says {claimed}, but no weight is {base}: labelled by its tensors"


def read_gguf(path: str | Path) -> GGUFInfo:
    """Architecture, tensor types and label of the GGUF at `path` (ConfigError if it is not one)."""
    from gguf import GGMLQuantizationType, GGUFReader

    path = Path(path)
    try:
        reader = GGUFReader(str(path))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except Exception as exc:  # a truncated or corrupt file fails inside gguf/numpy in many ways (IndexError, ...)
        raise ConfigError(f"{path}: not a readable GGUF file ({type(exc).__name__}: {exc})") from None

    def field_value(key: str) -> object:
        f = reader.get_field(key)
        return None if f is None else f.contents()

    tensors = tuple(
        TensorInfo(t.name, GGMLQuantizationType(int(t.tensor_type)).name.lower(), tuple(int(d) for d in t.shape))
        for t in reader.tensors)
    ft = field_value("general.file_type")
    label, note = mix_label(tensors, int(ft) if isinstance(ft, int) else None)
    return GGUFInfo(path=path, arch=str(field_value("general.architecture") or "unknown"),
                    name=str(field_value("general.name") or ""), tensors=tensors,
                    file_type=int(ft) if isinstance(ft, int) else None, label=label, note=note)


def recipe_types(label: str, arch: Architecture | None = None) -> frozenset[str]:
    """The ggml types a zoo file of quant `label` holds: matrices in `label` and norms in f32 for the legacy
    types; for a k-quant mix, the types llama-quantize's recipe gives `arch`'s tensors (q6_K output, q5_0
    fallbacks, ...), or the base type and q6_K when no architecture is given."""
    if arch is not None and label in K_MIXES:
        from farm.zoo.writer import tensor_types

        return frozenset(tensor_types(arch, label).values())
    if label in K_MIXES:
        return frozenset({base_type(label), "q6_k", "f32"})
    return frozenset({base_type(label), "f32"})
