"""result_rollup keyed also on n_depth, cpus and power_mode (the axes of revisions 0008 and 0009)

Without them two cells that differ only in KV depth, cores or power mode were summed into one
dashboard point. The rollup is dropped and rebuilt (revision 0003's builder) with the three columns
in its primary key, backfilled from every stored result. The results columns are NOT NULL with
defaults; the rollup still maps a NULL to that default, as it maps a NULL commit to "(none)", since a
NULL in a unique key never conflicts and would split a cell into one row per insert.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

# rollup column (same name as in results) -> (rollup DDL type, value of a NULL): results' server defaults
AXES = {"n_depth": ("INTEGER", "0"), "cpus": ("VARCHAR(64)", "'all'"), "power_mode": ("VARCHAR(64)", "'default'")}


def _revision(filename: str, name: str) -> ModuleType:  # revision files are not an importable package
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(filename))
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def _metrics() -> tuple[ModuleType, list[str]]:
    rollup = _revision("0003_dashboard_indexes.py", "farm_rev_0003")
    bounds = _revision("0007_energy_resolution.py", "farm_rev_0007").COLUMNS
    return rollup, [*rollup.METRICS, *bounds]


def upgrade() -> None:
    rollup, metrics = _metrics()
    rollup.drop_rollup()
    rollup.create_rollup(metrics, AXES)


def downgrade() -> None:
    rollup, metrics = _metrics()
    rollup.drop_rollup()
    rollup.create_rollup(metrics)  # the 0007 shape
