"""Sweep validation: good files load, bad files give one line naming file:line and the field."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from farm.errors import ConfigError
from farm.spec import json_schema, load_sweep

REPO = Path(__file__).resolve().parent.parent

GOOD = """\
version: 1
name: t
models:
  - farm-tiny
  - card: smollm2-135m
    vary: {n_layers: [10, 20]}
quants: [q4_0, q8_0]
devices: [local]
prompt_tokens: [64]
gen_tokens: [16]
threads: [1, 2]
repetitions: 3
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "sweep.yaml"
    p.write_text(text)
    return p


def test_good_sweep_loads_with_shorthands(tmp_path: Path) -> None:
    sweep = load_sweep(write(tmp_path, GOOD))
    assert [m.card for m in sweep.models] == ["farm-tiny", "smollm2-135m"]
    assert sweep.models[1].vary == {"n_layers": [10, 20]}
    assert sweep.backends[0].name == "reference"
    assert sweep.digest() == load_sweep(write(tmp_path, GOOD)).digest()


@pytest.mark.parametrize("bad, line, words", [
    (GOOD.replace("[q4_0, q8_0]", "[q4_0, q5_9]"), 7, ["quants[1]", "q5_9"]),
    (GOOD.replace("repetitions: 3", "repetitions: 3\nrepetitons: 4"), 13, ["unknown key 'repetitons'"]),
    (GOOD.replace("version: 1", "version: 2"), 1, ["version 2 is not supported"]),
    (GOOD.replace("  - farm-tiny\n", "  - farm-tinny\n"), 4, ["farm-tinny", "farm-tiny"]),
    (GOOD.replace("threads: [1, 2]", "threads: [0]"), 11, ["threads", "≥ 1"]),
    (GOOD.replace("vary: {n_layers: [10, 20]}", "vary: {n_lyers: [10]}"), 6, ["models[1].vary", "n_lyers"]),
    (GOOD.replace("devices: [local]", "devices: [local]\nbackends: [nope]"), 9, ["backend 'nope'"]),
    (GOOD.replace("name: t\n", ""), 1, ["missing required key 'name'"]),
    ("version: 1\nname: t\nmodels: [\n", 4, ["invalid YAML"]),
])
def test_bad_sweeps_name_file_line_and_field(tmp_path: Path, bad: str, line: int, words: list[str]) -> None:
    path = write(tmp_path, bad)
    with pytest.raises(ConfigError) as info:
        load_sweep(path)
    msg = str(info.value)
    assert msg.startswith(f"{path}:{line}:"), msg
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg


def test_cli_bad_sweep_exits_2_with_one_line_and_runs_nothing(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("[q4_0, q8_0]", "[q4_0, q5_9]"))
    db = tmp_path / "farm.db"
    proc = subprocess.run([sys.executable, "-m", "farm.cli.main", "submit", str(path), "--db", f"sqlite:///{db}"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and f"{path}:7:" in lines[0], proc.stderr
    assert not db.exists(), "a rejected sweep must not touch the store"


def test_example_sweeps_validate() -> None:
    for path in sorted((REPO / "jobs").glob("*.yaml")):
        load_sweep(path)


def test_json_schema_is_published() -> None:
    schema = json_schema()
    assert "quants" in schema["properties"] and schema["additionalProperties"] is False
