"""farm-engine's command line: bench JSON shape and timing invariants, info, and clean refusals (exit 2)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFWriter

from farm.engine import build_info
from farm.zoo.writer import write_gguf
from tests.engine_ref import tiny_arch

REP_KEYS = {"rep", "warmup", "prefill_start_ns", "prefill_end_ns", "decode_start_ns", "decode_end_ns", "prefill_ns",
            "decode_ns", "ttft_ns", "n_prompt", "n_gen", "decode_preemptions", "decode_token_ns"}
TOP_KEYS = {"engine", "version", "build_flags", "simd", "model_filename", "model_type", "model_size",
            "model_n_params", "n_threads", "n_prompt", "n_gen", "n_depth", "kv_type", "clock", "load_ns",
            "peak_rss_bytes",
            "lockstep", "repetitions"}


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gguf(tiny_arch("qwen2"), tmp_path_factory.mktemp("bench") / "tiny-q4_0.gguf", "q4_0", seed=1)


def run(engine: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(engine), *args], capture_output=True, text=True, timeout=120)


def bench(engine: Path, model: Path, *args: str) -> tuple[dict, list[tuple[str, int]]]:
    res = run(engine, "bench", "-m", str(model), *args)
    assert res.returncode == 0, res.stderr
    phases = [(ln.split()[1], int(ln.split()[2])) for ln in res.stderr.splitlines() if ln.startswith("FARM_PHASE")]
    return json.loads(res.stdout), phases


def test_bench_json_shape_and_monotonic_phases(engine: Path, model: Path) -> None:
    out, phases = bench(engine, model, "-p", "16", "-n", "8", "-t", "2", "-r", "3", "-w", "1")
    assert set(out) == TOP_KEYS
    assert out["engine"] == "farm-ref" and out["clock"] == "CLOCK_MONOTONIC"
    assert out["simd"] in ("avx2", "neon", "scalar")
    assert out["build_flags"] == " ".join(build_info(engine)["flags"])
    assert out["model_filename"] == model.name and out["model_type"].startswith("qwen2 ")
    assert out["model_type"].endswith(" q4_0")
    assert out["model_n_params"] == tiny_arch("qwen2").n_params()
    assert 0 < out["model_size"] < model.stat().st_size
    assert (out["n_threads"], out["n_prompt"], out["n_gen"], out["kv_type"]) == (2, 16, 8, "f16")
    assert out["peak_rss_bytes"] > 1 << 20 and out["load_ns"] > 0
    reps = out["repetitions"]
    assert [r["rep"] for r in reps] == [0, 1, 2, 3]
    assert [r["warmup"] for r in reps] == [True, False, False, False]
    last = 0
    for r in reps:
        assert set(r) == REP_KEYS
        t = [r["prefill_start_ns"], r["prefill_end_ns"], r["decode_start_ns"], r["decode_end_ns"]]
        assert last <= t[0] <= t[1] <= t[2] < t[3]
        last = t[3]
        assert r["prefill_ns"] == t[1] - t[0] > 0 and r["decode_ns"] == t[3] - t[2]
        assert r["ttft_ns"] == r["prefill_ns"]
        # every decode step timed on its own; the steps tile the decode exactly
        assert len(r["decode_token_ns"]) == 8 and min(r["decode_token_ns"]) > 0
        assert sum(r["decode_token_ns"]) == r["decode_ns"] and r["decode_preemptions"] >= 0
        assert (r["n_prompt"], r["n_gen"]) == (16, 8)
    # stderr markers carry the same raw timestamps, in order, as they happened
    names = ["prefill_start", "prefill_end", "decode_start", "decode_end"]
    assert [n for n, _ in phases] == names * 4
    assert [ns for _, ns in phases] == [r[f"{n}_ns"] for r in reps for n in names]


def test_bench_pure_decode_and_pure_prefill(engine: Path, model: Path) -> None:
    dec, _ = bench(engine, model, "-p", "0", "-n", "4", "-r", "1", "-w", "0")
    (r,) = dec["repetitions"]
    assert r["n_prompt"] == 0 and r["prefill_ns"] >= 0 and r["decode_ns"] > 0
    assert 0 < r["ttft_ns"] <= r["decode_ns"]  # with -p 0 the first token comes from the first decode step
    assert r["ttft_ns"] == r["decode_token_ns"][0]
    pre, _ = bench(engine, model, "-p", "8", "-n", "0", "-r", "2", "-w", "0")
    assert all(r["n_gen"] == 0 and r["prefill_ns"] > 0 for r in pre["repetitions"])
    assert all(r["decode_ns"] < r["prefill_ns"] for r in pre["repetitions"])
    assert all(r["decode_token_ns"] == [] for r in pre["repetitions"])


def test_reference_backend_keeps_the_fast_steps(engine: Path, model: Path) -> None:
    from farm.backends.reference import fast_step_s, parse_repetitions

    out, _ = bench(engine, model, "-p", "4", "-n", "5", "-r", "2", "-w", "1")
    reps = parse_repetitions(out)
    assert len(reps) == 2
    for rep, raw in zip(reps, out["repetitions"][1:], strict=True):
        assert rep.decode_step_p10_s == pytest.approx(np.percentile(raw["decode_token_ns"], 10) / 1e9)
        assert rep.decode_step_tps == pytest.approx(1 / rep.decode_step_p10_s)
    assert fast_step_s([7]) == 7e-9 and fast_step_s([]) is None
    # an engine that reports totals only (older farm-engine JSON) leaves it empty
    for r in out["repetitions"]:
        del r["decode_token_ns"]
    assert parse_repetitions(out)[0].decode_step_tps is None


def test_bench_is_deterministic_and_kv_f32(engine: Path, model: Path) -> None:
    out, _ = bench(engine, model, "-p", "4", "-n", "2", "-r", "1", "-w", "0", "--kv", "f32", "--seed", "3")
    assert out["kv_type"] == "f32"


def test_info(engine: Path, model: Path) -> None:
    res = run(engine, "info", "-m", str(model))
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout)
    a = tiny_arch("qwen2")
    assert (info["arch"], info["n_layers"], info["d_model"], info["n_heads"], info["n_kv_heads"]) == (
        "qwen2", a.n_layers, a.d_model, a.n_heads, a.n_kv_heads)
    assert info["rope_style"] == "neox" and info["tied_embeddings"] and info["qkv_bias"]
    assert info["tensors"]["token_embd.weight"] == "q4_0" and info["tensors"]["blk.0.attn_q.bias"] == "f32"
    assert info["model_n_params"] == a.n_params()


def _odd_gguf(path: Path, arch: str, emb_type: GGMLQuantizationType) -> Path:
    w = GGUFWriter(str(path), arch)
    for key, val in (("block_count", 1), ("embedding_length", 64), ("feed_forward_length", 64),
                     ("attention.head_count", 2)):
        w.add_uint32(f"{arch}.{key}", val)
    if emb_type == GGMLQuantizationType.F32:
        w.add_tensor("token_embd.weight", np.zeros((16, 64), dtype=np.float32))
    else:  # raw blocks: bytes per row from the type's block size
        block, size = GGML_QUANT_SIZES[emb_type]
        w.add_tensor("token_embd.weight", np.zeros((16, 64 // block * size), dtype=np.uint8), raw_dtype=emb_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _bad_inputs(tmp: Path, model: Path) -> list[tuple[list[str], str]]:
    text = tmp / "notes.gguf"
    text.write_text("this is not a model\n" * 10)
    trunc = tmp / "trunc.gguf"
    trunc.write_bytes(model.read_bytes()[:200])
    gpt2 = _odd_gguf(tmp / "gpt2.gguf", "gpt2", GGMLQuantizationType.F32)
    iq4 = _odd_gguf(tmp / "iq4.gguf", "llama", GGMLQuantizationType.IQ4_NL)  # a type the engine has no kernel for
    return [
        (["bench", "-m", str(tmp / "missing.gguf")], "cannot open"),
        (["info", "-m", str(text)], "not a GGUF"),
        (["info", "-m", str(trunc)], "truncated"),
        (["info", "-m", str(gpt2)], "unsupported architecture"),
        (["info", "-m", str(iq4)], "has type iq4_nl (ggml type 20), which this engine does not run"),
        (["bench", "-m", str(model), "-t", "0"], "bad value"),
        (["bench", "-m", str(model), "--kv", "q8"], "--kv"),
        (["bench", "-m", str(model), "--lockstep", "97,98"], "--lockstep"),
        (["bench", "-m", str(model), "--lockstep", "3"], "--lockstep"),
        (["logits", "-m", str(model), "--tokens", "1,99999"], "out of range"),
        (["frobnicate"], "usage"),
        (["bench"], "missing -m"),
    ]


def test_bad_inputs_exit_2_with_one_line(engine: Path, model: Path, tmp_path: Path) -> None:
    for args, needle in _bad_inputs(tmp_path, model):
        res = run(engine, *args)
        assert res.returncode == 2, (args, res.returncode, res.stderr)
        assert res.stdout == ""
        lines = res.stderr.splitlines()
        assert len(lines) == 1 and needle in lines[0], (args, res.stderr)


def test_depth_fills_the_cache_before_the_timed_phases(engine: Path, model: Path) -> None:
    """-d D: D tokens in the KV cache before prefill (untimed), so decode attends over D more positions."""
    flat, _ = bench(engine, model, "-p", "8", "-n", "16", "-r", "3", "-w", "1")
    deep, phases = bench(engine, model, "-p", "8", "-n", "16", "-r", "3", "-w", "1", "-d", "1536")
    assert (flat["n_depth"], deep["n_depth"]) == (0, 1536)
    assert [name for name, _ in phases[:4]] == ["prefill_start", "prefill_end", "decode_start", "decode_end"]
    step = [min(r["decode_ns"] for r in out["repetitions"] if not r["warmup"]) for out in (flat, deep)]
    # attention over 1544+ positions instead of 8+ dominates this tiny model's decode step
    assert step[1] > 1.5 * step[0], step
    bad = run(engine, "bench", "-m", str(model), "-d", "-1")
    assert bad.returncode == 2 and "bad value '-1' for -d" in bad.stderr
