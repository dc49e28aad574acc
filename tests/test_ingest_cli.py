"""`farm ingest` through the CLI: each real sample lands in the store with the values worked out by hand, and a
file that does not parse is refused with the reason (exit 2) with nothing stored."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from farm.store import Store

DATA = Path(__file__).parent / "data"
ENGINES = DATA / "engines"
LLAMA = DATA / "llamacpp"


def farm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "farm.cli.main", *args], capture_output=True, text=True, timeout=120)


def ingest(db: str, backend: str, *files: Path, extra: tuple[str, ...] = ()) -> list:
    out = farm("ingest", "--backend", backend, *map(str, files), "--device", "pixel-8-lab", "--model", "qwen",
               "--quant", "q4_0", "--db", db, *extra)
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.strip().splitlines()[-1].split()[1].rstrip(":")
    rows = Store(db).results(run_id)
    assert rows and all(r.device == "pixel-8-lab" and r.model == "qwen" and r.backend == backend for r in rows)
    return rows


def by_test(rows: list) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in rows:
        out.setdefault(r.test, []).append(r)
    return out


def test_llama_bench_json_every_sample(sqlite_url: str) -> None:
    rows = by_test(ingest(sqlite_url, "llamacpp", LLAMA / "readme.json"))
    pp, tg = rows["pp512"], rows["tg128"]
    assert [r.prefill_s for r in pp] == pytest.approx([0.0746019, 0.0716329, 0.0717452, 0.0719527, 0.0707455])
    assert pp[0].prefill_tps == pytest.approx(6863.1, rel=1e-4)  # 512 / 0.0746019 s
    assert tg[-1].decode_s == pytest.approx(1.0896926)  # samples_ns 1089692600
    assert {r.threads for r in pp} == {8}  # n_threads of the record


def test_llama_bench_jsonl_and_csv_forms(sqlite_url: str, tmp_path: Path) -> None:
    records = json.loads((LLAMA / "readme.json").read_text())
    jsonl = tmp_path / "bench.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))  # -o jsonl: one record a line
    rows = by_test(ingest(sqlite_url, "llamacpp", jsonl))
    assert len(rows["pp512"]) == 5 and rows["pp512"][1].prefill_s == pytest.approx(0.0716329)
    # -o csv (llama-bench's csv_printer: header of field names, every value quoted), derived from the same records
    fields = [k for k in records[0] if k not in ("samples_ns", "samples_ts")]
    csv = tmp_path / "bench.csv"
    csv.write_text(",".join(fields) + "\n" + "".join(",".join(f'"{r[k]}"' for k in fields) + "\n" for r in records))
    rows = by_test(ingest(sqlite_url, "llamacpp", csv))
    (pp,) = rows["pp512"]  # no samples in this CSV: its mean is the one repetition
    assert pp.prefill_s == pytest.approx(records[0]["avg_ns"] / 1e9)


def test_llama_bench_markdown_with_depth(sqlite_url: str) -> None:
    rows = by_test(ingest(sqlite_url, "llamacpp", LLAMA / "readme-depth.md"))
    assert set(rows) == {"pp512", "tg128", "pp512@d512", "tg128@d512"}
    (d,) = rows["pp512@d512"]
    assert d.n_depth == 512 and rows["pp512"][0].n_depth == 0
    assert d.prefill_s == pytest.approx(0.0796773, rel=1e-5)  # 512 / 6425.91 t/s
    assert rows["tg128@d512"][0].decode_s == pytest.approx(1.0967355, rel=1e-5)  # 128 / 116.71 t/s
    table = farm("results", d.run_id, "--db", sqlite_url).stdout  # the depth is part of the test's name
    assert "pp512@d512" in table and "tg128@d512" in table


def test_mnn_tables(sqlite_url: str) -> None:
    proc = farm("ingest", "--backend", "mnn", str(ENGINES / "mnn-3392.md"), "--device", "d", "--model", "m",
                "--db", sqlite_url)
    assert proc.returncode == 0, proc.stderr
    assert "skipped mnn-3392.md pp512+tg128" in proc.stdout  # the blended ≤ 3.6.1 rate: no per-phase split
    rows = by_test(ingest(sqlite_url, "mnn", ENGINES / "mnn-3392.md", ENGINES / "mnn-docs-pg.md"))
    assert rows["pp512"][0].prefill_s == pytest.approx(0.5140407, rel=1e-6)  # 512 / 996.03
    assert rows["tg128"][0].decode_s == pytest.approx(0.7522332, rel=1e-6)  # 128 / 170.16
    (pg,) = rows["pp512+tg128"]  # from the -pg layout only
    assert pg.prefill_s == pytest.approx(0.1011570, rel=1e-6)  # 512 / 5061.44
    assert pg.decode_s == pytest.approx(0.4362645, rel=1e-6)  # 128 / 293.40
    rows = by_test(ingest(sqlite_url, "mnn", ENGINES / "mnn-kv-3.6.1.md", ENGINES / "mnn-3806-precision.md"))
    assert rows["pp512+tg128"][0].prefill_s == pytest.approx(0.8173691, rel=1e-6)  # 512 / 626.40
    assert rows["pp512+tg128"][0].decode_s == pytest.approx(2.3473317, rel=1e-6)  # 128 / 54.53
    assert rows["tg128"][0].decode_s == pytest.approx(2.8082492, rel=1e-6)  # 128 / 45.58


def test_executorch_mllm_ortgenai_mlc(sqlite_url: str) -> None:
    et, newer = ingest(sqlite_url, "executorch", ENGINES / "executorch-arm.txt", ENGINES / "executorch-newer.txt")
    for r in (et, newer):  # the observer line with and without the keys newer builds add
        assert (r.n_prompt, r.n_gen, r.test) == (54, 53, "pp54+tg53")
        assert (r.prefill_s, r.decode_s, r.ttft_s) == pytest.approx((0.185, 1.372, 0.185))  # ms differences
    (ml,) = ingest(sqlite_url, "mllm", ENGINES / "mllm-readme.txt")
    assert ml.decode_s == pytest.approx(1.6387100, rel=1e-6)  # 128 / 78.11022, run 1 (not the average)
    assert ml.ttft_s == pytest.approx(0.90238605)
    (ort,) = ingest(sqlite_url, "ortgenai", ENGINES / "ortgenai-android.txt")
    assert (ort.n_prompt, ort.n_gen) == (2, 127)
    assert ort.decode_s == pytest.approx(23.515701)  # 127 × 185163 us
    assert ort.peak_rss_bytes == 2864254976
    (mlc,) = ingest(sqlite_url, "mlc", ENGINES / "mlc-stats.txt", extra=("--prompt-tokens", "32", "--gen-tokens", "64"))
    assert (mlc.prefill_s, mlc.decode_s) == pytest.approx((0.6570842, 1.2121212), rel=1e-6)  # 32/48.7, 64/52.8


def test_a_file_that_does_not_parse_is_refused_and_nothing_stored(sqlite_url: str) -> None:
    proc = farm("ingest", "--backend", "mnn", str(ENGINES / "mnn-3392.md"), str(ENGINES / "executorch-arm.txt"),
                "--device", "d", "--model", "m", "--db", sqlite_url)
    assert proc.returncode == 2
    assert "executorch-arm.txt: not mnn output: no llm_bench table" in proc.stderr
    assert Store(sqlite_url).results() == [] and Store(sqlite_url).runs() == []
    proc = farm("ingest", "--backend", "mlc", str(ENGINES / "mlc-stats.txt"), "--device", "d", "--model", "m",
                "--db", sqlite_url)
    assert proc.returncode == 2 and "no token counts" in proc.stderr
    proc = farm("ingest", "--backend", "reference", str(ENGINES / "mlc-stats.txt"), "--device", "d", "--model", "m",
                "--db", sqlite_url)
    assert proc.returncode == 2 and "no output parser" in proc.stderr
