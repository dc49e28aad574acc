"""Architecture cards: every card loads, its shape matches the published parameter count, and derived
(swept) cards are named, validated and refused the way users will rely on."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from farm.errors import ConfigError
from farm.paths import REPO_ROOT
from farm.zoo.cards import SWEEPABLE, Card, card_names, list_cards, load_card, parse_ref

REQUIRED = {
    "smollm2-135m", "smollm2-360m", "qwen2.5-0.5b", "qwen2.5-1.5b", "llama-3.2-1b", "tinyllama-1.1b",
    "gemma-2-2b", "phi-3-mini", "phonelm-0.5b", "phonelm-1.5b", "openelm-270m", "mobilellama-1.4b",
    "farm-tiny", "farm-mini",
}  # fmt: skip
PUBLISHED = [c for c in list_cards() if c.params_published]


def test_required_cards_exist_and_load() -> None:
    cards = list_cards()
    assert {c.name for c in cards} >= REQUIRED
    assert [c.name for c in cards] == card_names()
    for card in cards:
        assert load_card(card.name) == card
        if card.params_published:  # real models cite where their shape came from
            assert card.hf_id and card.source.startswith("https://")


@pytest.mark.parametrize("card", PUBLISHED, ids=lambda c: c.name)
def test_computed_params_match_published(card: Card) -> None:
    published = card.params_published_count
    assert published
    error = abs(card.n_params() - published) / published
    # Published counts are rounded names ("1.5B"): 5% unless the card explains a larger gap.
    if card.params_note:
        assert error < 0.10, card.params_note
    else:
        assert error < 0.05, f"{card.name}: computed {card.n_params():,} vs published {published:,}"


def test_honesty_fields() -> None:
    cards = {c.name: c for c in list_cards()}
    assert all(c.runnable for c in cards.values())  # every card runs (in which engine: test_cards_llamacpp)
    assert cards["gemma-2-2b"].architecture.arch == "gemma2" and cards["openelm-270m"].architecture.arch == "openelm"
    for name in ("phi-3-mini", "phonelm-0.5b", "phonelm-1.5b"):
        assert cards[name].runnable and cards[name].approximation
    # llama3 rope scaling is modelled now (rope_freqs.weight): no approximation left to declare
    assert cards["llama-3.2-1b"].architecture.rope_scaling is not None and not cards["llama-3.2-1b"].approximation
    assert cards["phonelm-0.5b"].architecture.hidden_act == "relu"
    with pytest.raises(ValueError, match="unsupported"):
        Card(name="x", source="s", architecture=cards["farm-tiny"].architecture, runnable=False)


def test_runnable_cards_fit_quant_blocks() -> None:
    # q4_0/q8_0 quantise rows in blocks of 32: every runnable card must be buildable in every quant.
    for card in list_cards():
        a = card.architecture
        if card.runnable:
            assert a.d_model % 32 == 0 and a.d_ff % 32 == 0 and (a.n_heads * a.dim_head) % 32 == 0, card.name


def test_openelm_per_layer_count_is_exact() -> None:
    card = load_card("openelm-270m")
    e, a = card.extra, card.architecture
    d, hd, vocab = a.d_model, a.dim_head, a.vocab_size
    exact = vocab * d + d
    for q, kv, ff in zip(a.layer_n_heads, a.layer_n_kv_heads, a.layer_d_ff, strict=True):  # type: ignore[arg-type]
        exact += d * (q + 2 * kv) * hd + q * hd * d + 2 * hd + 3 * d * ff + 2 * d
    assert exact == e["exact_params"] == card.n_params()
    # the KV cache follows the per-layer KV heads (63 over 16 layers), not 16 x the rounded mean 4
    assert a.kv_cache_bytes(100, "f32") == 2 * 63 * hd * 100 * 4


def test_overrides_name_shape_and_stacking() -> None:
    base = load_card("smollm2-135m")
    v = base.with_overrides(d_ff="1024", n_layers=20)
    assert v.name == "smollm2-135m[n_layers=20,d_ff=1024]"
    assert (v.architecture.n_layers, v.architecture.d_ff) == (20, 1024)
    assert v.architecture.d_model == base.architecture.d_model
    assert v.base == "smollm2-135m" and v.params_published is None
    assert v.with_overrides(n_layers=24) == base.with_overrides(n_layers=24, d_ff=1024)
    assert load_card("smollm2-135m[ d_ff=1024 , n_layers=20 ]") == v
    assert base.with_overrides() is base


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"rope_theta": 1}, "cannot vary 'rope_theta'"),
        ({"n_layers": "many"}, "not an integer"),
        ({"n_heads": 8}, r"smollm2-135m\[n_heads=8\]: invalid architecture: .*multiple of n_kv_heads"),
        ({"n_layers": 0}, "greater than 0"),
    ],
)
def test_bad_overrides_are_config_errors(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_card("smollm2-135m").with_overrides(**fields)


def test_sweepable_fields_are_architecture_fields() -> None:
    from farm.zoo.arch import Architecture

    assert set(SWEEPABLE) <= set(Architecture.model_fields)


def test_unknown_card_lists_known_names() -> None:
    with pytest.raises(ConfigError) as info:
        load_card("gpt-5-nano")
    assert "gpt-5-nano" in str(info.value) and "smollm2-135m" in str(info.value)


def test_parse_ref() -> None:
    assert parse_ref("qwen2.5-0.5b") == ("qwen2.5-0.5b", {})
    assert parse_ref("a[n_layers=2,d_ff=64]") == ("a", {"n_layers": "2", "d_ff": "64"})
    with pytest.raises(ConfigError):
        parse_ref("a[n_layers]")


def test_card_from_path_with_line_numbered_error(tmp_path: Path) -> None:
    good = yaml.safe_load((REPO_ROOT / "farm/zoo/cards/farm-tiny.yaml").read_text())
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({**good, "name": "mine"}))
    assert load_card(path).name == "mine"
    bad = tmp_path / "bad.yaml"
    lines = (REPO_ROOT / "farm/zoo/cards/farm-tiny.yaml").read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("  n_layers:")) + 1
    bad.write_text("\n".join([*lines[:at], "  colour: red", *lines[at:]]))
    with pytest.raises(ConfigError, match=rf"bad.yaml:{at + 1}: .*unknown key 'colour'"):
        load_card(str(bad))


def test_arch_sweep_example_keeps_parameters_constant() -> None:
    sweep = yaml.safe_load((REPO_ROOT / "jobs/arch-sweep.yaml").read_text())
    counts = []
    for model in sweep["models"]:
        card = load_card(model["card"])
        for key, values in model.get("vary", {}).items():
            assert len(values) == 1  # paired variants, not a cross product
            card = card.with_overrides(**{key: values[0]})
        counts.append(card.n_params())
    assert len(counts) == 3 and max(counts) / min(counts) < 1.001


def test_every_card_runs_in_both_engines_or_says_how_not() -> None:
    """Both backends accept every card's architecture; where llama.cpp computes something else (PhoneLM's
    ReLU runs as SiLU there: test_cards_llamacpp), the card's approximation says so."""
    from farm.backends.llamacpp import LlamaCppBackend
    from farm.backends.reference import ReferenceBackend

    for card in list_cards():
        arch = card.architecture.arch
        assert ReferenceBackend.cannot_run(arch, frozenset({"q4_0"})) is None, card.name
        assert LlamaCppBackend.cannot_run(arch, frozenset({"q4_0"})) is None, card.name
        if card.architecture.hidden_act == "relu":
            assert card.approximation and "llama.cpp" in card.approximation and "SiLU" in card.approximation
