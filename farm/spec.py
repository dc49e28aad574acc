"""The sweep file: what to measure, validated with line-numbered errors.

A sweep is the cross product models × quants × backends × devices × prompt_tokens ×
gen_tokens × threads × depth, narrowed by ``include``/``exclude`` rules. Unknown keys are rejected, the
file carries a ``version``, and :func:`json_schema` publishes the schema for editors.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from farm.errors import ConfigError
from farm.yamlio import Locator, load_yaml, loads_yaml, validate
from farm.zoo.arch import QUANTS
from farm.zoo.mix import QUANT_LABELS, normalize

SPEC_VERSION = 1
ARCH_FIELDS = ("n_layers", "d_model", "n_heads", "n_kv_heads", "d_ff", "vocab_size", "head_dim")
MAX_TOKENS = 1 << 20  # the engines take C ints; no SLM context is longer
CELL_KEYS = ("model", "quant", "backend", "device", "prompt_tokens", "gen_tokens", "threads", "depth", "cpus",
             "power_mode")


def _quant(value: str) -> str:
    try:
        return normalize(value)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


QuantLabel = Annotated[str, AfterValidator(_quant)]


class _Strict(BaseModel):
    # strict: `threads: [true]` or `repetitions: "5"` is a mistake, not 1 and 5.
    # allow_inf_nan=False: `cooldown_s: .inf` would wait forever.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class ModelSpec(_Strict):
    """A zoo card (optionally with architecture variants) or a GGUF file."""

    card: str | None = None
    file: str | None = None
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")  # quote it if it is all digits
    vary: dict[str, list[int]] = Field(default_factory=dict)
    seed: int = 0

    @field_validator("vary")
    @classmethod
    def _vary_fields(cls, vary: dict[str, list[int]]) -> dict[str, list[int]]:
        for key, values in vary.items():
            if key not in ARCH_FIELDS:
                raise ValueError(f"{key!r} is not one of {', '.join(ARCH_FIELDS)}")
            if not values:
                raise ValueError(f"{key!r} needs at least one value")
        return vary

    @model_validator(mode="after")
    def _one_source(self) -> ModelSpec:
        if (self.card is None) == (self.file is None):
            raise ValueError("give exactly one of 'card' or 'file'")
        if self.file and self.vary:
            raise ValueError("'vary' applies to zoo cards, not to files")
        return self


class BackendSpec(_Strict):
    name: str
    options: dict[str, Any] = Field(default_factory=dict)


class Timeouts(_Strict):
    job_s: float = Field(default=1800, gt=0)
    thermal_wait_s: float | None = Field(default=None, gt=0)


class Sweep(_Strict):
    """A sweep file (version 1)."""

    version: Literal[1]
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    models: list[ModelSpec] = Field(min_length=1)
    quants: list[QuantLabel] = Field(
        min_length=1, description="llama-quantize types, lower case: " + ", ".join(QUANT_LABELS)
        + " (q3_k/q4_k/q5_k mean _m, as in llama-quantize); a file: model keeps its own")
    backends: list[BackendSpec] = Field(default_factory=lambda: [BackendSpec(name="reference")], min_length=1)
    devices: list[str] = Field(default_factory=lambda: ["local"], min_length=1)
    prompt_tokens: list[Annotated[int, Field(le=MAX_TOKENS)]] = Field(min_length=1)
    gen_tokens: list[Annotated[int, Field(le=MAX_TOKENS)]] = Field(min_length=1)
    threads: list[Annotated[int, Field(le=1024)]] = Field(
        default_factory=lambda: [1], min_length=1,
        description="engine threads; unset with `cpus` given: the chosen cores' count")
    depth: list[Annotated[int, Field(ge=0, le=MAX_TOKENS)]] = Field(
        default_factory=lambda: [0], min_length=1,
        description="tokens already in the KV cache before the timed phases (llama-bench -d)")
    cpus: list[str] = Field(default_factory=lambda: ["all"], min_length=1,
                            description="cores that run the engine: all, big, little, prime, 0xMASK or a cpu list")
    power_mode: list[str] = Field(default_factory=lambda: ["default"], min_length=1,
                                  description="default, nvpmodel:ID[+clocks], governor:NAME or freq:KHZ")
    repetitions: int = Field(default=5, ge=1, le=1000)
    warmup: int = Field(default=1, ge=0, le=100)
    cooldown_s: float = Field(default=0.0, ge=0)
    kv_type: Literal["f16", "f32"] = "f16"
    power: bool = True
    thermal_gate: bool = True
    idle_s: float = Field(default=1.0, ge=0, description="idle power baseline measured before each job")
    include: list[dict[str, Any]] = Field(default_factory=list)
    exclude: list[dict[str, Any]] = Field(default_factory=list)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    priority: int = Field(default=0, description="higher runs first (CI regression jobs before surveys)")
    _locator: Locator | None = PrivateAttr(default=None)

    def where(self, loc: list[Any]) -> str:
        """file:line of a field of the file this sweep was read from (for errors found after loading)."""
        return self._locator.where(loc) if self._locator is not None else "sweep"

    @field_validator("models", mode="before")
    @classmethod
    def _shorthand_models(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"card": m} if isinstance(m, str) else m for m in v]
        return v

    @field_validator("backends", mode="before")
    @classmethod
    def _shorthand_backends(cls, v: Any) -> Any:
        if isinstance(v, list):
            return [{"name": b} if isinstance(b, str) else b for b in v]
        return v

    @field_validator("prompt_tokens", "gen_tokens", "depth")
    @classmethod
    def _non_negative(cls, v: list[int]) -> list[int]:
        if any(x < 0 for x in v):
            raise ValueError("token counts must be ≥ 0")
        return v

    @field_validator("cpus", mode="before")
    @classmethod
    def _cpus_are_text(cls, v: Any) -> Any:
        # YAML reads 0x30 as the number 48 and 4 as a number: a mask or list must be quoted to mean what it says
        if isinstance(v, list) and any(isinstance(x, int) for x in v):
            raise ValueError('quote masks and cpu lists ("0x30", "4-7", "4"): YAML reads 0x30 as the number 48')
        return v

    @field_validator("cpus")
    @classmethod
    def _cpus(cls, v: list[str]) -> list[str]:
        from farm.affinity import check_selector

        return [check_selector(str(x)) for x in v]

    @field_validator("power_mode")
    @classmethod
    def _power_mode(cls, v: list[str]) -> list[str]:
        from farm.agent.power_mode import parse

        return [parse(str(x)).label for x in v]

    @field_validator("threads")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(x < 1 for x in v):
            raise ValueError("threads must be ≥ 1")
        return v

    @field_validator("include", "exclude")
    @classmethod
    def _rule_keys(cls, rules: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for rule in rules:
            bad = set(rule) - set(CELL_KEYS)
            if bad:
                raise ValueError(f"rule key {sorted(bad)[0]!r} is not one of {', '.join(CELL_KEYS)}")
            for key, want in rule.items():  # strict, as the axes: `threads: true` must not match 1
                kind = int if key in ("prompt_tokens", "gen_tokens", "threads", "depth") else str
                for value in want if isinstance(want, list) else [want]:
                    if type(value) is not kind:
                        raise ValueError(f"rule {key}: {value!r} is not {'an integer' if kind is int else 'a string'}")
        return rules

    @model_validator(mode="after")
    def _not_empty(self) -> Sweep:
        if all(p == 0 for p in self.prompt_tokens) and all(g == 0 for g in self.gen_tokens):
            raise ValueError("prompt_tokens and gen_tokens are all 0: nothing to measure")
        return self

    def digest(self) -> str:
        """Content hash of the validated sweep (same meaning ⇒ same digest)."""
        return hashlib.sha256(json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()).hexdigest()


def _check_registries(sweep: Sweep, loc: Locator) -> None:
    """Names that must exist in a registry are checked here, so errors carry file:line."""
    from farm.backends import BACKENDS

    known = BACKENDS.names()
    for i, b in enumerate(sweep.backends):
        if b.name not in known:
            raise ConfigError(f"{loc.where(['backends', i])}: backend {b.name!r} is not one of {', '.join(known)}")
        # the files an option names are checked on the agent host that uses them (shape only here)
        BACKENDS.options(b.name, b.options, lambda at, i=i: loc.where(["backends", i, "options", *at]),
                         context={"shape_only": True})
    for i, m in enumerate(sweep.models):
        if m.card is not None:
            from farm.zoo.cards import load_card

            try:
                load_card(m.card)
            except ConfigError as exc:
                raise ConfigError(f"{loc.where(['models', i, 'card'])}: {exc}") from None
        elif m.file is not None and not Path(m.file).expanduser().is_file():
            raise ConfigError(f"{loc.where(['models', i, 'file'])}: model file {m.file!r} does not exist")


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep file; every problem is one ConfigError line with file:line."""
    data, loc = load_yaml(path)
    return _finish(data, loc)


def loads_sweep(text: str, name: str = "<sweep>") -> Sweep:
    data, loc = loads_yaml(text, name)
    return _finish(data, loc)


def _finish(data: Any, loc: Locator) -> Sweep:
    if not isinstance(data, dict):
        raise ConfigError(f"{loc.path}:1: a sweep is a mapping with keys version, name, models, ...")
    if "version" in data and data["version"] != SPEC_VERSION:
        raise ConfigError(f"{loc.where(['version'])}: version {data['version']!r} is not supported "
                          f"(this farm reads version {SPEC_VERSION})")
    sweep = validate(Sweep, data, loc)
    sweep._locator = loc
    _check_unique(sweep, loc)
    _check_registries(sweep, loc)
    return sweep


def _check_unique(sweep: Sweep, loc: Locator) -> None:
    """The same model, quant, backend, device or count twice would make the same cell twice."""
    for field in ("models", "quants", "backends", "devices", "prompt_tokens", "gen_tokens", "threads", "depth",
                  "cpus", "power_mode"):
        seen: list[Any] = []
        for i, item in enumerate(getattr(sweep, field)):
            key = item.model_dump(mode="json") if isinstance(item, BaseModel) else item
            if key in seen:
                shown = item if not isinstance(item, BaseModel) else (
                    getattr(item, "card", None) or getattr(item, "file", None) or getattr(item, "name", ""))
                raise ConfigError(f"{loc.where([field, i])}: {field}[{i}]: {shown!r} is listed twice "
                                  f"(first as {field}[{seen.index(key)}])")
            seen.append(key)


def json_schema() -> dict[str, Any]:
    return Sweep.model_json_schema()


__all__ = ["QUANTS", "SPEC_VERSION", "BackendSpec", "ModelSpec", "Sweep", "json_schema", "load_sweep", "loads_sweep"]
