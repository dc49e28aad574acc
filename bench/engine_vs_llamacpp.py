"""Reference engine vs llama.cpp's llama-bench on the same GGUF files, same threads, same pp/tg, one run.

Writes Qwen2.5-0.5B-shaped synthetic models (q4_0, q8_0), builds farm-engine (farm.engine.build) and
llama-bench (farm.backends.llamacpp_build, cached), runs both and prints tokens/s with the ratio farm/llama.cpp
against the targets (decode >= 0.8x, prefill >= 0.5x).

    python bench/engine_vs_llamacpp.py [--threads 2] [--pp 128] [--tg 64] [--reps 3] [--isa avx2]

Timing semantics match: llama-bench's pp test is one batched prompt pass (t/s = n_prompt / time), its tg
test is n_gen single-token decode steps (t/s = n_gen / time); farm-engine's prefill and decode phases
are defined the same way (see farm/engine/src/main.c).
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
from farm.backends.llamacpp_build import ISA_FLAGS, llama_bench_path
from farm.engine import build
from farm.zoo.arch import Architecture
from farm.zoo.writer import write_gguf

QWEN25_05B = Architecture(arch="qwen2", n_layers=24, d_model=896, n_heads=14, n_kv_heads=2, d_ff=4864,
                          vocab_size=151936, context_length=32768, rope_theta=1e6, rope_style="neox", rms_eps=1e-6,
                          tied_embeddings=True, qkv_bias=True)
TARGETS = {"pp": 0.5, "tg": 0.8}


def model_path(quant: str) -> Path:
    path = paths.cache_dir("bench-models") / f"qwen2.5-0.5b-shape-{quant}.gguf"
    if not path.exists():
        print(f"writing {path.name} ...", file=sys.stderr)
        write_gguf(QWEN25_05B, path, quant, seed=0, name="qwen2.5-0.5b-shape")
    return path


def _stats(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def run_farm(exe: Path, model: Path, threads: int, pp: int, tg: int, reps: int) -> dict[str, list[float]]:
    """Per-repetition t/s of farm-engine (its warm-up repetition dropped)."""
    cmd = [str(exe), "bench", "-m", str(model), "-p", str(pp), "-n", str(tg), "-t", str(threads), "-r", str(reps),
           "-w", "1"]
    out = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    timed = [r for r in out["repetitions"] if not r["warmup"]]
    return {"pp": [r["n_prompt"] / r["prefill_ns"] * 1e9 for r in timed],
            "tg": [r["n_gen"] / r["decode_ns"] * 1e9 for r in timed]}


def run_llama(exe: Path, model: Path, threads: int, pp: int, tg: int, reps: int) -> dict[str, list[float]]:
    """Per-repetition t/s of llama-bench (it runs its own warm-up)."""
    cmd = [str(exe), "-m", str(model), "-p", str(pp), "-n", str(tg), "-t", str(threads), "-r", str(reps),
           "-o", "json"]
    rows = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    return {("pp" if row["n_prompt"] > 0 else "tg"): [float(x) for x in row["samples_ts"]] for row in rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pp", type=int, default=128)
    ap.add_argument("--tg", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2,
                    help="alternate the engines this many times (ABAB) so background load hits both alike")
    ap.add_argument("--quants", default="q4_0,q8_0")
    ap.add_argument("--isa", default="avx2", choices=sorted(ISA_FLAGS), help="llama.cpp build variant")
    args = ap.parse_args()

    farm_exe = build().path
    llama_exe = llama_bench_path(args.isa)
    print(f"farm-engine: {farm_exe}\nllama-bench ({args.isa}): {llama_exe}")
    print(f"threads {args.threads}, pp{args.pp}, tg{args.tg}, {args.rounds} rounds x {args.reps} reps, "
          "engines alternated (t/s, mean ± stddev over all reps)\n")
    header = f"{'model':<22} {'test':<7} {'farm-ref t/s':>16} {'llama.cpp t/s':>16} {'ratio':>6} {'target':>7}"
    print(header)
    print("-" * len(header))
    ok = True
    for quant in args.quants.split(","):
        model = model_path(quant)
        farm: dict[str, list[float]] = {"pp": [], "tg": []}
        llama: dict[str, list[float]] = {"pp": [], "tg": []}
        for _ in range(args.rounds):
            for kind, vals in run_farm(farm_exe, model, args.threads, args.pp, args.tg, args.reps).items():
                farm[kind] += vals
            for kind, vals in run_llama(llama_exe, model, args.threads, args.pp, args.tg, args.reps).items():
                llama[kind] += vals
        for kind, n in (("pp", args.pp), ("tg", args.tg)):
            (f, fsd), (ll, lsd) = _stats(farm[kind]), _stats(llama[kind])
            ratio = f / ll
            good = ratio >= TARGETS[kind]
            ok &= good
            print(f"{'qwen2 0.5B ' + quant:<22} {kind + str(n):<7} {f:>9.1f} ± {fsd:<5.1f} {ll:>9.1f} ± {lsd:<5.1f} "
                  f"{ratio:>6.2f} {'>=' + str(TARGETS[kind]):>5} {'ok' if good else 'MISS'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
