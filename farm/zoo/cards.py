"""Architecture cards: one YAML per real small language model, from its published config.json.

Owns the `Card` type, loading cards by name or path (`farm/zoo/cards/*.yaml`), listing them, and
derived cards for architecture sweeps (`smollm2-135m[n_layers=20,d_ff=1024]`). A card says honestly
whether the reference engine can run the real architecture (`runnable`), what is approximated
(`approximation`) or why it cannot (`unsupported`); the file writer and cache live elsewhere.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from farm.errors import ConfigError
from farm.yamlio import load_yaml, validate
from farm.zoo.arch import Architecture

CARDS_DIR = Path(__file__).resolve().parent / "cards"

# Fields a sweep may vary. Kept to the shape of the network: rope, eps and biases are properties of a
# model family, not design points, and varying them would produce cards that model nothing real.
SWEEPABLE: tuple[str, ...] = ("n_layers", "d_model", "n_heads", "n_kv_heads", "head_dim", "d_ff", "vocab_size")

_SUFFIX = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}
_REF = re.compile(r"^(?P<name>[^\[\]]+?)\s*(?:\[(?P<over>[^\[\]]*)\])?$")


class Card(BaseModel):
    """A real (or farm-synthetic) model: its published shape and what farm can do with it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*(\[[a-z_]+=\d+(,[a-z_]+=\d+)*\])?$")
    hf_id: str | None = None
    source: str
    params_published: str | None = Field(default=None, pattern=r"^\d+(\.\d+)?[KMBT]$")
    params_note: str | None = None  # why the computed count differs from the published one
    architecture: Architecture
    runnable: bool
    unsupported: str | None = None
    approximation: str | None = None
    extra: dict[str, Any] = Field(default_factory=dict)  # published fields Architecture cannot hold
    notes: str = ""
    base: str | None = None  # derived cards: the card they were derived from
    overrides: dict[str, int] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _honest(self) -> Card:
        if not self.runnable and not self.unsupported:
            raise ValueError("a card with runnable: false must say why in 'unsupported'")
        if self.runnable and self.unsupported:
            raise ValueError("'unsupported' is only for runnable: false cards; use 'approximation'")
        return self

    @property
    def params_published_count(self) -> int | None:
        """`params_published` as a number ("1.23B" -> 1_230_000_000), None for synthetic cards."""
        if self.params_published is None:
            return None
        return round(float(self.params_published[:-1]) * _SUFFIX[self.params_published[-1]])

    def n_params(self) -> int:
        return self.architecture.n_params()

    def with_overrides(self, **fields: int | str) -> Card:
        """A derived card with some shape fields replaced, named `base[field=value,...]`.

        Values may be strings (from the command line). Overrides stack on a derived card. Raises
        ConfigError for a field that cannot be varied, a non-integer value, or a shape that fails
        validation (e.g. n_heads not a multiple of n_kv_heads).
        """
        if not fields:
            return self
        merged = dict(self.overrides)
        for key, raw in fields.items():
            if key not in SWEEPABLE:
                allowed = ", ".join(SWEEPABLE)
                raise ConfigError(f"{self.name}: cannot vary {key!r}; sweepable fields: {allowed}")
            try:
                merged[key] = int(raw)
            except (TypeError, ValueError):
                raise ConfigError(f"{self.name}: {key}={raw!r} is not an integer") from None
        base_name = self.base or self.name
        label = ",".join(f"{k}={merged[k]}" for k in SWEEPABLE if k in merged)
        name = f"{base_name}[{label}]"
        # The current shape is the base plus earlier overrides, and `merged` holds every overridden
        # key, so applying it here equals applying it to the base: stacking is order-independent.
        try:
            arch = Architecture(**{**self.architecture.model_dump(), **merged})
        except ValidationError as exc:
            msg = "; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())
            raise ConfigError(f"{name}: invalid architecture: {msg}") from None
        return self.model_copy(
            update={
                "name": name,
                "architecture": arch,
                "base": base_name,
                "overrides": merged,
                # The published count describes the base model, not the variant.
                "params_published": None,
                "params_note": None,
            }
        )


def parse_ref(ref: str) -> tuple[str, dict[str, str]]:
    """Split `name[k=v,k=v]` into the name and its overrides (values still strings)."""
    m = _REF.match(ref.strip())
    if not m:
        raise ConfigError(f"bad model reference {ref!r}; expected NAME or NAME[field=value,...]")
    overrides: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in (m.group("over") or "").split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(f"bad override {part!r} in {ref!r}; expected field=value")
        overrides[key.strip()] = value.strip()
    return m.group("name").strip(), overrides


def _read(path: Path) -> Card:
    data, locator = load_yaml(path)
    return validate(Card, data, locator)


@cache
def _index() -> dict[str, Path]:
    """Card name -> file. Cached: the packaged cards do not change while farm runs."""
    index: dict[str, Path] = {}
    for path in sorted(CARDS_DIR.glob("*.yaml")):
        card = _read(path)
        if card.name in index:
            raise ConfigError(f"{path}: card name {card.name!r} also used by {index[card.name]}")
        index[card.name] = path
    return index


def card_names() -> list[str]:
    return sorted(_index())


def list_cards() -> list[Card]:
    """Every packaged card, sorted by name."""
    return [_read(path) for _, path in sorted(_index().items())]


def load_card(name_or_path: str | Path) -> Card:
    """A card by name (`smollm2-135m`), by name with overrides, or from a YAML file path.

    Raises ConfigError naming the known cards when the name is unknown.
    """
    text = str(name_or_path)
    if isinstance(name_or_path, Path) or text.endswith((".yaml", ".yml")):
        path = Path(text)
        if not path.is_file():
            raise ConfigError(f"card file {path} does not exist")
        return _read(path)
    name, overrides = parse_ref(text)
    index = _index()
    path = index.get(name) or index.get(name.lower())
    if path is None:
        raise ConfigError(f"unknown model card {name!r}; known cards: {', '.join(sorted(index))}")
    return _read(path).with_overrides(**overrides)
