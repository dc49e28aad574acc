"""Planning: expansion, memory fit with reasons, ordering, estimates; golden file of the description."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from farm.devices import load_inventory
from farm.plan import describe, make_plan
from farm.spec import load_sweep, loads_sweep

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden" / "plan-golden.txt"


@pytest.fixture()
def plan(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):  # type: ignore[no-untyped-def]
    monkeypatch.chdir(tmp_path)  # nothing may depend on the working directory
    inventory = load_inventory(HERE / "data" / "plan-inventory.yaml")
    return make_plan(load_sweep(HERE / "data" / "plan-sweep.yaml"), inventory, run_id="golden")


def test_plan_matches_golden_file(plan) -> None:  # type: ignore[no-untyped-def]
    text = describe(plan) + "\n"
    if os.environ.get("FARM_UPDATE_GOLDEN"):
        GOLDEN.write_text(text)
    assert text == GOLDEN.read_text(), "plan changed; if intended, rerun with FARM_UPDATE_GOLDEN=1"


def test_cells_that_do_not_fit_are_dropped_with_reasons(plan) -> None:  # type: ignore[no-untyped-def]
    reasons = [d.reason for d in plan.dropped]
    # 1.5B in f16 is ~3 GiB: never fits a 512 MiB budget; 8 threads exceed 4 cores.
    assert any(d.cell["model"] == "qwen2.5-1.5b" and "GiB" in d.reason for d in plan.dropped)
    assert any("8 threads > 4 cores" in r for r in reasons)
    assert any(r == "excluded by a rule" for r in reasons)
    for job in plan.jobs:
        assert job.mem_bytes <= plan.profiles["test-board"].usable_ram_bytes
        assert job.threads <= 4


def test_jobs_are_grouped_by_model_and_ordered_light_first(plan) -> None:  # type: ignore[no-untyped-def]
    assert [j.index for j in plan.jobs] == list(range(len(plan.jobs)))
    for device in ("board-a", "board-b"):
        seq = [(j.model.label, j.quant) for j in plan.jobs if j.device == device]
        # each model file appears as one contiguous block: pushed once per device
        blocks = [k for i, k in enumerate(seq) if i == 0 or seq[i - 1] != k]
        assert len(blocks) == len(set(blocks))
    ids = [j.job_id for j in plan.jobs]
    assert len(ids) == len(set(ids))


def test_estimate_grows_with_work(plan) -> None:  # type: ignore[no-untyped-def]
    by_test = {(j.model.label, j.quant, j.test): j.est_s for j in plan.jobs if j.device == "board-a"}
    assert by_test[("qwen2.5-0.5b", "q4_0", "pp128+tg32")] > by_test[("qwen2.5-0.5b", "q4_0", "pp128")]
    assert by_test[("qwen2.5-0.5b", "q4_0", "pp128")] > by_test[("farm-tiny", "q4_0", "pp128")]
    assert plan.est_s > 0


def test_include_rules_and_architecture_variants() -> None:
    sweep = loads_sweep("""
version: 1
name: v
models:
  - card: farm-tiny
    vary: {n_layers: [2, 4, 6]}
quants: [q4_0, q8_0]
prompt_tokens: [16]
gen_tokens: [8]
include:
  - {quant: q8_0}
""")
    plan = make_plan(sweep, load_inventory(None), "r")
    assert sorted(j.model.label for j in plan.jobs) == [
        "farm-tiny[n_layers=2]", "farm-tiny[n_layers=4]", "farm-tiny[n_layers=6]"]
    assert {j.quant for j in plan.jobs} == {"q8_0"}


DEPTH_SWEEP = """
version: 1
name: depth
models: [qwen2.5-0.5b]
quants: [q4_0]
devices: [board-a]
prompt_tokens: [32]
gen_tokens: [16]
depth: [0, 512, 60000]
exclude:
  - {depth: 512, threads: 2}
threads: [1, 2]
"""


def test_depth_axis_names_tests_fits_kv_at_depth_and_is_a_rule_key() -> None:
    from farm.plan import memory_needed
    from farm.zoo.cards import load_card

    inventory = load_inventory(HERE / "data" / "plan-inventory.yaml")
    plan = make_plan(loads_sweep(DEPTH_SWEEP), inventory, run_id="depth")
    kept = sorted((j.threads, j.n_depth, j.test) for j in plan.jobs)
    assert kept == [(1, 0, "pp32+tg16"), (1, 512, "pp32+tg16@d512"), (2, 0, "pp32+tg16")]
    arch = load_card("qwen2.5-0.5b").architecture
    at = {j.n_depth: j for j in plan.jobs}
    # the KV cache of depth + pp + tg positions: 512 more positions cost exactly their KV bytes
    assert at[512].mem_bytes - at[0].mem_bytes == arch.kv_cache_bytes(560, "f16") - arch.kv_cache_bytes(48, "f16")
    assert at[512].mem_bytes == memory_needed(arch, "q4_0", 512 + 32 + 16, "f16", None)
    assert len({j.job_id for j in plan.jobs}) == 3
    reasons = {(d.cell.get("depth"), d.cell["threads"]): d.reason for d in plan.dropped}
    assert reasons[(512, 2)] == "excluded by a rule"
    assert "GiB (weights + KV cache + scratch)" in reasons[(60000, 1)]  # 60k positions do not fit 512 MiB
    assert "depth=60000" in describe(plan) and "pp32+tg16@d512" in describe(plan)


def test_a_backend_without_depth_drops_its_depth_cells_with_the_reason() -> None:
    inventory = load_inventory(HERE / "data" / "plan-inventory.yaml")
    sweep = loads_sweep(DEPTH_SWEEP.replace("depth: [0, 512, 60000]", "depth: [0, 512]").replace(
        "models: [qwen2.5-0.5b]", "models: [qwen2.5-0.5b]\nbackends: [reference, {name: mllm, options: "
        "{binary: {aarch64: /x}, model_dir: /m, model_name: qwen3}}]"))
    plan = make_plan(sweep, inventory, run_id="depth")
    assert sorted((j.backend, j.n_depth) for j in plan.jobs if j.threads == 1) == [
        ("mllm", 0), ("reference", 0), ("reference", 512)]
    (why,) = [d.reason for d in plan.dropped if d.cell["backend"] == "mllm" and d.cell["threads"] == 1]
    assert why == "mllm: mllm-llm-benchmark starts every run from an empty cache (-cl only sizes it)"
