"""The store on SQLite and PostgreSQL: migrations, idempotent upserts, leases, cancel, quarantine."""

from __future__ import annotations

import contextlib
from datetime import datetime, timedelta

import pytest
from sqlalchemy import func, inspect, select, update

from farm.dispatch import failed_result
from farm.errors import ConfigError
from farm.jobs import Job, JobResult, ModelRef, Repetition, utcnow
from farm.store import BUSY, Store
from farm.store.models import JobRow


def _jobs(run_id: str, n: int = 3) -> list[Job]:
    return [Job(job_id=f"{run_id}-j{i}", run_id=run_id, index=i, device="dev", profile="p", backend="reference",
                model=ModelRef(card="farm-tiny"), quant="q4_0", n_prompt=64, n_gen=16, threads=2, repetitions=3,
                warmup=1) for i in range(n)]


def _result(job: Job, reps: int = 3, status: str = "done") -> JobResult:
    return JobResult(job_id=job.job_id, run_id=job.run_id, device=job.device, status=status,  # type: ignore[arg-type]
                     repetitions=[Repetition(rep=i, n_prompt=64, n_gen=16, prefill_s=0.1 + i / 100, decode_s=0.5,
                                             ttft_s=0.12, peak_rss_bytes=10 << 20) for i in range(reps)],
                     provenance={"engine_commit": "abc123", "model_sha256": "f" * 64}, power={"charging": False},
                     thermal={"throttled": False}, trace="eJwDAAAAAAE=")



def _reap(store: Store, now: datetime) -> list[str]:
    """What a reaper does with expired leases: requeue those jobs (ids)."""
    return [j.job_id for j, _, _ in store.expired_jobs("local", now)
            if store.requeue(j.job_id, "lease expired", lease_expired_before=now)]


def _fail(store: Store, job: Job, error_class: str, error: str) -> None:
    store.save_result(failed_result(job, error_class, error), job)


def test_schema_is_migrated(store_url: str) -> None:
    store = Store(store_url)
    tables = set(inspect(store.engine).get_table_names())
    assert {"runs", "jobs", "results", "devices", "models", "engine_builds", "traces", "alembic_version"} <= tables


def test_result_upsert_is_idempotent(store_url: str) -> None:
    store = Store(store_url)
    jobs = _jobs("r1")
    store.create_run("t", jobs, run_id="r1")
    for _ in range(3):  # an agent re-flushing its spool, a redelivered task
        store.save_result(_result(jobs[0]), jobs[0])
    rows = store.results("r1")
    assert [(r.job_id, r.rep) for r in rows] == [("r1-j0", 0), ("r1-j0", 1), ("r1-j0", 2)]
    assert rows[0].prefill_tps == 64 / 0.1 and rows[0].decode_tps == 16 / 0.5
    assert rows[0].engine_commit == "abc123"
    # A later attempt with fewer repetitions replaces, never mixes.
    store.save_result(_result(jobs[0], reps=2), jobs[0])
    assert len(store.results("r1")) == 2
    df = store.results_frame("r1")
    assert len(df) == 2 and set(df["test"]) == {"pp64+tg16"}


def test_claim_is_exclusive_and_leases_expire(store_url: str) -> None:
    store = Store(store_url)
    jobs = _jobs("r2")
    store.create_run("t", jobs, run_id="r2")
    assert store.claim("r2-j0", "agent-a", lease_s=60)
    assert not store.claim("r2-j0", "agent-b", lease_s=60)
    assert store.get_run("r2").status == "running"
    assert store.heartbeat("r2-j0", "agent-a", 60)
    assert not store.heartbeat("r2-j0", "agent-b", 60)
    assert _reap(store, utcnow() + timedelta(seconds=30)) == []
    assert _reap(store, utcnow() + timedelta(seconds=120)) == ["r2-j0"]
    assert store.job_status("r2-j0") == "queued"
    assert store.claim("r2-j0", "agent-b", lease_s=60)


def test_claim_retried_after_a_lost_reply_recognises_its_own_token(store_url: str) -> None:
    """The first claim committed but its reply was lost: the retry must not skip the job."""
    store = Store(store_url)
    store.create_run("t", _jobs("r2t"), run_id="r2t")
    assert store.claim_on("r2t-j0", "agent-a", 60, token="t1") == ""
    assert store.claim_on("r2t-j0", "agent-a", 60, token="t1") == ""  # the retry: still ours
    assert store.claim_on("r2t-j0", "agent-a", 60, token="t2") is None  # another delivery: not ours
    assert store.claim_on("r2t-j0", "agent-a", 60) is None
    assert _reap(store, utcnow() + timedelta(seconds=120)) == ["r2t-j0"]
    assert store.claim_on("r2t-j0", "agent-a", 60, token="t1") == ""  # requeued: claimable again
    assert [j.attempts for j in store.job_rows("r2t") if j.id == "r2t-j0"] == [2]


def test_claim_reads_the_device_and_a_result_keeps_what_it_does_not_say(store_url: str) -> None:
    store = Store(store_url)
    jobs = _jobs("r2d")
    store.create_run("t", jobs, run_id="r2d")
    assert store.claim_on("r2d-j0", "agent-a", 60, device="other") is None  # moved elsewhere: not this delivery
    assert store.claim_on("r2d-j0", "agent-a", 60, device="dev") == ""  # a device nobody registered
    store.upsert_device("dev", "p", "local")
    store.set_device_status("dev", "quarantined", "flaky")
    assert store.claim_on("r2d-j1", "agent-a", 60, device="dev", token="t") == BUSY  # j0 holds the device
    assert store.get_run("r2d").status == "running"
    result = _result(jobs[0]).model_copy(update={"agent": "", "attempt": 1})
    store.save_result(result)  # no Job given: the store reads the spec
    row = next(r for r in store.job_rows("r2d") if r.id == "r2d-j0")
    assert (row.status, row.agent, row.attempts, row.lease_until) == ("done", "agent-a", 1, None)
    assert store.claim_on("r2d-j1", "agent-a", 60, device="dev", token="t") == "quarantined"
    assert store.claim_on("r2d-j1", "agent-a", 60, device="dev", token="t") == "quarantined"  # its retry
    assert [r.rep for r in store.results("r2d")] == [0, 1, 2]
    with pytest.raises(ConfigError):
        store.save_result(result.model_copy(update={"job_id": "r2d-nope"}))


def test_run_completion_and_cancel(store_url: str) -> None:
    store = Store(store_url)
    jobs = _jobs("r3")
    store.create_run("t", jobs, run_id="r3")
    store.save_result(_result(jobs[0]), jobs[0])
    _fail(store, jobs[1], "job", "farm-engine exited 1")
    assert store.finish_run_if_complete("r3") is None
    assert store.cancel("r3") == 1
    assert store.finish_run_if_complete("r3") == "cancelled"
    assert store.counts("r3") == {"done": 1, "failed": 1, "cancelled": 1}
    failed = next(j for j in store.job_rows("r3") if j.status == "failed")
    assert failed.error_class == "job" and "exited 1" in (failed.error or "")
    assert store.get_run("r3"[:2]).id == "r3"  # unique prefixes resolve


def test_device_quarantine_after_repeated_infra_failures(store_url: str) -> None:
    store = Store(store_url)
    store.upsert_device("phone-1", "pixel-8", "adb")
    assert not store.record_device_failure("phone-1", "offline")
    assert not store.record_device_failure("phone-1", "offline")
    assert store.record_device_failure("phone-1", "offline")
    assert store.quarantined() == {"phone-1"}
    store.set_device_status("phone-1", "online")
    assert store.quarantined() == set()


def test_touch_devices_is_upsert_device_for_many(store_url: str) -> None:
    store = Store(store_url)
    store.upsert_device("t-1", "pixel-8", "adb", agent="a0", fingerprint={"serial": "s1"})
    store.set_device_status("t-1", "offline")
    store.upsert_device("t-2", "pixel-8", "adb", agent="a0")
    store.set_device_status("t-2", "quarantined", "flaky")
    store.touch_devices([("t-1", "pixel-8", "adb"), ("t-2", "pixel-8", "adb"), ("t-3", "vhost", "local")], agent="a1")
    store.touch_devices([("t-3", "vhost", "local")])  # no agent given: keeps the one it has
    devs = {d.name: d for d in store.devices() if d.name.startswith("t-")}
    assert {n: (d.status, d.agent) for n, d in devs.items()} == {
        "t-1": ("online", "a1"), "t-2": ("quarantined", "a1"), "t-3": ("online", "a1")}
    assert devs["t-1"].fingerprint == {"serial": "s1"} and devs["t-3"].fingerprint == {}
    assert devs["t-2"].quarantine_reason == "flaky" and devs["t-3"].failures == 0
    assert all(d.last_seen is not None for d in devs.values())


def test_keep_result_saves_then_closes_the_run(store_url: str) -> None:
    store = Store(store_url)
    jobs = _jobs("r5", n=2)
    store.create_run("t", jobs, run_id="r5")
    assert store.keep_result(_result(jobs[0]), jobs[0]) is None  # a job left: one probe, run open
    assert store.keep_result(_result(jobs[1], reps=2)) == "done"  # the last one closes it (spec read)
    assert store.keep_result(_result(jobs[1], reps=2)) == "done"  # again: idempotent
    assert sorted((r.job_id, r.rep) for r in store.results("r5")) == [
        ("r5-j0", 0), ("r5-j0", 1), ("r5-j0", 2), ("r5-j1", 0), ("r5-j1", 1)]
    with store.autocommit() as conn:  # the connection went back to the pool in its own isolation level
        assert conn.scalar(select(func.count()).select_from(JobRow)) >= 2
    with contextlib.suppress(RuntimeError), store.session() as s:  # pooled connections still roll back
        s.execute(update(JobRow).where(JobRow.id == "r5-j0").values(error="x"))
        raise RuntimeError
    assert next(r for r in store.job_rows("r5") if r.id == "r5-j0").error is None
