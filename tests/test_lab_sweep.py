"""A real sweep on the virtual lab: two phones (real adb server) + one board (real sshd), reference
engine built for aarch64 and run under qemu on the devices, power sampled on the devices, every
result stored.

The lab feeds every device's power sensors from idle + k × the CPU its own processes use (the
phones' fuel gauges, the board's INA3221 rails), so the engine running is what makes power rise:
the energy figures below are measured by farm through the real sampler, not written by the test.
The sweep runs twice: the second time every artifact is already on the devices (0 bytes pushed).
Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from farm.devices import Inventory, load_inventory, load_profile
from farm.executors.local import LocalExecutor
from farm.plan import make_plan
from farm.power import Phase, open_session
from farm.spec import loads_sweep
from farm.store import Store

DEVICES = ("phone1", "phone2", "board1")
WORKDIRS = {"phone1": "/data/local/tmp/farm", "phone2": "/data/local/tmp/farm", "board1": "/var/tmp/farm"}
SOURCES = {"phone1": {"android_battery"}, "phone2": {"android_battery"}, "board1": {"jetson_ina3221", "tegrastats"}}


def is_aarch64_elf(path: Path) -> bool:
    """ELF64, little-endian, executable, machine EM_AARCH64 (any OS/ABI byte)."""
    head = path.read_bytes()[:20]
    return head[:6] == b"\x7fELF\x02\x01" and head[16:20] == b"\x02\x00\xb7\x00"


SWEEP = """
version: 1
name: lab-sweep
models: [farm-tiny]
quants: [q4_0]
backends: [reference]
devices: [phone1, phone2, board1]
prompt_tokens: [32]
gen_tokens: [32]
threads: [1]
repetitions: 2
warmup: 0
power: true
idle_s: 1.0
thermal_gate: false  # transports and energy judged here; the gate with defaults: test_lab_profiles
"""


def run_sweep(store: Store, inv: Inventory, run_id: str) -> None:
    sweep = loads_sweep(SWEEP)
    plan = make_plan(sweep, inv, run_id)
    assert {j.device for j in plan.jobs} == set(DEVICES)
    store.create_run(sweep.name, plan.jobs, run_id=run_id)
    LocalExecutor(store, inv).submit(run_id, plan.jobs)


@pytest.fixture(scope="module")
def swept(lab, tmp_path_factory: pytest.TempPathFactory) -> tuple[Store, Inventory]:
    """The sweep once, on devices whose farm workdir is empty (a first sweep on new devices)."""
    for name in DEVICES:
        workdir = lab.sandbox_file(name, WORKDIRS[name])
        for item in workdir.iterdir() if workdir.exists() else []:
            shutil.rmtree(item) if item.is_dir() and not item.is_symlink() else item.unlink()
    inv = load_inventory(lab.inventory_path)
    store = Store(f"sqlite:///{tmp_path_factory.mktemp('sweep') / 'farm.db'}")
    for d in inv.devices:
        store.upsert_device(d.name, d.profile, d.transport.kind)
    run_sweep(store, inv, "lab1")
    return store, inv


def test_sweep_on_two_phones_and_a_board(lab, swept):
    store, _ = swept
    jobs = store.job_rows("lab1")
    assert all(j.status == "done" for j in jobs), [(j.device, j.status, j.error) for j in jobs]
    df = store.results_frame("lab1")
    assert sorted(df["device"].value_counts().items()) == [("board1", 2), ("phone1", 2), ("phone2", 2)]
    assert (df["exit_status"] == 0).all() and df["error_class"].isna().all()
    assert (df["prefill_tps"] > 0).all() and (df["decode_tps"] > 0).all()
    assert set(df["profile"]) == {"lab-pixel-8", "lab-galaxy-s24", "lab-jetson-orin-nano"}
    # The engine each device ran is the aarch64 static build, executed there through qemu.
    for name in ("phone1", "board1"):
        root = lab.sandbox_file(name, WORKDIRS[name])
        elves = [p for p in root.rglob("*") if p.is_file() and is_aarch64_elf(p)]
        assert elves, f"no aarch64 engine staged under {WORKDIRS[name]} on {name}"


def test_energy_per_token_per_phase(lab, swept):
    store, _ = swept
    jobs = {j.device: j for j in store.job_rows("lab1")}
    df = store.results_frame("lab1")
    print("\nlab sweep energy (farm-tiny q4_0, 32 prompt + 32 generated tokens, 1 thread, aarch64 under qemu):")
    print(f"{'device':8} {'profile':22} {'source':16} {'unit,sign':28} {'idle W':>7} "
          f"{'prefill J/tok':>13} {'prefill W':>9} {'decode J/tok':>12} {'decode W':>8}")
    for name in DEVICES:
        power, rows = jobs[name].power, df[df["device"] == name]
        print(f"{name:8} {jobs[name].profile:22} {power['source']:16} {power['unit'] + ',' + power['sign']:28} "
              f"{power['idle_w'] or float('nan'):7.3f} {rows['prefill_j_per_tok'].mean():13.4f} "
              f"{rows['prefill_avg_w'].mean():9.3f} {rows['decode_j_per_tok'].mean():12.4f} "
              f"{rows['decode_avg_w'].mean():8.3f}")
    for name in DEVICES:
        power, rows = jobs[name].power, df[df["device"] == name]
        idle = power["idle_w"]
        assert power["source"] in SOURCES[name], power["source"]
        assert not power["modelled"] and not rows["power_modelled"].any()
        assert idle is not None and idle > 0
        feed = lab.device(name).feed
        assert idle == pytest.approx(feed.idle_w, rel=0.5)  # the device idles near its model's idle power
        if feed.android is not None:  # the vendor convention the gauge uses is the one farm recorded
            assert power["charging"] is False
            assert power["sign"] == feed.android.sign and power["unit"].startswith(feed.android.unit)
        for r in rows.itertuples():
            for phase, tokens, seconds in (("prefill", r.n_prompt, r.prefill_s), ("decode", r.n_gen, r.decode_s)):
                net, avg, per_tok = (getattr(r, f"{phase}_{k}") for k in ("energy_j", "avg_w", "j_per_tok"))
                assert net is not None and avg is not None and per_tok is not None, (name, r.rep, phase)
                # stored energy is net of the idle baseline: (average − idle) × duration, then ÷ tokens
                assert net == pytest.approx((avg - idle) * seconds, rel=1e-3, abs=1e-6)
                assert per_tok == pytest.approx(net / tokens, rel=1e-9)
            # the engine's CPU use is the load: decoding draws more than the idle device
            assert r.decode_avg_w > idle, (name, r.rep, r.decode_avg_w, idle)
            assert r.decode_j_per_tok > 0


def test_repeated_sweep_pushes_nothing(lab, swept):
    store, inv = swept
    run_sweep(store, inv, "lab2")
    first = {j.device: j.bytes_pushed for j in store.job_rows("lab1")}
    second = {j.device: j.bytes_pushed for j in store.job_rows("lab2")}
    print(f"\nbytes pushed per device, first sweep: {first}; repeated sweep: {second}")
    assert all(j.status == "done" for j in store.job_rows("lab2"))
    assert all(first[d] > 0 for d in DEVICES), first
    assert all(second[d] == 0 for d in DEVICES), second


def test_board_tegrastats_on_its_path_follows_the_load(lab, lab_transport):
    """The board's other power view: NVIDIA's tegrastats (the lab's stand-in on the board's PATH),
    read over ssh by farm's tegrastats source, rises while the board's CPUs are busy."""
    board = lab_transport("board1")
    assert board.shell("command -v tegrastats").stdout.strip() == "/usr/local/bin/tegrastats"
    profile = load_profile("lab-jetson-orin-nano", [str(lab.profile_dir)])
    profile = profile.model_copy(update={"power": profile.power.model_copy(update={"source": "tegrastats",
                                                                                   "options": {}})})
    session = open_session(board, profile, "/var/tmp/farm/tegrastats-check")
    session.measure_idle(1.0)
    session.start()
    t0 = session.source.sampler.now_ns()
    session.source.busy_load(2.0)  # every core of the board
    t1 = session.source.sampler.now_ns()
    session.stop()
    report = session.report([Phase("busy", 0, t0, t1, 1)])
    busy = report.phases[0]
    print(f"\nboard1 tegrastats: idle {report.idle_w:.3f} W, busy {busy.avg_w:.3f} W "
          f"({report.details['rail']}, {report.details['n_samples']} samples at {report.rate_hz_achieved:.1f} Hz)")
    assert report.source == "tegrastats" and report.details["rail"] == "VDD_IN"
    assert report.idle_w == pytest.approx(lab.device("board1").feed.idle_w, rel=0.2)
    assert busy.avg_w > report.idle_w


def test_lock_step_pair_runs_on_a_phone(lab, swept):
    """`farm regress --interleave step` on a phone: farm-pair and both engines staged (aarch64, run under
    qemu there), one job per pair, each repetition stored under its own variant and commit, no energy
    attributed to either side (their phases overlap in time)."""
    from farm import regress

    store, inv = swept
    sweep = loads_sweep(SWEEP.replace("devices: [phone1, phone2, board1]", "devices: [phone1]"))
    plan = make_plan(sweep, inv, "lab-ab")
    sides = (regress.Side("A", {"engine_commit": "a" * 40}, {}), regress.Side("B", {"engine_commit": "b" * 40}, {}))
    assert regress.step_interleave_supported("reference", sides)
    jobs = regress.ab_jobs(plan.jobs, sides, pairs=2, block=2, interleave="step")
    assert regress.prebuild(jobs, plan.profiles)["B"]["engine_commit"] == "b" * 40
    store.create_run(sweep.name, jobs, run_id="lab-ab", kind="regress")
    regress.execute(store, inv, "lab-ab", jobs)
    rows = store.job_rows("lab-ab")
    assert [j.status for j in rows] == ["done", "done"], [(j.status, j.error) for j in rows]
    df = regress.results_with_pairs(store, "lab-ab")
    assert sorted(zip(df["pair"], df["rep"], df["variant"], strict=True)) == [
        (p, r, v) for p in (0, 1) for r in (0, 1) for v in "AB"]
    assert set(zip(df["variant"], df["engine_commit"], strict=True)) == {("A", "a" * 40), ("B", "b" * 40)}
    assert (df["decode_tps"] > 0).all() and df["decode_j_per_tok"].isna().all()
    root = lab.sandbox_file("phone1", WORKDIRS["phone1"])
    assert any(p.name.endswith("-farm-pair") and is_aarch64_elf(p) for p in root.rglob("*") if p.is_file())
