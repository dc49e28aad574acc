"""The five prebuilt-engine backends and the depth axis on the virtual lab, through the real adb and ssh transports.

MNN, ExecuTorch, mllm, ONNX Runtime GenAI and MLC cannot be built here, so each runs as a STAND-IN: a static
aarch64 program (run on the devices through qemu, as a real engine binary would be) that prints its argv, checks
that every staged file it was pointed at exists on the device, then prints a recorded real output of that engine
(tests/data/engines). Everything around it is real: options validation, staging of the binary and of the model
directory through the content-addressed cache, the device command (directory links, repetition loop), parsing,
storage. The depth sweep runs the real reference engine at depth 0 and 512 on both virtual phones.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from farm.devices import load_inventory
from farm.executors.local import LocalExecutor
from farm.plan import make_plan
from farm.spec import loads_sweep
from farm.store import Store
from tests.support import need

DATA = Path(__file__).parent / "data" / "engines"
SAMPLES = {"mnn": "mnn-3392.md", "executorch": "executorch-arm.txt", "mllm": "mllm-readme.txt",
           "ortgenai": "ortgenai-android.txt", "mlc": "mlc-stats.txt"}
STANDIN_C = r"""
#include <stdio.h>
#include <string.h>
#include <unistd.h>
static const unsigned char out[] = {%s};
int main(int argc, char **argv) {
    printf("stand-in argv:");
    for (int i = 1; i < argc; i++) printf(" %%s", argv[i]);
    printf("\n");
    for (int i = 1; i < argc; i++)
        if (strstr(argv[i], "/trees/") && access(argv[i], R_OK) != 0) {
            fprintf(stderr, "stand-in: %%s is not on the device\n", argv[i]);
            return 3;
        }
    fwrite(out, 1, sizeof out, stdout);
    return 0;
}
"""


def standin(tmp: Path, engine: str) -> Path:
    import shutil

    need(shutil.which("aarch64-linux-gnu-gcc") is not None, "aarch64-linux-gnu-gcc")
    data = (DATA / SAMPLES[engine]).read_bytes()
    src = tmp / f"standin-{engine}.c"
    src.write_text(STANDIN_C % ",".join(str(b) for b in data))
    exe = tmp / f"standin-{engine}"
    subprocess.run(["aarch64-linux-gnu-gcc", "-O1", "-static", str(src), "-o", str(exe)], check=True)
    return exe


def model_dir(tmp: Path) -> Path:
    d = tmp / "model"
    (d / "sub").mkdir(parents=True)
    for name in ("config.json", "llm.mnn", "model.pte", "tokenizer.model", "model.mllm", "genai_config.json"):
        (d / name).write_text(f"{name} of the stand-in model\n")
    (d / "sub" / "weights.bin").write_bytes(b"\0" * 4096)
    return d


SWEEP = """
version: 1
name: stand-in-engines
models: [qwen2.5-0.5b]
quants: [q4_0]
backends:
{backends}
devices: [phone1, board1]
prompt_tokens: [512, 128, 54, 2, 32]
gen_tokens: [128, 53, 64]
include:
  - {{backend: mnn, prompt_tokens: 512, gen_tokens: 128}}
  - {{backend: executorch, prompt_tokens: 54, gen_tokens: 53}}
  - {{backend: mllm, prompt_tokens: 128, gen_tokens: 128}}
  - {{backend: ortgenai, prompt_tokens: 2, gen_tokens: 128}}
  - {{backend: mlc, prompt_tokens: 32, gen_tokens: 64}}
repetitions: 2
warmup: 0
power: false
thermal_gate: false  # argv and parsing of stand-in engines are under test; the gate: test_lab_profiles
"""


def test_stand_in_engines_through_real_adb_and_ssh(lab, tmp_path: Path) -> None:
    models = model_dir(tmp_path)
    extra = {"mllm": "model_name: qwen3-w4a32-kai, ", "ortgenai": "threads: 1, "}
    backends = "\n".join(
        f"  - {{name: {e}, options: {{{extra.get(e, '')}model_dir: {models}, "
        f"binary: {{arm64-v8a: {standin(tmp_path, e)}, aarch64: {standin(tmp_path, e)}}}}}}}" for e in SAMPLES)
    sweep = loads_sweep(SWEEP.format(backends=backends))
    inv = load_inventory(lab.inventory_path)
    store = Store(f"sqlite:///{tmp_path / 'farm.db'}")
    plan = make_plan(sweep, inv, "engines")
    assert sorted((j.backend, j.device) for j in plan.jobs) == sorted(
        (e, d) for e in SAMPLES for d in ("phone1", "board1"))
    store.create_run(sweep.name, plan.jobs, run_id="engines")
    LocalExecutor(store, inv).submit("engines", plan.jobs)
    jobs = {(j.backend, j.device): j for j in store.job_rows("engines")}
    assert all(j.status == "done" for j in jobs.values()), [(k, j.error) for k, j in jobs.items() if j.error]
    df = store.results_frame("engines")
    for device in ("phone1", "board1"):
        rows = {b: g for b, g in df[df["device"] == device].groupby("backend")}
        # values worked out by hand from the recorded outputs (see tests/test_engine_parsers.py)
        mnn = rows["mnn"]  # one llm_bench process per repetition: two tables, two repetitions
        assert len(mnn) == 2 and mnn["prefill_s"].tolist() == pytest.approx([512 / 996.03] * 2)
        assert mnn["decode_s"].tolist() == pytest.approx([128 / 170.16] * 2)
        et = rows["executorch"]
        assert len(et) == 2 and et["prefill_s"].tolist() == pytest.approx([0.185] * 2)
        assert et["decode_s"].tolist() == pytest.approx([1.372] * 2)
        (ml,) = rows["mllm"].itertuples()
        assert ml.decode_s == pytest.approx(128 / 78.11022) and ml.ttft_s == pytest.approx(0.90238605)
        (ort,) = rows["ortgenai"].itertuples()
        assert (ort.n_gen, ort.decode_s, ort.peak_rss_bytes) == (127, pytest.approx(23.515701), 2864254976)
        mlc = rows["mlc"]
        assert mlc["prefill_s"].tolist() == pytest.approx([32 / 48.7] * 2)
        prov = {b: jobs[(b, device)].provenance for b in SAMPLES}
        assert "drops the first" in prov["mnn"]["definitions"]
        assert "includes tokenising" in prov["executorch"]["definitions"]
        assert "wrong for runs != 3" in prov["mllm"]["definitions"]
        # the raw output is kept, and it shows the command farm built from the cell
        argv = {b: next(ln for ln in prov[b]["raw_output"].splitlines() if ln.startswith("stand-in argv:"))
                for b in SAMPLES}
        assert " -t 1 -p 512 -n 128 -rep 1" in argv["mnn"] and "/config.json -a cpu" in argv["mnn"]
        assert "--max_new_tokens 53 --temperature 0 --ignore_eos --cpu_threads 1" in argv["executorch"]
        assert "-t 1 -pp 128 -tg 128 -cl 256 -r 2 -cs 0" in argv["mllm"]
        assert "-l 2 -g 128 -r 2 -w 0 -e cpu" in argv["ortgenai"]
        assert argv["mlc"].startswith("stand-in argv: chat ")
        assert jobs[("mnn", device)].bytes_pushed > 0


DEPTH_SWEEP = """
version: 1
name: lab-depth
models: [farm-tiny]
quants: [q4_0]
backends: [reference]
devices: [phone1, phone2]
prompt_tokens: [16]
gen_tokens: [8]
depth: [0, 512]
repetitions: 2
warmup: 0
power: true
idle_s: 0.5
thermal_gate: false  # depth and its energy records are under test; the gate with its defaults: test_lab_profiles
"""


def test_depth_sweep_on_the_virtual_phones(lab, tmp_path: Path) -> None:
    inv = load_inventory(lab.inventory_path)
    store = Store(f"sqlite:///{tmp_path / 'farm.db'}")
    sweep = loads_sweep(DEPTH_SWEEP)
    plan = make_plan(sweep, inv, "depth")
    store.create_run(sweep.name, plan.jobs, run_id="depth")
    LocalExecutor(store, inv).submit("depth", plan.jobs)
    assert all(j.status == "done" for j in store.job_rows("depth")), [j.error for j in store.job_rows("depth")]
    df = store.results_frame("depth")
    got = sorted(set(zip(df["device"], df["n_depth"], df["test"], strict=True)))
    assert got == [("phone1", 0, "pp16+tg8"), ("phone1", 512, "pp16+tg8@d512"),
                   ("phone2", 0, "pp16+tg8"), ("phone2", 512, "pp16+tg8@d512")]
    # energy is still per phase: the depth's fill is outside both timed phases
    assert df["prefill_energy_j"].notna().all() and df["decode_energy_j"].notna().all()
    print("\nfarm-tiny q4_0 pp16+tg8 on the virtual phones (aarch64 under qemu), by depth:")
    print(df.groupby(["device", "n_depth"])[["prefill_tps", "decode_tps", "decode_j_per_tok"]].median().to_string())
    for device in ("phone1", "phone2"):
        d = df[df["device"] == device]
        # decode attends over 512 more positions at depth 512 (the aarch64 engine under qemu)
        assert d[d["n_depth"] == 512]["decode_s"].min() > d[d["n_depth"] == 0]["decode_s"].min()
