"""Parsers of MNN, ExecuTorch, mllm, ONNX Runtime GenAI and MLC outputs, on the real samples in tests/data/engines
(see its README: verbatim from shared/samples/engines.md, or built from the engine's format strings where said).

Every expected number is worked out by hand in the comment beside it: seconds = tokens / the engine's rate, or
the difference of its timestamps.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from farm.backends.executorch import ExecuTorchBackend
from farm.backends.mlc import MlcBackend
from farm.backends.mllm import MllmBackend
from farm.backends.mnn import MnnBackend
from farm.backends.ortgenai import OrtGenAIBackend
from farm.backends.prebuilt import join_phases
from farm.errors import JobError

DATA = Path(__file__).parent / "data" / "engines"


def text(name: str) -> str:
    return (DATA / name).read_text()


def test_mnn_issue_3392_table_pp_tg_and_blended_row() -> None:
    pp, tg, both = MnnBackend.parse_text(text("mnn-3392.md"))
    assert (pp.test, tg.test, both.test) == ("pp512", "tg128", "pp512+tg128")
    assert pp.threads == 4 and pp.summary_only
    assert pp.repetitions[0].prefill_s == pytest.approx(0.5140407, rel=1e-6)  # 512 / 996.03
    assert pp.repetitions[0].prefill_tps == pytest.approx(996.03)
    assert pp.reported["std"] == 16.28 and pp.reported["model_size"] == "265.09 MiB"
    assert tg.repetitions[0].decode_s == pytest.approx(0.7522332, rel=1e-6)  # 128 / 170.16
    # ≤ 3.6.1: the pp+tg rate is of the summed times, which no one can split into phases: kept, not stored
    assert both.repetitions == [] and both.reported["blended_tps"] == 514.65
    # a job pp512 + tg128 joins the pp row's prefill and the tg row's decode
    (rep,) = join_phases([pp, tg, both], 512, 128, 0, "llm_bench")
    assert (rep.prefill_s, rep.decode_s) == (pp.repetitions[0].prefill_s, tg.repetitions[0].decode_s)


def test_mnn_current_pg_layout_prefill_br_decode() -> None:
    (m,) = MnnBackend.parse_text(text("mnn-docs-pg.md"))
    assert m.test == "pp512+tg128" and m.reported["precision"] == "Low" and m.reported["backend"] == "METAL"
    r = m.repetitions[0]
    assert r.prefill_s == pytest.approx(0.1011570, rel=1e-6)  # 512 / 5061.44
    assert r.decode_s == pytest.approx(0.4362645, rel=1e-6)  # 128 / 293.40
    assert (m.reported["prefill_std"], m.reported["decode_std"]) == (9.30, 0.42)


def test_mnn_precision_column_and_old_kv_layout() -> None:
    (m,) = MnnBackend.parse_text(text("mnn-3806-precision.md"))
    assert m.test == "tg128" and m.repetitions[0].decode_s == pytest.approx(2.8082492, rel=1e-6)  # 128 / 45.58
    (kv,) = MnnBackend.parse_text(text("mnn-kv-3.6.1.md"))
    assert kv.test == "pp512+tg128"
    assert kv.repetitions[0].prefill_s == pytest.approx(0.8173691, rel=1e-6)  # 512 / 626.40
    assert kv.repetitions[0].decode_s == pytest.approx(2.3473317, rel=1e-6)  # 128 / 54.53


def test_mnn_one_table_per_process_is_one_repetition_each() -> None:
    two = text("mnn-3392.md") + "\n" + text("mnn-3392.md").replace("996.03 ± 16.28", "1000.00 ± 0.00")
    reps = join_phases(MnnBackend.parse_text(two), 512, 128, 0, "llm_bench")
    assert [r.prefill_s for r in reps] == pytest.approx([512 / 996.03, 0.512])  # 512 / 1000.00


def test_executorch_observer_line_by_name_old_and_new_keys() -> None:
    for name in ("executorch-arm.txt", "executorch-newer.txt"):
        (m,) = ExecuTorchBackend.parse_text(text(name))
        (r,) = m.repetitions
        assert (r.n_prompt, r.n_gen) == (54, 53)
        assert r.prefill_s == pytest.approx(0.185)  # 1710296034544 - 1710296034359 ms, tokenisation included
        assert r.decode_s == pytest.approx(1.372)  # 1710296035916 - 1710296034544 ms
        assert r.ttft_s == pytest.approx(0.185)  # first_token_ms - inference_start_ms
        # the same rates stats.h prints: 291.891892 and 38.629738 tokens/second
        assert r.prefill_tps == pytest.approx(291.891892) and r.decode_tps == pytest.approx(38.629738)
    (newer,) = ExecuTorchBackend.parse_text(text("executorch-newer.txt"))
    assert newer.reported["runs"][0]["aggregate_model_execution_time_ms"] == 1549
    with pytest.raises(JobError, match="lacks"):
        ExecuTorchBackend.parse_text('PyTorchObserver {"prompt_tokens": 3}')


def test_mllm_per_run_lines_not_the_printed_average() -> None:
    (m,) = MllmBackend.parse_text(text("mllm-readme.txt"))
    (r,) = m.repetitions  # the README omits runs 2 and 3: only run 1 is data
    assert (m.n_prompt, m.n_gen) == (128, 128)
    assert r.ttft_s == pytest.approx(0.90238605)  # 902.38605 ms
    assert r.prefill_s == pytest.approx(0.9023860, rel=1e-6)  # 128 / 141.84618 (= TTFT: prefill speed is PP/TTFT)
    assert r.decode_s == pytest.approx(1.6387100, rel=1e-6)  # 128 / 78.11022
    # the printed Average (sum / 3 whatever --runs is) is kept as printed and never used
    assert m.reported["printed_average"]["Prefill Speed"] == 140.24936
    assert r.prefill_tps != pytest.approx(140.24936)


def test_mllm_runs_not_three_give_their_own_mean() -> None:
    head, run = text("mllm-readme.txt").split("  [runs")[0].rsplit("----------------------------------------\n", 1)
    speeds = [70.0, 75.0, 80.0, 85.0, 90.0]  # five runs of the README's run block, decode speeds varied
    five = head + "----------------------------------------\n" + "".join(
        run.replace("Run 1 of 3", f"Run {i + 1} of 5").replace("78.11022", str(v)) for i, v in enumerate(speeds))
    (m,) = MllmBackend.parse_text(five)
    assert m.reported["runs_declared"] == 5
    assert [r.decode_tps for r in m.repetitions] == pytest.approx(speeds)
    # the mean farm reports is 80.0; mllm's own printed "average" would be sum / 3 = 400 / 3 = 133.3
    assert sum(r.decode_tps for r in m.repetitions) / 5 == pytest.approx(80.0)


def test_ortgenai_report_averages_as_one_repetition() -> None:
    (m,) = OrtGenAIBackend.parse_text(text("ortgenai-android.txt"))
    (r,) = m.repetitions
    assert m.summary_only and (r.n_prompt, r.n_gen) == (2, 127)  # n: 635 * 1 token(s) over 5 repetitions
    assert r.prefill_s == pytest.approx(0.140607) and r.ttft_s == pytest.approx(0.140607)  # 140607 us
    assert r.decode_s == pytest.approx(23.515701)  # 127 tokens × 185163 us
    assert r.prefill_tps == pytest.approx(14.224, rel=1e-4)  # what it printed: 14.224
    assert r.decode_tps == pytest.approx(5.40064, rel=1e-5)  # what it printed: 5.40064
    assert r.peak_rss_bytes == 2864254976
    assert m.reported["token_generation_stddev_us"] == 40530.6


def test_mlc_stats_needs_token_counts() -> None:
    with pytest.raises(JobError, match="no token counts"):
        MlcBackend.parse_text(text("mlc-stats.txt"))
    (m,) = MlcBackend.parse_text(text("mlc-stats.txt"), (32, 64))
    r = m.repetitions[0]
    assert r.prefill_s == pytest.approx(0.6570842, rel=1e-6)  # 32 / 48.7
    assert r.decode_s == pytest.approx(1.2121212, rel=1e-6)  # 64 / 52.8


@pytest.mark.parametrize("backend", [MnnBackend, ExecuTorchBackend, MllmBackend, OrtGenAIBackend, MlcBackend])
def test_foreign_output_is_refused_with_the_reason(backend) -> None:
    with pytest.raises(JobError, match="no "):
        backend.parse_text(text("executorch-arm.txt") if backend is not ExecuTorchBackend else text("mnn-3392.md"),
                           (1, 1))


def _job(**kw):  # type: ignore[no-untyped-def]
    from farm.jobs import Job, ModelRef

    base = dict(job_id="j", run_id="r", index=0, device="phone", profile="pixel-8", backend="mnn",
                model=ModelRef(card="m"), quant="q4_0", n_prompt=512, n_gen=128, threads=4, repetitions=3, warmup=1)
    return Job(**{**base, **kw})


def test_engines_without_a_depth_option_refuse_depth_and_say_so(tmp_path: Path) -> None:
    from farm.devices import load_profile

    exe = tmp_path / "llm_bench"
    exe.write_text("#!/bin/sh\n")
    opts = {"binary": {"arm64-v8a": str(exe)}, "model_dir": str(tmp_path)}
    phone = load_profile("pixel-8")
    ok, why = MnnBackend(**opts).accepts(_job(n_depth=512), phone)
    assert not ok and why == "depth 512: llm_bench has no KV-depth option (tg always starts from a 1-token context)"
    assert MnnBackend(**opts).accepts(_job(), phone) == (True, "")
    ok, why = MnnBackend(**opts).accepts(_job(), load_profile("jetson-orin-nano"))
    assert not ok and "no mnn binary for ABI aarch64" in why
    for backend in (ExecuTorchBackend, MlcBackend):
        assert "no KV-depth option" in backend(**opts).accepts(_job(n_depth=1), phone)[1]
    ok, why = OrtGenAIBackend(**opts).accepts(_job(), phone)  # no thread flag: the lab must say what the model uses
    assert not ok and "no thread flag" in why
    assert OrtGenAIBackend(**opts, threads=4).accepts(_job(), phone) == (True, "")


def test_binary_by_url_is_verified_by_sha256(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    from farm.backends.prebuilt import Download, fetch
    from farm.errors import ConfigError

    monkeypatch.setenv("FARM_HOME", str(tmp_path / "home"))  # the cache under test, not the session's
    src = tmp_path / "llm_bench"
    src.write_bytes(b"\x7fELF stand-in")
    good = hashlib.sha256(src.read_bytes()).hexdigest()
    got = fetch(Download(url=src.as_uri(), sha256=good))
    assert got.read_bytes() == src.read_bytes() and (tmp_path / "home" / "cache" / "prebuilt") in got.parents
    with pytest.raises(ConfigError, match=r"is not the 0{64} the options name"):
        fetch(Download(url=src.as_uri(), sha256="0" * 64))


def test_bad_engine_options_are_refused_at_plan_time_with_file_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    sweep = tmp_path / "s.yaml"
    body = ("version: 1\nname: s\nmodels: [farm-tiny]\nquants: [q4_0]\nprompt_tokens: [8]\ngen_tokens: [8]\n"
            "backends:\n  - name: mnn\n    options:\n      model_dir: /nowhere\n      binary: {arm64-v8a: /x}\n"
            "      colour: red\n")
    sweep.write_text(body)
    out = subprocess.run([sys.executable, "-m", "farm.cli.main", "plan", str(sweep)], capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert f"{sweep}:12: backend 'mnn': unknown option 'colour'; known: binary" in out.stderr, out.stderr
    sweep.write_text(body.replace("      colour: red\n", "").replace("      model_dir: /nowhere\n", ""))
    out = subprocess.run([sys.executable, "-m", "farm.cli.main", "plan", str(sweep)], capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    assert f"{sweep}:9: backend 'mnn': missing required key 'model_dir'" in out.stderr, out.stderr


def test_stand_in_mnn_directory_binary_on_this_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A binary given as a directory (program + its .so) runs from its re-linked directory with LD_LIBRARY_PATH
    pointing there; the stand-in program is a shell script printing a recorded llm_bench table."""
    from farm.agent.devices import DevicePool
    from farm.agent.runner import run_job
    from farm.devices import load_inventory
    from farm.jobs import Job, ModelRef

    monkeypatch.setenv("FARM_HOME", str(tmp_path / "home"))  # the device workdir and caches of this test only
    bindir, models = tmp_path / "mnn-bin", tmp_path / "model"
    bindir.mkdir()
    models.mkdir()
    (models / "config.json").write_text("{}")
    (bindir / "libMNN.so").write_text("not really a library")
    table = (DATA / "mnn-3392.md").read_text()
    (bindir / "llm_bench").write_text(
        '#!/bin/sh\n[ -f "$LD_LIBRARY_PATH/libMNN.so" ] || { echo "no libMNN.so beside me" >&2; exit 3; }\n'
        f'[ -f "$2" ] || {{ echo "no $2" >&2; exit 3; }}\ncat <<"EOF"\n{table}EOF\n')
    (bindir / "llm_bench").chmod(0o755)
    pool = DevicePool(load_inventory(None))
    try:
        job = Job(job_id="t-mnn", run_id="t", index=0, device="local", profile=pool.entry("local").profile,
                  backend="mnn", backend_options={"binary": {pool.profile("local").abi: str(bindir)},
                                                  "program": "llm_bench", "model_dir": str(models),
                                                  "engine_commit": "4d40bdbd"},
                  model=ModelRef(card="qwen"), quant="q4_0", n_prompt=512, n_gen=128, threads=1, repetitions=2,
                  warmup=1, thermal_gate=False, power=False, idle_s=0)  # parsing only
        res = run_job(job, pool.entry("local"), pool.profile("local"), pool.transport("local"))
    finally:
        pool.close()
    assert res.status == "done", res.error
    assert [r.prefill_s for r in res.repetitions] == pytest.approx([512 / 996.03] * 2)  # 3 processes, 1st dropped
    assert res.raw["stdout"].count("FARM_REP") == 3
    assert res.provenance["engine_commit"] == "4d40bdbd" and res.provenance["engine"] == "MNN"


def test_every_registered_prebuilt_engine_keeps_the_contract(tmp_path: Path) -> None:
    """Same checks over every registered engine farm runs but does not build: a new one is tested by registering it."""
    from farm.backends import BACKENDS
    from farm.backends.prebuilt import PrebuiltBackend
    from farm.errors import ConfigError

    prebuilt = {n: BACKENDS.get(n) for n in BACKENDS.names()
                if isinstance(BACKENDS.get(n), type) and issubclass(BACKENDS.get(n), PrebuiltBackend)}
    assert set(prebuilt) >= {"mnn", "executorch", "mllm", "ortgenai", "mlc"}
    for name, cls in prebuilt.items():
        assert cls.name == name and cls.engine and cls.definitions
        with pytest.raises(JobError):
            cls.parse_text("", (8, 8))  # nothing printed is never a result
        with pytest.raises(ConfigError, match=f"{name} options"):
            cls(binary={"aarch64": str(tmp_path)}, model_dir=str(tmp_path), colour="red")
