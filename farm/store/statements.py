"""The store's per-job statements (claim, lease, result, run-complete probe, device heartbeat), built once.

Building an UPDATE ... RETURNING costs ~0.3 ms of Python per call, paid by every job; these are
built once with typed bind parameters (SQLite stores datetimes and JSON through the column types)
and SQLAlchemy's compiled cache does the rest. The UPDATEs' parameter names never equal a column
name: an UPDATE takes such a key as one more column to set.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import bindparam, case, delete, func, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite

from farm.store.models import Device, JobRow, ResultRow, Run

_OUTCOME_COLUMNS = ("status", "error_class", "error", "device", "started_at", "finished_at", "lease_until",
                    "fingerprint", "provenance", "thermal", "power", "throttled", "charging", "model_sha256",
                    "engine_build", "bytes_pushed")
_ACTIVE = ("queued", "running")


def _p(name: str, column: Any) -> Any:
    """A bind parameter typed like `column` (SQLite stores datetimes and JSON through the column type)."""
    return bindparam(name, type_=column.type)


@cache
def claim_stmt(by_device: bool) -> Any:
    t = JobRow.__table__.c
    where = [t.id == _p("p_job", t.id), t.status == "queued"]
    if by_device:
        where.append(t.device == _p("p_device", t.device))
    device_status = (select(Device.status).where(Device.name == _p("p_device", t.device)).scalar_subquery()
                     if by_device else literal(""))
    return (update(JobRow).where(*where)
            .values(status="running", agent=_p("c_agent", t.agent), claim_token=_p("c_token", t.claim_token),
                    started_at=_p("c_now", t.started_at), heartbeat_at=_p("c_now", t.heartbeat_at),
                    lease_until=_p("c_until", t.lease_until), attempts=t.attempts + 1)
            .returning(t.run_id, select(Run.status).where(Run.id == t.run_id).scalar_subquery(), device_status))


@cache
def claimed_by_stmt() -> Any:
    t = JobRow.__table__.c
    return select(func.count()).where(t.id == _p("p_job", t.id), t.status == "running",
                                      t.claim_token == _p("c_token", t.claim_token))


@cache
def device_status_stmt() -> Any:
    return select(Device.status).where(Device.name == _p("p_device", Device.name))


@cache
def run_started_stmt() -> Any:
    return update(Run).where(Run.id == _p("p_run", Run.id), Run.status == "queued").values(status="running")


@cache
def result_stmt(set_agent: bool, want_spec: bool) -> Any:
    t = JobRow.__table__.c
    values: dict[str, Any] = {c: _p(f"o_{c}", t[c]) for c in _OUTCOME_COLUMNS}
    attempt = _p("o_attempt", t.attempts)
    values["attempts"] = case((t.attempts > attempt, t.attempts), else_=attempt)
    if set_agent:
        values["agent"] = _p("o_agent", t.agent)
    return (update(JobRow).where(t.id == _p("p_job", t.id)).values(**values)
            .returning(t.spec if want_spec else t.id))


@cache
def stale_reps_stmt() -> Any:
    r = ResultRow.__table__.c
    return delete(ResultRow).where(r.job_id == _p("p_job", r.job_id),
                                   r.rep.not_in(bindparam("reps", expanding=True, type_=r.rep.type)))


@cache
def jobs_left_stmt() -> Any:
    t = JobRow.__table__.c
    return select(t.id).where(t.run_id == _p("p_run", t.run_id), t.status.in_(_ACTIVE)).limit(1)


@cache
def lease_stmt() -> Any:
    t = JobRow.__table__.c
    return (update(JobRow).where(t.id == _p("p_job", t.id), t.agent == _p("h_agent", t.agent), t.status == "running")
            .values(heartbeat_at=_p("h_now", t.heartbeat_at), lease_until=_p("h_until", t.lease_until)))


@cache
def touch_stmt(dialect: str) -> Any:
    """upsert_device's update without fingerprint or health, for many devices at once (a heartbeat)."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(Device)
    d = Device.__table__.c
    return stmt.on_conflict_do_update(index_elements=[d.name], set_={
        "profile": stmt.excluded.profile, "transport": stmt.excluded.transport, "last_seen": stmt.excluded.last_seen,
        "agent": func.coalesce(stmt.excluded.agent, d.agent),
        "status": case((d.status == "offline", "online"), else_=d.status)})
