"""dashboard rollup: per-day aggregates of results, kept exact by triggers, plus the indexes dashboards need

Aggregating one million repetitions takes ~0.5 s on a 2-core Postgres even with covering indexes, so
dashboards read ``result_rollup``: one row per (day, device, profile, backend, model, quant, test,
threads, engine commit; revision 0010 adds depth, cpus and power mode) holding counts and sums (never
means, so rows can be added and removed exactly). Database triggers keep it in step with ``results`` on
every write path — INSERT, the store's ON CONFLICT upsert (an UPDATE: old rows subtracted, new rows
added) and cascaded DELETEs — so no writer has to know it exists. Postgres uses statement-level triggers
with transition tables (one aggregate per statement, cheap for bulk ingest); SQLite uses row triggers.
``first_at``/``last_at`` only widen (a min/max cannot be subtracted).

Revision ID: 0003
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0001"
branch_labels = None
depends_on = None

KEYS = ["bucket", "device", "profile", "backend", "model", "quant", "test", "threads", "engine_commit"]
METRICS = ["prefill_tps", "decode_tps", "ttft_s", "peak_rss_bytes", "prefill_j_per_tok", "decode_j_per_tok",
           "prefill_avg_w", "decode_avg_w"]
COUNTS = {  # rollup column -> per-row 0/1 expression
    "n_rows": "1",
    "n_ok": "CASE WHEN exit_status = 0 THEN 1 ELSE 0 END",
    "n_failed": "CASE WHEN exit_status <> 0 THEN 1 ELSE 0 END",
    "n_throttled": "CASE WHEN throttled THEN 1 ELSE 0 END",
    "n_charging": "CASE WHEN charging THEN 1 ELSE 0 END",
    "n_modelled": "CASE WHEN power_modelled THEN 1 ELSE 0 END",
}
SOURCE_COLS = ["created_at", "device", "profile", "backend", "model", "quant", "test", "threads", "engine_commit",
               "exit_status", "throttled", "charging", "power_modelled", *METRICS]
NO_COMMIT = "(none)"  # NULL commits would never conflict in a unique key
# later revisions key the rollup on more result columns ("axes"): column -> (rollup DDL type, value for NULL)
Axes = dict[str, tuple[str, str]]


def _bucket(dialect: str) -> str:
    if dialect == "postgresql":
        return "date_trunc('day', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
    # SQLAlchemy stores SQLite datetimes as 'YYYY-MM-DD HH:MM:SS.ffffff', compared as text
    return "substr(created_at, 1, 10) || ' 00:00:00.000000'"


def _upsert(dialect: str, source: str, sign: int, metrics: list[str] = METRICS, axes: Axes | None = None) -> str:
    """Add (sign=1) or subtract (sign=-1) the aggregate of `source` rows into the rollup."""
    s = "" if sign > 0 else "-"
    axes = axes or {}
    keys = [*KEYS, *axes]
    cols = [*keys, *COUNTS, "first_at", "last_at"]
    exprs = [_bucket(dialect), "device", "profile", "backend", "model", "quant", "test", "threads",
             f"COALESCE(engine_commit, '{NO_COMMIT}')"]
    exprs += [f"COALESCE({a}, {null})" for a, (_, null) in axes.items()]  # a NULL key would never conflict
    exprs += [f"{s}SUM({e})" for e in COUNTS.values()]
    exprs += ["MIN(created_at)", "MAX(created_at)"]
    for m in metrics:
        cols += [f"s_{m}", f"n_{m}"]
        exprs += [f"{s}COALESCE(SUM(CASE WHEN exit_status = 0 THEN {m} END), 0)",
                  f"{s}COUNT(CASE WHEN exit_status = 0 THEN {m} END)"]
    sets = [f"{c} = result_rollup.{c} + excluded.{c}" for c in cols if c not in keys and not c.endswith("_at")]
    if sign > 0:
        sets += ["first_at = CASE WHEN excluded.first_at < result_rollup.first_at THEN excluded.first_at "
                 "ELSE result_rollup.first_at END",
                 "last_at = CASE WHEN excluded.last_at > result_rollup.last_at THEN excluded.last_at "
                 "ELSE result_rollup.last_at END"]
    # SQLite needs a WHERE before ON CONFLICT in INSERT ... SELECT (parser ambiguity)
    return (f"INSERT INTO result_rollup ({', '.join(cols)}) SELECT {', '.join(exprs)} FROM {source} WHERE 1=1 "
            f"GROUP BY {', '.join(str(i + 1) for i in range(len(keys)))} "
            f"ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {', '.join(sets)}")


def _prune(source: str, dialect: str) -> str:
    match = " AND ".join(f"r.{k} = o.{k}" for k in KEYS[1:8])
    return (f"DELETE FROM result_rollup AS r WHERE r.n_rows <= 0 AND EXISTS (SELECT 1 FROM {source} AS o "
            f"WHERE {match} AND r.bucket = {_bucket(dialect).replace('created_at', 'o.created_at')})"
            if dialect == "postgresql" else "DELETE FROM result_rollup WHERE n_rows <= 0")


def upgrade() -> None:
    create_rollup(METRICS)


def create_rollup(metrics: list[str], axes: Axes | None = None) -> None:
    """The rollup table over `metrics`, keyed also on `axes`, backfilled, and the triggers that keep it
    exact (a later revision that adds a metric or an axis drops it and calls this again with the longer list)."""
    dialect = op.get_bind().dialect.name
    axes = axes or {}
    source_cols = [*SOURCE_COLS[:SOURCE_COLS.index(METRICS[0])], *axes, *metrics]
    ts = "TIMESTAMP WITH TIME ZONE" if dialect == "postgresql" else "DATETIME"
    num = "DOUBLE PRECISION" if dialect == "postgresql" else "FLOAT"
    metric_cols = ",\n".join(f"s_{m} {num} NOT NULL DEFAULT 0, n_{m} BIGINT NOT NULL DEFAULT 0" for m in metrics)
    count_cols = ",\n".join(f"{c} BIGINT NOT NULL DEFAULT 0" for c in COUNTS)
    # Postgres: byte-order ("C") text keys make the panels' GROUP BY/ORDER BY sorts several times
    # cheaper than locale collation; fillfactor leaves room for HOT updates, since every ingest batch
    # rewrites the rows of its buckets and no updated column is indexed
    c = ' COLLATE "C"' if dialect == "postgresql" else ""
    axis_cols = "".join(f"{a} {ddl}{c if ddl.startswith('VARCHAR') else ''} NOT NULL, "
                        for a, (ddl, _) in axes.items())
    storage = " WITH (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.05)" if dialect == "postgresql" else ""
    op.execute(f"""CREATE TABLE result_rollup (
        bucket {ts} NOT NULL, device VARCHAR(128){c} NOT NULL, profile VARCHAR(128){c} NOT NULL,
        backend VARCHAR(32){c} NOT NULL, model VARCHAR(256){c} NOT NULL, quant VARCHAR(16){c} NOT NULL,
        test VARCHAR(64){c} NOT NULL, threads INTEGER NOT NULL, engine_commit VARCHAR(64){c} NOT NULL,
        {axis_cols}{count_cols}, first_at {ts} NOT NULL, last_at {ts} NOT NULL, {metric_cols},
        PRIMARY KEY ({', '.join([*KEYS, *axes])})){storage}""")
    # No other index: panels bound the time range on `bucket`, the primary key's first column, and
    # nothing is added on results, where each index costs every ingested row and no panel reads it.
    op.execute(_upsert(dialect, "results", 1, metrics, axes))  # backfill rows stored before this revision
    if dialect == "postgresql":
        op.execute(f"""CREATE FUNCTION farm_rollup_apply() RETURNS trigger LANGUAGE plpgsql AS $fn$
        BEGIN
          IF TG_OP IN ('UPDATE', 'DELETE') THEN
            {_upsert(dialect, "old_rows", -1, metrics, axes)};
          END IF;
          IF TG_OP IN ('INSERT', 'UPDATE') THEN
            {_upsert(dialect, "new_rows", 1, metrics, axes)};
          END IF;
          IF TG_OP IN ('UPDATE', 'DELETE') THEN
            {_prune("old_rows", dialect)};
          END IF;
          RETURN NULL;
        END $fn$""")
        op.execute("CREATE TRIGGER results_rollup_ins AFTER INSERT ON results REFERENCING NEW TABLE AS new_rows "
                   "FOR EACH STATEMENT EXECUTE FUNCTION farm_rollup_apply()")
        op.execute("CREATE TRIGGER results_rollup_upd AFTER UPDATE ON results REFERENCING OLD TABLE AS old_rows "
                   "NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION farm_rollup_apply()")
        op.execute("CREATE TRIGGER results_rollup_del AFTER DELETE ON results REFERENCING OLD TABLE AS old_rows "
                   "FOR EACH STATEMENT EXECUTE FUNCTION farm_rollup_apply()")
        return
    for event, parts in (("INSERT", [("NEW", 1)]), ("UPDATE", [("OLD", -1), ("NEW", 1)]), ("DELETE", [("OLD", -1)])):
        body = []
        for ref, sign in parts:
            row = "(SELECT " + ", ".join(f"{ref}.{c} AS {c}" for c in source_cols) + ")"
            body.append(_upsert(dialect, row, sign, metrics, axes) + ";")
        if event != "INSERT":
            body.append(_prune("", dialect) + ";")
        op.execute(f"CREATE TRIGGER results_rollup_{event.lower()[:3]} AFTER {event} ON results FOR EACH ROW "
                   f"BEGIN {' '.join(body)} END")


def downgrade() -> None:
    drop_rollup()


def drop_rollup() -> None:
    dialect = op.get_bind().dialect.name
    for name in ("ins", "upd", "del"):
        op.execute(f"DROP TRIGGER IF EXISTS results_rollup_{name}" + (" ON results" if dialect == "postgresql" else ""))
    if dialect == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS farm_rollup_apply()")
    op.execute("DROP TABLE IF EXISTS result_rollup")
