"""Engine regression runs: two builds of an engine, interleaved ABBA on each device, compared per metric.

Owns the A/B schedule and its bookkeeping; building is the backends' job, statistics are
:mod:`farm.analysis.stats`, tables are :mod:`farm.analysis.compare`. The package:

- :mod:`~farm.regress.schedule`: the ABBA schedule (process or lock-step interleaving), the builds made
  before it, running it on the in-process executor;
- :mod:`~farm.regress.results`: what the run left in the store, read back (pairs, failures, noise,
  build rows, JSON);
- :mod:`~farm.regress.run`: ``run_regression(...) -> Verdict`` and ``run_noise(...) -> NoiseTable``, the
  orchestration ``farm regress`` and ``farm noise`` only print.
"""

from __future__ import annotations

from farm.analysis import compare
from farm.regress.results import (
    _jsonable,
    analyse,
    failed_jobs,
    load_noise,
    record_builds,
    report_json,
    results_with_pairs,
    save_noise,
)
from farm.regress.run import NoiseTable, Verdict, run_noise, run_regression, side
from farm.regress.schedule import (
    INTERLEAVED,
    INTERLEAVES,
    Side,
    ab_jobs,
    execute,
    prebuild,
    step_interleave_supported,
)

__all__ = ["INTERLEAVED", "INTERLEAVES", "NoiseTable", "Side", "Verdict", "_jsonable", "ab_jobs", "analyse",
           "compare", "execute", "failed_jobs", "load_noise", "prebuild", "record_builds", "report_json",
           "results_with_pairs", "run_noise", "run_regression", "save_noise", "side", "step_interleave_supported"]
