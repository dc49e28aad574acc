"""The store's operations: runs and jobs in, results out, idempotently.

Every write is keyed: a job by its deterministic id, a result row by (job id, repetition), so
an agent that retries a flush, or a job that is redelivered, never duplicates a row.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from farm.errors import ConfigError, InfraError
from farm.jobs import Job, JobResult, utcnow
from farm.store import statements as sql
from farm.store.db import make_engine, migrate, resolve_url
from farm.store.models import Device, EngineBuild, JobRow, ResultRow, Run, Trace

TERMINAL = ("done", "failed", "cancelled")
BUSY = "busy"  # claim_on: the job is claimable but its device runs another job (the device lease)
# A job handed back to the queue holds no lease, agent or claim.
_REQUEUED: dict[str, Any] = {"status": "queued", "agent": None, "claim_token": None, "lease_until": None}


def new_run_id() -> str:
    return utcnow().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


@cache
def _upsert_stmt(dialect: str, table: Any, keys: tuple[str, ...], columns: tuple[str, ...]) -> Any:
    """INSERT ... ON CONFLICT (keys) DO UPDATE, built once and run with rows as parameters: a statement
    with the rows in its VALUES would be built and compiled anew on every call (~ms for results' columns)."""
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    stmt = insert(table)
    return stmt.on_conflict_do_update(index_elements=list(keys),
                                      set_={c: stmt.excluded[c] for c in columns if c not in keys})


@contextmanager
def _reachable() -> Iterator[None]:
    """A lost or refused database connection becomes InfraError, the error every store caller retries."""
    try:
        yield
    except OperationalError as exc:
        raise InfraError(f"store unreachable: {str(exc.orig).strip().splitlines()[0]}") from exc


def _aware(dt: datetime | None) -> datetime | None:
    from datetime import UTC

    return dt.replace(tzinfo=UTC) if dt is not None and dt.tzinfo is None else dt


class Store:
    """A handle on one store database."""

    def __init__(self, url: str | None = None) -> None:
        self.url = resolve_url(url)
        self.engine = make_engine(self.url)
        migrate(self.engine)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._autocommit = self.engine.execution_options(isolation_level="AUTOCOMMIT")

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def session(self) -> Iterator[Session]:
        with _reachable(), self._sessions.begin() as session:
            yield session

    @contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """A connection outside any transaction, for one statement: one round trip, no BEGIN or COMMIT."""
        with _reachable(), self._autocommit.connect() as conn:
            yield conn

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A Core connection in one transaction, committed on exit: the hot paths' session, without the ORM."""
        with _reachable(), self.engine.begin() as conn:
            yield conn

    def _upsert(self, conn: Connection, table: Any, rows: list[dict[str, Any]], keys: tuple[str, ...]) -> None:
        if rows:  # Core, not the ORM's bulk insert: the rows are plain dicts already
            conn.execute(_upsert_stmt(self.dialect, table, keys, tuple(rows[0])), rows)

    # Runs and jobs ---------------------------------------------------------------------------

    def create_run(self, name: str, jobs: list[Job], *, run_id: str | None = None, kind: str = "sweep",
                   sweep_yaml: str = "", sweep_digest: str = "", executor: str = "local",
                   priority: int = 0, meta: dict[str, Any] | None = None, holder: str | None = None) -> str:
        """Store a run and its jobs, queued. `holder`: the process that will run it in-process (held from
        the start, so a process killed before its first job still leaves a run the next command reaps)."""
        run_id = run_id or new_run_id()
        with self.session() as s:
            s.add(Run(id=run_id, name=name, kind=kind, sweep_yaml=sweep_yaml, sweep_digest=sweep_digest,
                      executor=executor, status="queued", priority=priority, n_jobs=len(jobs),
                      created_at=utcnow(), meta=meta or {}, holder=holder))
            s.flush()
            s.add_all(JobRow(id=j.job_id, run_id=run_id, idx=j.index, device=j.device, profile=j.profile,
                             backend=j.backend, model=j.model.label, quant=j.quant, n_prompt=j.n_prompt,
                             n_gen=j.n_gen, threads=j.threads, repetitions=j.repetitions,
                             priority=j.priority, spec=j.model_dump(mode="json"), est_s=j.est_s)
                      for j in jobs)
        return run_id

    def get_run(self, run_id: str) -> Run:
        with self.session() as s:
            run = s.get(Run, run_id)
            if run is None:
                # a prefix is literal: `%` and `_` in it are escaped, not LIKE wildcards
                matches = s.scalars(select(Run).where(Run.id.startswith(run_id, autoescape=True))
                                    .limit(2)).all() if run_id else []
                if len(matches) == 1:
                    return matches[0]
                where = self.engine.url.render_as_string(hide_password=True)
                if matches:
                    raise ConfigError(f"run id prefix {run_id!r} matches several runs in {where}; give more of it")
                raise ConfigError(f"no run {run_id!r} in {where}")
            return run

    def runs(self, limit: int = 20) -> list[Run]:
        with self.session() as s:
            return list(s.scalars(select(Run).order_by(Run.created_at.desc()).limit(limit)))

    def jobs(self, run_id: str, status: Iterable[str] | None = None) -> list[Job]:
        with self.session() as s:
            q = select(JobRow.spec).where(JobRow.run_id == run_id).order_by(JobRow.idx)
            if status is not None:
                q = q.where(JobRow.status.in_(list(status)))
            return [Job.model_validate(spec) for spec in s.scalars(q)]

    def job_rows(self, run_id: str) -> list[JobRow]:
        with self.session() as s:
            return list(s.scalars(select(JobRow).where(JobRow.run_id == run_id).order_by(JobRow.idx)))

    def update_run_meta(self, run_id: str, **meta: Any) -> None:
        """Merge keys into a run's meta (e.g. an A/A run's noise table)."""
        with self.session() as s:
            run = s.get(Run, run_id)
            if run is None:
                raise ConfigError(f"no run {run_id!r}")
            run.meta = {**(run.meta or {}), **meta}

    def record_engine_builds(self, rows: Sequence[dict[str, Any]]) -> None:
        """engine_builds rows (id, backend, source_commit, target, flags, compiler), each kept once."""
        with self.session() as s:
            for row in rows:
                if s.get(EngineBuild, row["id"]) is None:
                    s.add(EngineBuild(**row, created_at=utcnow()))

    def failure_classes(self, run_id: str) -> dict[str, int]:
        """Failed jobs of the run per error class."""
        with self.session() as s:
            rows = s.execute(select(JobRow.error_class, func.count()).where(
                JobRow.run_id == run_id, JobRow.status == "failed").group_by(JobRow.error_class))
            return {cls or "bug": n for cls, n in rows}

    def job_status(self, job_id: str) -> str | None:
        with self.session() as s:
            return s.scalar(select(JobRow.status).where(JobRow.id == job_id))

    def counts(self, run_id: str) -> dict[str, int]:
        with self.session() as s:
            rows = s.execute(select(JobRow.status, func.count()).where(JobRow.run_id == run_id)
                             .group_by(JobRow.status)).all()
        return {status: n for status, n in rows}

    def claim(self, job_id: str, agent: str, lease_s: float, device: str | None = None) -> bool:
        """Atomically move a queued job to running under `agent`'s lease. False if not queued.

        With `device`, only if the job is still meant for that device (a stale message for a job
        that was moved elsewhere must not run it).
        """
        return self.claim_on(job_id, agent, lease_s, device) not in (None, BUSY)

    def claim_on(self, job_id: str, agent: str, lease_s: float, device: str | None = None,
                 token: str | None = None) -> str | None:
        """:meth:`claim`, also reading the device's status in the same statement (one round trip
        where an agent needs both): None when not claimed, else the device's status ("" if unknown).

        `token` names the delivery: a claim retried after a dropped connection (the first try may
        have committed unseen) finds the job running under its own token and takes it as claimed.
        :data:`BUSY` when another job holds the device (the unique index ``ix_jobs_device_held``):
        one job per device, across processes and executors.
        """
        now = utcnow()
        by_device = device is not None
        params = {"p_job": job_id, "p_device": device, "c_agent": agent, "c_token": token, "c_now": now,
                  "c_until": now + timedelta(seconds=lease_s)}
        with self.autocommit() as conn:
            # The common case is this one statement, atomic on its own (no BEGIN/COMMIT round trips):
            # the claim returns what else the agent needs to know.
            try:
                claimed = conn.execute(sql.claim_stmt(by_device), params).first()
            except IntegrityError:
                return BUSY
            if claimed is not None:
                run_id, run_status, status = claimed
                if run_status == "queued":  # the run's first claim
                    conn.execute(sql.run_started_stmt(), {"p_run": run_id})
                return status or ""
            if token is None or not conn.scalar(sql.claimed_by_stmt(), {"p_job": job_id, "c_token": token}):
                return None
            return (conn.scalar(sql.device_status_stmt(), {"p_device": device}) if by_device else "") or ""

    def heartbeat(self, job_id: str, agent: str, lease_s: float) -> bool:
        now = utcnow()
        with self.autocommit() as conn:
            res = conn.execute(sql.lease_stmt(), {"p_job": job_id, "h_agent": agent, "h_now": now,
                                               "h_until": now + timedelta(seconds=lease_s)})
            return bool(res.rowcount)

    def requeue(self, job_id: str, reason: str, lease_expired_before: datetime | None = None,
                uncounted: bool = False) -> bool:
        """Put a running job back in the queue (only if its lease ended before the given time, when
        given: a reaper must not take a job whose agent heartbeated meanwhile). True if it moved.
        `uncounted`: the run was interrupted, not the job's device: the claim is not an attempt."""
        where = [JobRow.id == job_id, JobRow.status == "running"]
        if lease_expired_before is not None:
            where.append(JobRow.lease_until < lease_expired_before)
        values = dict(_REQUEUED, error=reason)
        if uncounted:
            values["attempts"] = JobRow.attempts - 1
        with self.session() as s:
            return bool(s.execute(update(JobRow).where(*where).values(**values)).rowcount)

    def expired_jobs(self, executor: str, now: datetime) -> list[tuple[Job, int, str | None]]:
        """Running jobs of `executor`'s runs whose lease ended before `now`: (job, attempts, agent)."""
        with self.session() as s:
            rows = s.execute(select(JobRow.spec, JobRow.attempts, JobRow.agent).join(Run, Run.id == JobRow.run_id)
                             .where(JobRow.status == "running", JobRow.lease_until < now,
                                    Run.executor == executor)).all()
        return [(Job.model_validate(spec), attempts, agent) for spec, attempts, agent in rows]

    def queued_on(self, devices: Iterable[str], executor: str) -> list[tuple[Job, int]]:
        """Queued jobs of active runs of `executor` waiting for one of `devices`: (job, attempts)."""
        with self.session() as s:
            rows = s.execute(select(JobRow.spec, JobRow.attempts).join(Run, Run.id == JobRow.run_id)
                             .where(JobRow.status == "queued", JobRow.device.in_(list(devices)),
                                    Run.executor == executor, Run.status.in_(["queued", "running"]))).all()
        return [(Job.model_validate(spec), attempts) for spec, attempts in rows]

    def next_queued(self, run_id: str, device: str) -> tuple[Job, int] | None:
        """The next queued job of `run_id` for `device` in priority and plan order, with its attempts."""
        with self.session() as s:
            row = s.execute(select(JobRow.spec, JobRow.attempts)
                            .where(JobRow.run_id == run_id, JobRow.device == device, JobRow.status == "queued")
                            .order_by(JobRow.priority.desc(), JobRow.idx).limit(1)).first()
        return None if row is None else (Job.model_validate(row[0]), row[1])

    def jobs_left(self, run_id: str) -> int:
        """Jobs of the run still queued or running."""
        with self.session() as s:
            return s.scalar(select(func.count()).where(JobRow.run_id == run_id,
                                                       JobRow.status.in_(["queued", "running"]))) or 0

    def retarget(self, job: Job, device: str) -> Job:
        """Move a queued job to another device (same profile); returns the moved job."""
        if device == job.device:
            return job
        moved = job.model_copy(update={"device": device})
        with self.session() as s:
            s.execute(update(JobRow).where(JobRow.id == job.job_id)
                      .values(device=device, spec=moved.model_dump(mode="json")))
        return moved

    def device_holder(self, device: str) -> tuple[str, str | None, str] | None:
        """The job holding `device` (the device lease): (job id, agent, run id), or None when free."""
        with self.session() as s:
            row = s.execute(select(JobRow.id, JobRow.agent, JobRow.run_id)
                            .where(JobRow.device == device, JobRow.status == "running")).first()
        return None if row is None else (row[0], row[1], row[2])

    # In-process runs: held by the process that executes them -------------------------------------

    def hold_run(self, run_id: str, holder: str) -> bool:
        """Take `run_id` for this process (a new run, or an interrupted one being resumed)."""
        with self.session() as s:
            return bool(s.execute(update(Run).where(Run.id == run_id, or_(Run.holder.is_(None), Run.holder == holder),
                                                    Run.status.in_(["queued", "running", "interrupted"]))
                                  .values(holder=holder, status="running", finished_at=None)).rowcount)

    def held_runs(self) -> list[tuple[str, str]]:
        """(run id, holder) of runs held by a process and not finished."""
        with self.session() as s:
            return [(r, h) for r, h in s.execute(select(Run.id, Run.holder).where(
                Run.holder.is_not(None), Run.status.in_(["queued", "running"])))]

    def run_lease_expired(self, run_id: str, now: datetime) -> bool:
        """Does a running job of the run hold a lease that ended before `now`?"""
        with self.session() as s:
            return s.scalar(select(func.count()).where(JobRow.run_id == run_id, JobRow.status == "running",
                                                       JobRow.lease_until < now)) > 0

    def interrupt_run(self, run_id: str, holder: str, reason: str) -> bool:
        """The holder stopped (Ctrl-C) or died: its running jobs go back to the queue uncounted, the
        run is ``interrupted`` (``farm resume`` finishes it) unless nothing is left to do."""
        with self.session() as s:
            if not s.execute(update(Run).where(Run.id == run_id, Run.holder == holder)
                             .values(holder=None)).rowcount:
                return False
            s.execute(update(JobRow).where(JobRow.run_id == run_id, JobRow.status == "running")
                      .values(**_REQUEUED, error=reason, attempts=JobRow.attempts - 1))
            s.execute(update(Run).where(Run.id == run_id, Run.status.in_(["queued", "running"]))
                      .values(status="interrupted", finished_at=utcnow()))
        self.finish_run_if_complete(run_id, also_interrupted=True)
        return True

    def release_run(self, run_id: str, holder: str) -> None:
        """The holder is done with the run (it finished, or was cancelled)."""
        with self.session() as s:
            s.execute(update(Run).where(Run.id == run_id, Run.holder == holder).values(holder=None))

    def cancel(self, run_id: str) -> int:
        with self.session() as s:
            res = s.execute(update(JobRow).where(JobRow.run_id == run_id, JobRow.status.in_(["queued", "running"]))
                            .values(status="cancelled", error_class="cancelled", error="cancelled by user",
                                    finished_at=utcnow()))
            s.execute(update(Run).where(Run.id == run_id).values(status="cancelled", finished_at=utcnow()))
            return res.rowcount

    def is_cancelled(self, run_id: str) -> bool:
        with self.session() as s:
            return s.scalar(select(Run.status).where(Run.id == run_id)) == "cancelled"

    def finish_run_if_complete(self, run_id: str, also_interrupted: bool = False) -> str | None:
        """Close a run when no job is left queued or running; returns its final status.

        Agents call this after every result, so the common answer ("jobs left") is one index probe,
        not a count over the run. It runs after the result's own commit: of two agents saving a
        run's last two jobs at once, the later one sees both.
        """
        with self.autocommit() as conn:
            if conn.scalar(sql.jobs_left_stmt(), {"p_run": run_id}) is not None:
                return None
        counts = self.counts(run_id)
        if counts.get("queued") or counts.get("running"):
            return None
        status = "cancelled" if counts.get("cancelled") else ("failed" if counts.get("failed") else "done")
        open_states = ["queued", "running", "interrupted"] if also_interrupted else ["queued", "running"]
        with self.session() as s:
            s.execute(update(Run).where(Run.id == run_id, Run.status.in_(open_states))
                      .values(status=status, finished_at=utcnow()))
            return s.scalar(select(Run.status).where(Run.id == run_id))

    # Results ---------------------------------------------------------------------------------

    def save_result(self, result: JobResult, job: Job | None = None) -> None:
        """Store a job's outcome. Idempotent: the same result saved twice leaves one copy."""
        with self.transaction() as conn:
            self._save_result(conn, result, job)

    def keep_result(self, result: JobResult, job: Job | None = None) -> str | None:
        """:meth:`save_result`, then :meth:`finish_run_if_complete`: an agent's step after every job.

        Both on one pooled connection: the probe runs after the result's commit (as the separate
        calls do), outside a transaction, without checking a second connection out of the pool.
        """
        with _reachable(), self.engine.connect() as conn:
            with conn.begin():
                self._save_result(conn, result, job)
            conn.execution_options(isolation_level="AUTOCOMMIT")  # reset when the pool takes it back
            if conn.scalar(sql.jobs_left_stmt(), {"p_run": result.run_id}) is not None:
                return None
        return self.finish_run_if_complete(result.run_id)

    def _save_result(self, conn: Connection, result: JobResult, job: Job | None) -> None:
        # Core statements on one transaction: this path runs once per job, the ORM adds nothing to it
        params = {f"o_{c}": v for c, v in self._outcome(result).items()}
        params.update(p_job=result.job_id, o_attempt=result.attempt, o_agent=result.agent)
        found = conn.execute(sql.result_stmt(bool(result.agent), job is None), params).scalar()
        if found is None:
            raise ConfigError(f"result for unknown job {result.job_id}")
        job = job or Job.model_validate(found)
        conn.execute(sql.stale_reps_stmt(), {"p_job": result.job_id, "reps": [r.rep for r in result.repetitions]})
        rows = [self._result_row(job, result, r) for r in result.repetitions]
        self._upsert(conn, ResultRow, rows, ("job_id", "rep"))
        self._upsert(conn, Trace, self._trace_rows([result]), ("job_id",))

    @staticmethod
    def _trace_rows(results: Sequence[JobResult]) -> list[dict[str, Any]]:
        return [{"job_id": r.job_id, "data": r.trace, "meta": {"source": r.power.get("source")}}
                for r in results if r.trace]

    @staticmethod
    def _outcome(result: JobResult) -> dict[str, Any]:
        """The job row's columns a result sets, except agent and attempts (a result does not erase them).

        A result that arrives after cancel is still data worth keeping, so status is not checked.
        """
        return {"status": result.status, "error_class": result.error_class, "error": result.error,
                # a retried job may have moved to another device of its profile
                "device": result.device, "started_at": result.started_at, "finished_at": result.finished_at,
                "lease_until": None, "fingerprint": result.fingerprint, "provenance": result.provenance,
                "thermal": result.thermal, "power": result.power, "throttled": result.thermal.get("throttled"),
                "charging": result.power.get("charging"), "model_sha256": result.provenance.get("model_sha256"),
                "engine_build": result.provenance.get("engine_build"), "bytes_pushed": result.bytes_pushed}

    @classmethod
    def _apply_outcome(cls, row: JobRow, result: JobResult) -> None:
        for column, value in cls._outcome(result).items():
            setattr(row, column, value)
        row.agent = result.agent or row.agent
        row.attempts = max(row.attempts, result.attempt)

    def save_results(self, results: Sequence[JobResult], jobs: Sequence[Job] | None = None) -> None:
        """The bulk path: many jobs' outcomes in one transaction (agents flushing a spool, imports).

        Same end state as save_result for each, also idempotent: a job's old repetitions are
        replaced as a whole, and rows go in as one cached executemany instead of a statement per job.
        """
        results = list({r.job_id: r for r in results}.values())  # the last outcome of a job wins
        if not results:
            return
        with self.session() as s:
            ids = [r.job_id for r in results]
            rows = {row.id: row for row in s.scalars(select(JobRow).where(JobRow.id.in_(ids)))}
            missing = [i for i in ids if i not in rows]
            if missing:
                raise ConfigError(f"results for unknown jobs {missing[:3]}")
            given = {j.job_id: j for j in jobs or []}
            # only a job that already ended can have repetitions stored (queued/running never do);
            # deleting by job id one statement each keeps to the primary key, whatever the statistics say
            ended = [{"j": i} for i in ids if rows[i].status in TERMINAL]
            values: list[dict[str, Any]] = []
            for result in results:
                row = rows[result.job_id]
                job = given.get(result.job_id) or Job.model_validate(row.spec)
                self._apply_outcome(row, result)
                values += [self._result_row(job, result, r) for r in result.repetitions]
            if ended:
                s.flush()
                s.connection().execute(delete(ResultRow).where(ResultRow.job_id == bindparam("j")), ended)
            if values and self.dialect == "postgresql":
                # COPY: one statement, so the per-statement rollup trigger runs once, not per row
                cols = list(values[0])
                raw = s.connection().connection.driver_connection
                with raw.cursor() as cur, cur.copy(f"COPY results ({', '.join(cols)}) FROM STDIN") as copy:
                    for v in values:
                        copy.write_row([v[c] for c in cols])
            elif values:
                s.execute(insert(ResultRow), values)
            for trace in self._trace_rows(results):  # one by one: a job may come twice in a batch
                self._upsert(s.connection(), Trace, [trace], ("job_id",))

    @staticmethod
    def _result_row(job: Job, result: JobResult, r: Any) -> dict[str, Any]:
        variant = r.variant or job.tags.get("variant")
        # A lock-step job ran two builds: each repetition carries its own build's commit.
        commit = (result.provenance.get("variants") or {}).get(variant, {}).get("engine_commit") \
            or result.provenance.get("engine_commit")
        return {
            "job_id": job.job_id, "rep": r.rep, "run_id": job.run_id, "device": result.device,
            "profile": job.profile, "backend": job.backend, "model": job.model.label, "quant": job.quant,
            "threads": job.threads, "test": job.test, "n_prompt": r.n_prompt, "n_gen": r.n_gen,
            "n_depth": job.n_depth, "cpus": job.cpus,
            "cpu_mask": (result.provenance.get("affinity") or {}).get("mask"), "power_mode": job.power_mode,
            "prefill_s": r.prefill_s, "decode_s": r.decode_s, "prefill_tps": r.prefill_tps,
            "decode_tps": r.decode_tps, "decode_step_tps": r.decode_step_tps, "ttft_s": r.ttft_s,
            "peak_rss_bytes": r.peak_rss_bytes,
            "exit_status": r.exit_status, "error_class": result.error_class,
            "prefill_energy_j": r.prefill_energy_j, "decode_energy_j": r.decode_energy_j,
            "prefill_j_per_tok": r.prefill_j_per_tok, "decode_j_per_tok": r.decode_j_per_tok,
            "prefill_j_per_tok_bound": r.prefill_j_per_tok_bound, "decode_j_per_tok_bound": r.decode_j_per_tok_bound,
            "prefill_avg_w": r.prefill_avg_w, "decode_avg_w": r.decode_avg_w,
            "power_modelled": result.power.get("modelled"), "throttled": result.thermal.get("throttled"),
            "charging": result.power.get("charging"), "engine_commit": commit,
            "variant": variant, "created_at": result.finished_at,
        }

    def results(self, run_id: str | None = None) -> list[ResultRow]:
        with self.session() as s:
            q = select(ResultRow).order_by(ResultRow.job_id, ResultRow.rep)
            if run_id:
                q = q.where(ResultRow.run_id == run_id)
            return list(s.scalars(q))

    def results_frame(self, run_id: str | None = None):  # -> pandas.DataFrame
        import pandas as pd

        q = select(ResultRow).join(JobRow, JobRow.id == ResultRow.job_id)
        if run_id:
            q = q.where(ResultRow.run_id == run_id)
        with self.engine.connect() as conn:  # in plan order, so tables read like the sweep
            return pd.read_sql(q.order_by(ResultRow.run_id, JobRow.idx, ResultRow.rep), conn)

    def job_timings(self, devices: Iterable[str], limit: int = 200) -> list[tuple[str, str, str, float, float]]:
        """(run, device, backend, estimate, seconds) of the newest done jobs on `devices`, newest first, the
        estimate as the planner made it before calibration (a run keeps its factors in meta "est_factor")."""
        q = (select(JobRow.run_id, JobRow.device, JobRow.backend, JobRow.est_s, JobRow.started_at,
                    JobRow.finished_at, Run.meta)
             .join(Run, Run.id == JobRow.run_id)
             .where(JobRow.status == "done", JobRow.device.in_(list(devices)), JobRow.started_at.is_not(None),
                    JobRow.finished_at.is_not(None), JobRow.est_s > 0)
             .order_by(JobRow.finished_at.desc()).limit(limit))
        with self.session() as s:
            out = []
            for run_id, device, backend, est, t0, t1, meta in s.execute(q):
                factor = float(((meta or {}).get("est_factor") or {}).get(f"{device}/{backend}", 1.0))
                out.append((run_id, device, backend, est / factor, (t1 - t0).total_seconds()))
            return out

    # Devices ---------------------------------------------------------------------------------

    def upsert_device(self, name: str, profile: str, transport: str, agent: str | None = None,
                      fingerprint: dict[str, Any] | None = None, health: dict[str, Any] | None = None) -> None:
        with self.session() as s:
            dev = s.get(Device, name)
            if dev is None:
                dev = Device(name=name, profile=profile, transport=transport, status="online")
                s.add(dev)
            dev.profile, dev.transport, dev.last_seen = profile, transport, utcnow()
            dev.agent = agent or dev.agent
            if fingerprint is not None:
                dev.fingerprint = fingerprint
            if health is not None:
                dev.health = health
            if dev.status == "offline":
                dev.status = "online"

    def touch_devices(self, devices: Sequence[tuple[str, str, str]], agent: str | None = None) -> None:
        """:meth:`upsert_device` (without fingerprint or health) for each (name, profile, transport), in one
        statement: an agent's heartbeat costs one round trip, not one transaction per device."""
        if not devices:
            return
        now = utcnow()
        rows = [{"name": name, "profile": profile, "transport": transport, "agent": agent, "status": "online",
                 "last_seen": now} for name, profile, transport in devices]
        with self.transaction() as conn:
            conn.execute(sql.touch_stmt(self.dialect), rows)

    def set_device_status(self, name: str, status: str, reason: str | None = None) -> None:
        with self.session() as s:
            dev = s.get(Device, name)
            if dev is None:
                raise ConfigError(f"unknown device {name!r}")
            dev.status, dev.quarantine_reason = status, reason
            if status == "online":
                dev.failures = 0

    def record_device_failure(self, name: str, reason: str, quarantine_after: int = 3) -> bool:
        """Count an infrastructure failure; quarantine after `quarantine_after` in a row. True if quarantined."""
        with self.session() as s:
            dev = s.get(Device, name)
            if dev is None:
                return False
            dev.failures += 1
            if dev.failures >= quarantine_after:
                dev.status, dev.quarantine_reason = "quarantined", reason
            return dev.status == "quarantined"

    def reset_failures(self, name: str) -> None:
        """Quarantine counts failures in a row: a success clears them."""
        with self.session() as s:
            s.execute(update(Device).where(Device.name == name, Device.status == "online").values(failures=0))

    def mark_offline(self, not_seen_since: datetime) -> None:
        """Online devices whose agent has not been heard of since then are offline."""
        with self.session() as s:
            s.execute(update(Device).where(Device.status == "online", Device.last_seen < not_seen_since)
                      .values(status="offline"))

    def devices(self) -> list[Device]:
        with self.session() as s:
            return list(s.scalars(select(Device).order_by(Device.name)))

    def quarantined(self) -> set[str]:
        with self.session() as s:
            return set(s.scalars(select(Device.name).where(Device.status == "quarantined")))


__all__ = ["BUSY", "TERMINAL", "Store", "new_run_id"]
