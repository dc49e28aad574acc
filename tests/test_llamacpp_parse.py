"""llama-bench output parsing against the real README samples (json, jsonl, md) and schema drift."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from farm.backends.llamacpp import (
    KNOWN_KEYS,
    LlamaCppBackend,
    parse_markdown,
    parse_records,
    repetitions,
)
from farm.backends.llamacpp import test_name as name_of
from farm.errors import JobError
from farm.jobs import Job, ModelRef
from farm.transports.base import CommandResult

DATA = Path(__file__).parent / "data" / "llamacpp"


def _sample() -> list[dict]:
    return json.loads((DATA / "readme.json").read_text())


def test_json_sample_every_repetition_by_key() -> None:
    recs = parse_records((DATA / "readme.json").read_text())
    assert [r.test for r in recs] == ["pp512", "tg128"]
    pp, tg = recs
    assert pp.samples_ns == [74601900, 71632900, 71745200, 71952700, 70745500]
    assert tg.samples_ns[-1] == 1089692600
    # t/s = tokens / (ns·1e-9) reproduces llama-bench's own samples_ts to its printed precision
    assert pp.samples_ts == pytest.approx(pp.fields["samples_ts"], rel=1e-4)
    assert tg.samples_ts == pytest.approx(tg.fields["samples_ts"], rel=1e-4)
    assert pp.fields["build_commit"] == "8cf427ff" and pp.fields["model_n_params"] == 7615616512
    assert pp.flash_attn == "off" and pp.extra == {}


def test_jsonl_equals_json() -> None:
    jsonl = "\n".join(json.dumps(o) for o in _sample()) + "\n"
    a, b = parse_records(jsonl), parse_records((DATA / "readme.json").read_text())
    assert [(r.test, r.samples_ns, r.fields) for r in a] == [(r.test, r.samples_ns, r.fields) for r in b]


def test_newer_schema_flash_attn_int_and_unknown_keys_kept() -> None:
    objs = _sample()
    for o in objs:
        o["flash_attn"] = -1
        o.update({"devices": "CUDA0", "n_cpu_moe": 0, "no_op_offload": 0, "use_direct_io": False,
                  "tensor_buft_overrides": "none"})
    # key order must not matter: reverse every record's keys
    text = json.dumps([dict(reversed(list(o.items()))) for o in objs])
    recs = parse_records("main: loading model\n" + text)
    assert recs[0].flash_attn == "auto"
    assert recs[0].extra == {"devices": "CUDA0", "n_cpu_moe": 0, "no_op_offload": 0, "use_direct_io": False,
                             "tensor_buft_overrides": "none"}
    assert not set(recs[0].extra) & KNOWN_KEYS
    assert recs[1].samples_ns == _sample()[1]["samples_ns"]


def test_names_pp_tg_combined_and_depth() -> None:
    assert name_of(512, 0) == "pp512"
    assert name_of(0, 128) == "tg128"
    assert name_of(512, 128) == "pp512+tg128"
    assert name_of(512, 0, 512) == "pp512@d512"
    assert name_of(0, 128, 512) == "tg128@d512"
    o = {**_sample()[0], "n_prompt": 512, "n_gen": 128, "n_depth": 512}
    assert parse_records(json.dumps(o))[0].test == "pp512+tg128@d512"


def test_markdown_samples() -> None:
    rows = parse_markdown((DATA / "readme-pp512-tg128.md").read_text())
    assert [r["test"] for r in rows] == ["pp512", "tg128"]
    assert rows[0]["avg_ts"] == 2368.80 and rows[0]["stddev_ts"] == 93.24 and rows[0]["ngl"] == "99"
    depth = parse_markdown((DATA / "readme-depth.md").read_text())
    assert [r["test"] for r in depth] == ["pp512", "tg128", "pp512@d512", "tg128@d512"]
    threads = parse_markdown((DATA / "readme-threads.md").read_text())
    assert threads[0]["threads"] == "1" and "ngl" not in threads[0] and threads[1]["test"] == "tg16"


def _job(p: int, g: int, reps: int = 5) -> Job:
    return Job(job_id="j", run_id="r", index=0, device="local", profile="host", backend="llamacpp",
               model=ModelRef(card="farm-tiny"), quant="q4_0", n_prompt=p, n_gen=g, threads=1, repetitions=reps,
               warmup=1)


def test_job_repetitions_join_pp_and_tg_samples() -> None:
    reps = repetitions(parse_records((DATA / "readme.json").read_text()), 512, 128)
    assert len(reps) == 5
    assert reps[0].prefill_s == pytest.approx(0.0746019) and reps[0].decode_s == pytest.approx(1.0753613)
    assert reps[2].decode_tps == pytest.approx(119.43, rel=1e-4)
    assert reps[0].ttft_s == reps[0].prefill_s
    only_tg = repetitions(parse_records((DATA / "readme.json").read_text()), 0, 128)
    assert only_tg[0].prefill_s is None and only_tg[0].n_prompt == 0


def _result(exit_code: int, stdout: str, stderr: str = "") -> CommandResult:
    return CommandResult(command="llama-bench", exit_code=exit_code, stdout=stdout, stderr=stderr, duration_s=1.0)


def test_backend_parse_errors_are_job_errors() -> None:
    be = LlamaCppBackend()
    with pytest.raises(JobError, match="exited 1"):
        be.parse(_result(1, stdout="", stderr="error: failed to load model"), _job(512, 128))
    with pytest.raises(JobError, match="markdown"):
        be.parse(_result(0, stdout=(DATA / "readme-pp512-tg128.md").read_text()),
                 _job(512, 128))
    with pytest.raises(JobError, match="did not report"):
        be.parse(_result(0, stdout=(DATA / "readme.json").read_text()), _job(64, 32))
    out = be.parse(_result(0, stdout=(DATA / "readme.json").read_text()), _job(512, 128))
    assert out.provenance["llama_bench"]["build_commit"] == "8cf427ff"
    assert [r["test"] for r in out.raw["records"]] == ["pp512", "tg128"]


def test_depth_records_are_the_ones_a_depth_job_takes() -> None:
    """`-d 0,512` prints each test at both depths (n_depth 0 and 512): a job at depth 512 takes only the latter."""
    base = _sample()
    deep = [{**r, "n_depth": 512, "samples_ns": [s * 2 for s in r["samples_ns"]]} for r in base]
    records = parse_records(json.dumps(base + deep))
    assert [r.test for r in records] == ["pp512", "tg128", "pp512@d512", "tg128@d512"]
    flat, at = repetitions(records, 512, 128), repetitions(records, 512, 128, 512)
    assert [r.prefill_s for r in at] == pytest.approx([2 * r.prefill_s for r in flat])
    job = _job(512, 128).model_copy(update={"n_depth": 512})
    assert job.test == "pp512+tg128@d512"
    argv = LlamaCppBackend().command(job, {"engine": "/d/lb", "model": "/d/m.gguf"})
    assert argv[argv.index("-d") + 1] == "512"
    assert "-d" not in LlamaCppBackend().command(_job(512, 128), {"engine": "/d/lb", "model": "/d/m.gguf"})
    with pytest.raises(JobError, match=r"pp512@d256 and tg128@d256: got pp512, tg128, pp512@d512"):
        repetitions(records, 512, 128, 256)
