"""`farm results` flags the runs a lab must not trust blindly: throttled, charging, modelled power."""

from __future__ import annotations

import io

from rich.console import Console

from farm.cli._common import results_table
from farm.jobs import Job, JobResult, ModelRef, Repetition
from farm.store import Store


def test_throttled_and_charging_runs_are_flagged(sqlite_url: str) -> None:
    store = Store(sqlite_url)
    jobs = [Job(job_id=f"r-{name}", run_id="r", index=i, device=name, profile="pixel-8", backend="reference",
                model=ModelRef(card="farm-tiny"), quant="q4_0", n_prompt=64, n_gen=16, threads=4, repetitions=2,
                warmup=0) for i, name in enumerate(["hot-phone", "usb-phone", "calm-phone"])]
    store.create_run("flags", jobs, run_id="r")
    states = {"hot-phone": ({"throttled": True, "throttle_reason": "zone0 at 91 °C"}, {"charging": False}),
              "usb-phone": ({"throttled": False}, {"charging": True, "modelled": False}),
              "calm-phone": ({"throttled": False}, {"charging": False, "modelled": False})}
    for job in jobs:
        thermal, power = states[job.device]
        store.save_result(JobResult(job_id=job.job_id, run_id="r", device=job.device, status="done",
                                    thermal=thermal, power=power,
                                    repetitions=[Repetition(rep=k, n_prompt=64, n_gen=16, prefill_s=0.2, decode_s=0.8,
                                                            ttft_s=0.21) for k in range(2)]), job)
    out = io.StringIO()
    Console(file=out, width=250).print(results_table(store.results_frame("r")))
    lines = {ln.split("│")[1].strip(): ln for ln in out.getvalue().splitlines() if ln.startswith("│")}
    assert "throttled" in lines["hot-phone"] and "charging" not in lines["hot-phone"]
    assert "charging" in lines["usb-phone"] and "throttled" not in lines["usb-phone"]
    assert "throttled" not in lines["calm-phone"] and "charging" not in lines["calm-phone"]
