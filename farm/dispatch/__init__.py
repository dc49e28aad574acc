"""The one job lifecycle's shared rules, below ``agent/`` and ``executors/``.

Every executor (in-process, Celery, Ray) hands job ids to the same agent code
(:mod:`farm.agent.lifecycle`); what that code and the dispatchers decide about a job lives here:
where it goes (:mod:`.routing`), whether it is tried again (:mod:`.retry`, the one retry rule),
what a failed job looks like (:mod:`.failure`), which queued jobs wait (:mod:`.queued`), and who
puts back the jobs of agents that went silent or processes that died (:mod:`.reaper`).

This package imports only the store, jobs and errors: executors and agents import it, never the
other way round.
"""

from farm.dispatch.failure import failed_result
from farm.dispatch.retry import MAX_ATTEMPTS, Decision, after_infra_error
from farm.dispatch.routing import Route, device_rounds, order, prepare_dispatch, route

__all__ = ["MAX_ATTEMPTS", "Decision", "Route", "after_infra_error", "device_rounds", "failed_result", "order",
           "prepare_dispatch", "route"]
