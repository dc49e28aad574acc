"""The order in which a run's jobs are handed out: priority first, devices taking turns."""

from __future__ import annotations

from farm.dispatch import device_rounds, order
from farm.jobs import Job, ModelRef


def _job(index: int, device: str, priority: int = 0) -> Job:
    return Job(job_id=f"j{index}", run_id="r", index=index, device=device, profile="p", backend="sleep",
               model=ModelRef(card="farm-tiny"), quant="q4_0", n_prompt=1, n_gen=0, threads=1, repetitions=1,
               warmup=0, priority=priority)


def test_devices_take_turns_and_each_keeps_its_priority_order() -> None:
    # a plan grouped by device, with one urgent job at the end of device b's list
    jobs = [_job(0, "a"), _job(1, "a"), _job(2, "a"), _job(3, "b"), _job(4, "b"), _job(5, "b", priority=5),
            _job(6, "c")]
    out = device_rounds(order(jobs))
    assert [j.job_id for j in out] == ["j5", "j0", "j6", "j1", "j3", "j2", "j4"]
    for device in "abc":  # each device's own sequence is exactly what order() gave it
        assert [j for j in out if j.device == device] == [j for j in order(jobs) if j.device == device]
    assert device_rounds([]) == []


def test_queued_jobs_poller_reads_like_queued_jobs_and_reparses_only_moved_jobs(store_url: str) -> None:
    from farm.dispatch.queued import QueuedJobs, queued_jobs
    from farm.store import Store

    store = Store(store_url)
    jobs = [_job(i, "ab"[i % 2], priority=3 if i == 4 else 0).model_copy(update={"job_id": f"qj{i}", "run_id": "qr"})
            for i in range(6)]
    store.create_run("q", jobs, run_id="qr", executor="ray")
    poll = QueuedJobs(store, "ray")
    first = poll()
    assert first == queued_jobs(store, "ray") and first[0][0].job_id == "qj4"
    store.claim("qj0", "agent", 60)
    moved = store.retarget(jobs[1], "c")
    again = poll()
    assert again == queued_jobs(store, "ray") and moved in [j for j, _ in again]
    same = [j for j, _ in again if j.job_id == "qj2"] + [j for j, _ in first if j.job_id == "qj2"]
    assert same[0] is same[1]  # not re-read
