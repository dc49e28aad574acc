"""The zoo's k-quant files: ggml's reference k-quantizers ported to numpy (farm.zoo.kquants) and llama-quantize's
per-tensor recipe (farm.zoo.recipe) give the bytes llama.cpp's own llama-quantize writes from the same f32 file;
the planner keeps zoo k-quant cells a backend can run and drops the others with the reason; the reference
engine runs the zoo's q4_k_m file."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, quants

from farm.zoo import kquants
from farm.zoo.cards import load_card
from farm.zoo.mix import read_gguf
from farm.zoo.recipe import K_MIXES, tensor_types, use_more_bits
from farm.zoo.writer import write_gguf
from tests.test_gguf_labels import farm, smollm2_path

# Bytes per block of each type llama-quantize writes here (ggml-common.h).
BLOCK_BYTES = {"q2_k": 84, "q3_k": 110, "q4_k": 144, "q5_k": 176, "q6_k": 210, "q4_0": 18, "q5_0": 22,
               "q5_1": 24, "q8_0": 34}


def _blocks(rng: np.random.Generator, n: int) -> np.ndarray:
    """Gaussian blocks plus the edge cases of the C code: all zero, constant, one sign, an outlier, half zero."""
    x = (0.05 * rng.standard_normal((n, 256))).astype(np.float32)
    x[0] = 0
    x[1] = 0.3
    x[2] = np.abs(x[2])
    x[3, 5] = 4.0
    x[4] = -np.abs(x[4])
    x[5, :128] = 0
    return x


@pytest.mark.parametrize("qtype", sorted(kquants.BLOCK_BYTES))
def test_quantizers_round_trip_through_gguf_dequantizers(qtype: str) -> None:
    """gguf-py's dequantizers (independent of ours) read our blocks back close to the input, with the error
    each type's bit width allows, and the all-zero block back as zeros."""
    x = _blocks(np.random.default_rng(0), 512)
    q = kquants.quantize(x, qtype)
    assert q.shape == (512, kquants.BLOCK_BYTES[qtype]) and q.dtype == np.uint8
    back = quants.dequantize(q, GGMLQuantizationType[qtype.upper()]).reshape(x.shape)
    assert np.all(back[0] == 0)
    rel = np.sqrt(np.mean((back[6:] - x[6:]) ** 2)) / np.sqrt(np.mean(x[6:] ** 2))
    bound = {"q2_k": 0.45, "q3_k": 0.25, "q4_k": 0.12, "q5_k": 0.06, "q6_k": 0.03}[qtype]
    assert rel < bound, rel
    assert np.array_equal(kquants.quantize(x.reshape(2, 256, 256), qtype).reshape(q.shape), q)  # rows independent


def test_recipe_follows_llama_quantize_for_a_30_layer_model() -> None:
    """SmolLM2-135M's shapes (d_model 576: not a multiple of 256) under q4_k_m and q4_k_s."""
    arch = load_card("smollm2-135m").architecture
    from farm.zoo.writer import tensor_types as zoo_types

    t = zoo_types(arch, "q4_k_m")
    assert t["token_embd.weight"] == "q8_0"  # tied output: q6_K, whose 256-block does not fit 576 -> q8_0
    assert t["blk.5.attn_q.weight"] == "q5_0" and t["blk.5.attn_output.weight"] == "q5_0"  # q4_K fallback
    more = [i for i in range(30) if use_more_bits(i, 30)]
    assert more[:5] == [0, 1, 2, 5, 8] and more[-4:] == [26, 27, 28, 29]  # n/8 = 3, 7n/8 = 26, every third
    assert all(t[f"blk.{i}.attn_v.weight"] == ("q8_0" if i in more else "q5_0") for i in range(30))  # q6_K -> q8_0
    assert all(t[f"blk.{i}.ffn_down.weight"] == ("q6_k" if i in more else "q4_k") for i in range(30))  # 1536 fits
    assert t["blk.0.attn_norm.weight"] == "f32"
    s = zoo_types(arch, "q4_k_s")
    assert [s[f"blk.{i}.ffn_down.weight"] for i in (0, 2, 3)] == ["q5_k", "q5_k", "q4_k"]  # i < n/8
    with pytest.raises(ValueError, match="q4_0"):
        tensor_types([], "q4_0", 1, 1)


# ---- against llama.cpp's llama-quantize ------------------------------------------------------------------


def _llama_quantize(exe: Path, src: Path, dst: Path, mix: str) -> Path:
    res = subprocess.run([str(exe), str(src), str(dst), mix.upper(), "2"], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    return dst


def _compare(ours: Path, theirs: Path) -> dict[str, tuple[int, int]]:
    """{type: (equal blocks, blocks)}; asserts the same tensors with the same types."""
    a = {t.name: t for t in GGUFReader(str(ours)).tensors}
    b = {t.name: t for t in GGUFReader(str(theirs)).tensors}
    assert a.keys() == b.keys()
    types = {n: t.tensor_type.name.lower() for n, t in a.items()}
    assert types == {n: t.tensor_type.name.lower() for n, t in b.items()}
    out: dict[str, tuple[int, int]] = {}
    for name, qt in types.items():
        x = np.asarray(a[name].data).view(np.uint8).ravel()
        y = np.asarray(b[name].data).view(np.uint8).ravel()
        size = BLOCK_BYTES.get(qt, x.size)  # f32 tensors: compared whole
        same = (x.reshape(-1, size) == y.reshape(-1, size)).all(axis=1)
        eq, n = out.get(qt, (0, 0))
        out[qt] = (eq + int(same.sum()), n + same.size)
    return out


@pytest.mark.parametrize("mix", K_MIXES)
def test_zoo_file_is_byte_identical_to_llama_quantize_of_its_f32(mix: str, llama_quantize: Path,
                                                                  tmp_path: Path) -> None:
    """The zoo's farm-tiny in `mix` and llama-quantize's `mix` of the zoo's farm-tiny f32 (same seed, so
    the same weights): same type for every tensor and every block byte for byte."""
    arch = load_card("farm-tiny").architecture
    f32 = write_gguf(arch, tmp_path / "f32.gguf", "f32", seed=3)
    ours = write_gguf(arch, tmp_path / f"{mix}.gguf", mix, seed=3)
    theirs = _llama_quantize(llama_quantize, f32, tmp_path / f"llama-{mix}.gguf", mix)
    stats = _compare(ours, theirs)
    assert all(eq == n for eq, n in stats.values()), stats
    assert read_gguf(ours).label == mix == read_gguf(theirs).label


@pytest.fixture(scope="module")
def smollm2_f32(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from farm.zoo.convert import requantize

    return requantize(smollm2_path(), tmp_path_factory.mktemp("smollm2") / "smollm2-f32.gguf", "f32")


@pytest.mark.parametrize("mix", ["q4_k_m", "q2_k"])
def test_real_model_requantized_byte_identical_to_llama_quantize(mix: str, smollm2_f32: Path,
                                                                 llama_quantize: Path, tmp_path: Path) -> None:
    """Real weights (SmolLM2-135M, d_model 576: the fallback types too): q4_k_m holds q4_K, q6_K, q5_0 and
    q8_0, q2_k holds q3_K (ffn_down), q4_0 (q2_K's fallback) and q8_0; all their blocks equal llama-quantize's."""
    from farm.zoo.convert import requantize

    ours = requantize(smollm2_f32, tmp_path / f"ours-{mix}.gguf", mix)
    theirs = _llama_quantize(llama_quantize, smollm2_f32, tmp_path / f"llama-{mix}.gguf", mix)
    stats = _compare(ours, theirs)
    want = {"q4_k_m": {"q4_k", "q6_k", "q5_0", "q8_0", "f32"}, "q2_k": {"q3_k", "q4_0", "q8_0", "f32"}}
    assert set(stats) == want[mix]
    assert all(eq == n for eq, n in stats.values()), stats
    assert read_gguf(ours).label == mix


# ---- planner and engine ----------------------------------------------------------------------------------


def _plan(tmp_path: Path, quants_axis: str, backends: str) -> list[str]:
    sweep = tmp_path / "s.yaml"
    sweep.write_text(f"version: 1\nname: x\nmodels: [farm-tiny, smollm2-135m]\nquants: [{quants_axis}]\n"
                     f"backends: [{backends}]\nprompt_tokens: [8]\ngen_tokens: [8]\n")
    proc = farm("plan", str(sweep), home=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def test_plan_keeps_zoo_k_quant_cells_both_backends_run(tmp_path: Path) -> None:
    lines = _plan(tmp_path, "q4_k_m, Q5_K_M, q6_k", "reference, llamacpp")
    jobs = [ln for ln in lines if ln.strip()[:1].isdigit()]
    assert "12 jobs, 0 dropped" in lines[0], lines
    for model in ("farm-tiny", "smollm2-135m"):
        for quant in ("q4_k_m", "q5_k_m", "q6_k"):
            for backend in ("reference", "llamacpp"):
                assert sum(model in ln and f" {quant} " in ln and backend in ln for ln in jobs) == 1, (
                    model, quant, backend, lines)


def test_plan_drops_zoo_cells_whose_types_the_reference_engine_lacks(tmp_path: Path) -> None:
    """The reference engine has no q2_K / q3_K kernel; llama.cpp runs them. The types are the recipe's for the
    card: SmolLM2's q3_k_m holds no q3_K (its 576-wide rows fall back to q4_0, ffn_down is q4_K/q5_K), so the
    reference engine runs it, while its q2_k keeps q3_K in ffn_down."""
    lines = _plan(tmp_path, "q2_k, q3_k_m", "reference, llamacpp")
    assert "5 jobs, 3 dropped" in lines[0], lines
    dropped = [ln for ln in lines if "dropped" in ln and "backend=" in ln]
    assert all("backend=reference" in ln and "no kernel for" in ln for ln in dropped), lines
    assert {re.search(r"model=(\S+) quant=(\S+)", ln).groups() for ln in dropped} == {  # type: ignore[union-attr]
        ("farm-tiny", "q2_k"), ("farm-tiny", "q3_k_m"), ("smollm2-135m", "q2_k")}
    assert any("no kernel for q2_k, q3_k " in ln for ln in dropped)
    jobs = [ln for ln in lines if ln.strip()[:1].isdigit()]
    assert sum("reference" in ln for ln in jobs) == 1 and any(
        "reference" in ln and "smollm2-135m" in ln and "q3_k_m" in ln for ln in jobs)


def test_reference_engine_runs_the_zoos_q4_k_m_file(tmp_path: Path) -> None:
    sweep = tmp_path / "s.yaml"
    sweep.write_text("""version: 1
name: tiny-q4km
models: [farm-tiny]
quants: [q4_k_m]
backends: [reference]
prompt_tokens: [16]
gen_tokens: [8]
threads: [2]
repetitions: 1
warmup: 0
idle_s: 0
thermal_gate: false
""")
    db = f"sqlite:///{tmp_path / 'farm.db'}"
    proc = farm("submit", str(sweep), "--db", db, home=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_id = re.search(r"run (\d{8}-\d{6}-[0-9a-f]{4})", proc.stdout).group(1)  # type: ignore[union-attr]
    rows = json.loads(farm("results", run_id, "--db", db, "--format", "json", "--raw", home=tmp_path).stdout)
    assert len(rows) == 1 and rows[0]["quant"] == "q4_k_m"
    assert rows[0]["decode_tps"] > 0 and rows[0]["prefill_tps"] > 0
    built = sorted((tmp_path / "cache" / "models").glob("farm-tiny.q4_k_m.*.gguf"))
    assert len(built) == 1
    info = read_gguf(built[0])
    assert info.label == "q4_k_m" and info.types == {"q4_k", "q6_k", "f32"}


@pytest.mark.parametrize("quant", ["q4_0", "q4_k_m", "q3_k_m", "q6_k"])
def test_sizes_shown_and_planned_are_the_written_files(quant: str, tmp_path: Path) -> None:
    """`farm zoo show` and the planner's memory fit use Architecture.weight_bytes: for a mix it is the recipe's
    types (q6_K output, fallbacks), not the base type times the parameters."""
    arch = load_card("farm-tiny").architecture
    path = write_gguf(arch, tmp_path / f"{quant}.gguf", quant)
    assert arch.weight_bytes(quant) == sum(int(t.n_bytes) for t in GGUFReader(str(path)).tensors)
