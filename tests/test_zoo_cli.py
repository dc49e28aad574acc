"""`farm zoo` through click's CliRunner, and its errors through `farm`'s exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from farm.cli.main import cli, main
from farm.zoo.cards import card_names

UNRUNNABLE = Path(__file__).parent / "data" / "unrunnable-card.yaml"


@pytest.fixture(autouse=True)
def farm_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FARM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def run(*args: str) -> str:
    result = CliRunner().invoke(cli, ["zoo", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_list_shows_every_card_with_counts_and_status() -> None:
    out = run("list")
    for name in card_names():
        assert name in out
    assert "134.5M" in out and "135M" in out  # smollm2-135m computed vs published
    assert "approx.: llama-equivalent shapes" in out and "no:" not in out


def test_show_text_and_json() -> None:
    out = run("show", "phonelm-1.5b")
    assert "1,618,593,280" in out and "approximation: llama.cpp runs the ReLU-gated FFN" in out and "KV cache" in out
    data = json.loads(run("show", "smollm2-135m[n_layers=20]", "--json"))
    assert data["name"] == "smollm2-135m[n_layers=20]" and data["architecture"]["n_layers"] == 20
    assert data["n_params"] < 134_515_008


def test_build_prints_path_size_sha256(farm_home: Path) -> None:
    out = run("build", "farm-tiny", "--quant", "q8_0", "--seed", "3", "--set", "n_layers=2")
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    path = Path(fields["path"].strip())
    assert fields["name"].strip() == "farm-tiny[n_layers=2]" and path.is_file()
    assert path.parent == farm_home / "cache" / "models" and ".q8_0.s3." in path.name
    assert fields["size"].strip().startswith(str(path.stat().st_size))
    assert len(fields["sha256"].strip()) == 64
    assert run("build", "farm-tiny", "--quant", "q8_0", "--seed", "3", "--set", "n_layers=2") == out


def test_add_and_files(tmp_path: Path) -> None:
    built = dict(line.split(":", 1) for line in run("build", "farm-tiny").splitlines() if ":" in line)
    out = run("add", "tiny", built["path"].strip(), "--sha256", built["sha256"].strip())
    assert "registered tiny" in out and "quant q4_0" in out
    assert "tiny" in run("files")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["zoo", "show", "no-such-model"], "known cards: farm-mini"),
        (["zoo", "build", str(UNRUNNABLE)], "no file is built for this card"),
        (["zoo", "build", "farm-tiny", "--set", "n_layers"], "expected field=value"),
        (["zoo", "add", "x", "/nonexistent.gguf"], "no such file"),
    ],
)
def test_config_errors_exit_2(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2
    assert message in " ".join(capsys.readouterr().err.split())


def test_add_sha256_mismatch_names_both_hashes(capsys: pytest.CaptureFixture[str]) -> None:
    built = dict(line.split(":", 1) for line in run("build", "farm-tiny").splitlines() if ":" in line)
    with pytest.raises(SystemExit) as info:
        main(["zoo", "add", "tiny", built["path"].strip(), "--sha256", "f" * 64])
    err = "".join(capsys.readouterr().err.split())
    assert info.value.code == 2 and "f" * 64 in err and built["sha256"].strip() in err
