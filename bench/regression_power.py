"""How often does `farm regress` catch a 5% decode slowdown, and how often does it cry wolf on A/A?

Builds a throwaway git repository of the reference engine with three commits:

- ``A``      the engine as it is in farm/engine/src;
- ``B``      A plus a calibrated busy loop (K iterations of a volatile counter) at the end of every
             single-token forward pass: the decode path only, prefill calls forward() with n > 1. It is
             extra CPU work, not a wait, so under load it slows down with the rest of the engine and the
             relative slowdown stays put. K is calibrated on this host so decode t/s drops by `slowdown`
             (5%): first K = t_token · (1/(1 − slowdown) − 1) · loop rate, then closed-loop inside one
             engine process, spinning steps timed against their neighbours (see :func:`calibrate`).
             It is an honest source change — a new commit, a new build — standing in for a throttled
             kernel;
- ``A2``     A plus a comment: a different commit and binary with identical code paths.

Then it runs `trials` regressions A→B and A→A2 through the real pipeline (plan, ABBA schedule, local
executor, store, paired analysis, verdict) and reports the detection rate (B flagged as a decode
regression: decode t/s or decode t/s at the 10th-percentile step, the two measures of the decode family) and the
false-positive rate (A2 flagged as any regression), each with a Wilson 95% interval. `--json` keeps every
trial's pairs (A and B decode t/s, total and fast steps), so another test can be tried on the same runs.

Both interleavings run side by side, trial by trial, so they face the same host: ``step`` (one job runs
A and B in lock step under farm-pair, a timed phase each: farm regress's default) and ``process`` (one
process per side and repetition). The ratio of their MDEs is the figure to read on a noisy host.

    python bench/regression_power.py --trials 20 --pairs 10
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ENGINE_SRC = REPO_ROOT / "farm" / "engine" / "src"
SPIN_MARK = "/* farm-regress-eval: decode slowdown */"


def _git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "farm", "GIT_AUTHOR_EMAIL": "farm@localhost",
           "GIT_COMMITTER_NAME": "farm", "GIT_COMMITTER_EMAIL": "farm@localhost"}
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env=env).stdout.strip()


SPIN_C = r"""
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
static int64_t now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000LL + t.tv_nsec;
}
int main(int argc, char **argv) {
    const uint64_t n = strtoull(argv[1], 0, 10);
    const int64_t t0 = now();
    for (volatile uint64_t i = 0; i < n; i++) {
    }
    printf("%lld\n", (long long)(now() - t0));
    return 0;
}
"""


def _decode_once(exe: Path, model_path: Path, n_prompt: int, n_gen: int) -> float:
    out = subprocess.run([str(exe), "bench", "-m", str(model_path), "-p", str(n_prompt), "-n", str(n_gen),
                          "-t", "1", "-r", "3", "-w", "1"], check=True, capture_output=True, text=True).stdout
    return statistics.median(r["decode_ns"] / n_gen for r in json.loads(out)["repetitions"] if not r["warmup"])


def spin_iterations(model_path: Path, n_prompt: int, n_gen: int, slowdown: float, runs: int = 7) -> tuple[int, float]:
    """(K, t_token ns): loop iterations per decoded token that cost `slowdown` of decode t/s on this host."""
    from farm.engine.build import TARGETS, build, host_flags

    exe = build(source_dir=ENGINE_SRC).path
    work = Path(tempfile.mkdtemp(prefix="farm-spin-"))
    try:
        (work / "spin.c").write_text(SPIN_C)
        cc = str(TARGETS["host"]["cc"])
        flags = [f for f in TARGETS["host"]["flags"] if f.startswith(("-O", "-std", "-D_GNU"))] + host_flags()
        subprocess.run([cc, *flags, "-o", str(work / "spin"), str(work / "spin.c")], check=True)
        ks, toks = [], []
        n_loop = 20_000_000
        for _ in range(runs):  # alternate, so the token time and the loop rate see the same load
            t_tok = _decode_once(exe, model_path, n_prompt, n_gen)
            loop_ns = int(subprocess.run([str(work / "spin"), str(n_loop)], check=True, capture_output=True,
                                         text=True).stdout)
            ks.append(t_tok * (1 / (1 - slowdown) - 1) * n_loop / loop_ns)
            toks.append(t_tok)
        return int(statistics.median(ks)), statistics.median(toks)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _odd_step_extra(exe: Path, model_path: Path, n_prompt: int, n_gen: int, runs: int = 3) -> float:
    """Median extra time of a step that spins over its two neighbours that do not, inside one process."""
    ratios = []
    for _ in range(runs):
        out = subprocess.run([str(exe), "bench", "-m", str(model_path), "-p", str(n_prompt), "-n", str(n_gen),
                              "-t", "1", "-r", "5", "-w", "1"], check=True, capture_output=True, text=True).stdout
        for rep in json.loads(out)["repetitions"]:
            if rep["warmup"]:
                continue
            steps = rep["decode_token_ns"]
            for g in range(1, len(steps) - 1):
                if (n_prompt + g) % 2 == 1:  # this step spun; its neighbours did not
                    ratios.append(steps[g] / ((steps[g - 1] + steps[g + 1]) / 2))
    return statistics.median(ratios) - 1


def calibrate(model_path: Path, n_prompt: int, n_gen: int, slowdown: float,
              rounds: int = 3) -> tuple[int, float, list[tuple[int, float]]]:
    """(K, t_token ns, history of (K, measured decode slowdown)): closed-loop, inside one process.

    The open-loop estimate (loop rate × token time, :func:`spin_iterations`) misses by a point or two:
    the loop runs in another binary, without the engine's cache and frequency state. Measuring B
    against A in separate processes does not settle on a shared VM either, whose speed moves by 20-30%
    from one tenth of a second to the next. So the calibration build spins on odd decode positions
    only: each spinning step is timed against its two neighbours a few milliseconds away, at the same
    host speed, and the median over hundreds of such triples is the extra time per token of K
    iterations. K is rescaled (the extra time is linear in K) and measured again.
    """
    from farm.engine.build import build

    k, t_tok = spin_iterations(model_path, n_prompt, n_gen, slowdown)
    want = 1 / (1 - slowdown) - 1  # extra time per token, relative to A's
    history: list[tuple[int, float]] = []
    work = Path(tempfile.mkdtemp(prefix="farm-calib-"))
    try:
        for r in range(rounds):
            src = work / f"src-{r}"
            shutil.copytree(ENGINE_SRC, src)
            (src / "forward.c").write_text(slow_forward((ENGINE_SRC / "forward.c").read_text(), k, odd_only=True))
            extra = _odd_step_extra(build(source_dir=src, out_dir=work / f"build-{r}").path, model_path,
                                    n_prompt, n_gen)
            got = 1 - 1 / (1 + extra)  # the decode t/s drop if every step spun
            history.append((k, got))
            print(f"calibration round {r + 1}: K={k} → decode {-got:+.2%} (every step spinning)", flush=True)
            if abs(got - slowdown) < 0.002:
                break
            k = max(1, round(k * want / max(extra, want / 10)))
        return history[-1][0], t_tok, history
    finally:
        shutil.rmtree(work, ignore_errors=True)


def slow_forward(source: str, iterations: int, odd_only: bool = False) -> str:
    """forward.c with `iterations` of a volatile busy loop after each single-token (decode) forward pass
    (`odd_only`: only at odd positions, for the in-process calibration)."""
    tail = source.rstrip()
    assert tail.endswith("}"), "forward.c is expected to end with forward()'s closing brace"
    cond = "n == 1 && (pos0 & 1)" if odd_only else "n == 1"
    spin = (f"    {SPIN_MARK}\n    if ({cond}) {{\n        for (volatile uint64_t i = 0; i < {iterations}ULL; i++) {{\n"
            "        }\n    }\n")
    return tail[:-1] + spin + "}\n"


def make_engine_repo(dest: Path, spin: int) -> dict[str, str]:
    """A git repo at `dest` with commits A, B (`spin` loop iterations per decoded token) and A2 (comment only)."""
    src = dest / "src"
    shutil.copytree(ENGINE_SRC, src)
    _git(dest, "init", "-q", "-b", "main")
    _git(dest, "add", "-A")
    _git(dest, "commit", "-q", "-m", "A: engine as in farm")
    shas = {"A": _git(dest, "rev-parse", "HEAD")}
    original = (src / "forward.c").read_text()
    (src / "forward.c").write_text(slow_forward(original, spin))
    _git(dest, "commit", "-q", "-am", f"B: decode path spins {spin} iterations per token")
    shas["B"] = _git(dest, "rev-parse", "HEAD")
    _git(dest, "checkout", "-q", shas["A"], "--", "src/forward.c")
    with open(src / "forward.c", "a") as f:
        f.write("/* A2: same code as A, a different commit and binary */\n")
    _git(dest, "commit", "-q", "-am", "A2: comment only")
    shas["A2"] = _git(dest, "rev-parse", "HEAD")
    return shas


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def run_trial(store, inventory, sweep, repo: Path, base: str, head: str, pairs: int, threshold: float,
              alpha: float, interleave: str = "step") -> dict:
    """One `farm regress` through the library: plan → ABBA jobs → local executor → paired verdicts."""
    from farm import regress
    from farm.engine_builds import checkout
    from farm.plan import make_plan
    from farm.store import new_run_id

    run_id = new_run_id()
    plan = make_plan(sweep, inventory, run_id)
    sides = tuple(regress.Side(n, checkout(repo, rev).backend_options(), {"rev": rev}) for n, rev in
                  (("A", base), ("B", head)))
    jobs = regress.ab_jobs(plan.jobs, sides, pairs=pairs, interleave=interleave)
    regress.prebuild(jobs, plan.profiles)
    store.create_run(sweep.name, jobs, run_id=run_id, kind="regress")
    regress.execute(store, inventory, run_id, jobs)
    frame = regress.results_with_pairs(store, run_id)
    rep = regress.compare.compare_paired(frame, threshold=threshold, alpha=alpha)
    by = {r.metric.column: r for r in rep.results}
    dec, step = by["decode_tps"], by["decode_step_tps"]
    wide = frame.pivot_table(index="pair", columns="variant", values=["decode_tps", "decode_step_tps"])
    return {"run_id": run_id, "interleave": interleave, "load1": round(os.getloadavg()[0], 2),
            "regressions": [r.metric.column for r in rep.regressions],
            "decode_change": dec.comparison.change, "decode_p": dec.p_adjusted, "decode_mde": dec.mde,
            "decode_verdict": dec.verdict.label, "step_change": step.comparison.change, "step_p": step.p_adjusted,
            "step_mde": step.mde, "step_verdict": step.verdict.label,
            "pairs": {f"{m}_{v}": wide[(m, v)].round(4).tolist() for m in ("decode_tps", "decode_step_tps")
                      for v in ("A", "B")}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=20, help="regressions per condition (B and A2)")
    ap.add_argument("--pairs", type=int, default=10, help="repetitions per side (ABBA pairs)")
    ap.add_argument("--slowdown", type=float, default=0.05)
    ap.add_argument("--threshold", type=float, default=0.03)
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--model", default="farm-mini")
    ap.add_argument("--prompt", type=int, default=32)
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--interleave", action="append", choices=["step", "process"],
                    help="interleaving(s) to measure, side by side (default: both)")
    ap.add_argument("--background-load", type=int, default=0, metavar="N",
                    help="keep N busy-looping processes running during the trials (a CI runner's other jobs)")
    ap.add_argument("--json", dest="json_path", default=None)
    args = ap.parse_args(argv)
    modes = args.interleave or ["step", "process"]

    os.environ.setdefault("FARM_HOME", tempfile.mkdtemp(prefix="farm-power-"))
    from farm.devices import load_inventory
    from farm.spec import loads_sweep
    from farm.store import Store
    from farm.zoo.files import resolve_model

    model = resolve_model(args.model, "q4_0", 0)
    spin, t_tok, history = calibrate(Path(model.path), args.prompt, args.gen, args.slowdown)
    print(f"decode {t_tok / 1e6:.3f} ms/token on this host → {spin} loop iterations/token for a "
          f"{args.slowdown:.0%} slowdown (measured {history[-1][1]:.2%} step against step, in-process)")
    sweep = loads_sweep(f"""version: 1
name: regression-power
models: [{args.model}]
quants: [q4_0]
prompt_tokens: [{args.prompt}]
gen_tokens: [{args.gen}]
threads: [1]
repetitions: {args.pairs}
warmup: 1
thermal_gate: false
idle_s: 0.2
""")
    work = Path(tempfile.mkdtemp(prefix="farm-engine-repo-"))
    shas = make_engine_repo(work / "engine", spin)
    store = Store(f"sqlite:///{work / 'farm.db'}")
    inventory = load_inventory(None)
    out = {m: {"B": [], "A2": []} for m in modes}
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.background_load)]
    t0 = time.monotonic()
    for t in range(args.trials):
        for mode in modes:
            for cond in ("B", "A2"):
                res = run_trial(store, inventory, sweep, work / "engine", shas["A"], shas[cond], args.pairs,
                                args.threshold, args.alpha, interleave=mode)
                out[mode][cond].append(res)
                print(f"trial {t + 1:3d} {mode:>7} {cond:>2} load {res['load1']:5.2f}: decode "
                      f"{res['decode_change']:+.2%} p={res['decode_p']:.3g} MDE={res['decode_mde']:.1%} → "
                      f"{res['decode_verdict']}; p10 step {res['step_change']:+.2%} p={res['step_p']:.3g} "
                      f"MDE={res['step_mde']:.1%} → {res['step_verdict']}; regressions: "
                      f"{res['regressions'] or '-'}", flush=True)
    for hog in hogs:
        hog.kill()
        hog.wait()
    n = args.trials
    summary: dict = {
        "slowdown": args.slowdown, "pairs_per_side": args.pairs, "trials": n, "threshold": args.threshold,
        "alpha": args.alpha, "model": args.model, "decode_ms_per_token": t_tok / 1e6, "spin_iterations": spin,
        "calibration": history, "wall_s": round(time.monotonic() - t0, 1), "cpus": os.cpu_count(),
        "background_load": args.background_load, "modes": {}}
    print()
    for mode in modes:
        b, a2 = out[mode]["B"], out[mode]["A2"]
        detected = sum(bool({"decode_tps", "decode_step_tps"} & set(r["regressions"])) for r in b)
        false_pos = sum(bool(r["regressions"]) for r in a2)
        m = summary["modes"][mode] = {
            "detection_rate": detected / n, "detection_ci95": wilson(detected, n),
            "false_positive_rate": false_pos / n, "false_positive_ci95": wilson(false_pos, n),
            "median_measured_slowdown": statistics.median(r["decode_change"] for r in b),
            "median_measured_step_slowdown": statistics.median(r["step_change"] for r in b),
            "median_mde": statistics.median(r["decode_mde"] for r in b + a2),
            "median_step_mde": statistics.median(r["step_mde"] for r in b + a2),
            "median_load1": statistics.median(r["load1"] for r in b + a2), "trials_detail": out[mode]}
        print(f"[{mode}] detection of a {args.slowdown:.0%} decode slowdown: {detected}/{n} = {detected / n:.0%} "
              f"(95% CI {wilson(detected, n)[0]:.0%}–{wilson(detected, n)[1]:.0%}); A/A false positives (any "
              f"metric): {false_pos}/{n} = {false_pos / n:.0%} (95% CI {wilson(false_pos, n)[0]:.0%}–"
              f"{wilson(false_pos, n)[1]:.0%}); measured slowdown {m['median_measured_slowdown']:+.1%} (p10 step "
              f"{m['median_measured_step_slowdown']:+.1%}); median MDE {m['median_mde']:.1%} (p10 step "
              f"{m['median_step_mde']:.1%}); median 1-min load {m['median_load1']}")
    if len(modes) == 2:
        a, b = (summary["modes"][m] for m in modes)
        print(f"MDE ratio {modes[0]} ÷ {modes[1]}: decode {a['median_mde'] / b['median_mde']:.2f}, p10 step "
              f"{a['median_step_mde'] / b['median_step_mde']:.2f} ({args.pairs} reps per side, {os.cpu_count()} CPUs, "
              f"{args.background_load} busy background process(es))")
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(summary, indent=1, default=str))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
