"""YAML loading that remembers where every value came from, for file:line error messages.

``load_yaml`` returns plain Python data plus a ``Locator`` that maps a pydantic error location
(a tuple of keys and indices) to the line of the node in the file, so users read
``jobs/x.yaml:12: quants[1]: 'q5_9' is not one of ...`` instead of a stack of pydantic text.

Loading is strict, because these files come from users and from other people's repositories:
the file must be UTF-8 text of at most ``MAX_BYTES``; a mapping may not repeat a key; nesting is
at most ``MAX_DEPTH`` deep and aliases may expand to at most ``MAX_VALUES`` values in all (a
"billion laughs" file is refused after one pass over its events, before anything is built).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from farm.errors import ConfigError

M = TypeVar("M", bound=BaseModel)

MAX_BYTES = 4 * 2**20  # sweeps, inventories, profiles and cards are a few KiB
MAX_DEPTH = 64
MAX_VALUES = 200_000  # scalars and collections after alias expansion

_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe", "UTF-16"),
         (b"\xfe\xff", "UTF-16"))


class Locator:
    """Line numbers (1-based) of the nodes of one YAML document."""

    def __init__(self, path: str, root: yaml.Node | None) -> None:
        self.path = path
        self.root = root

    def line(self, loc: Sequence[Any]) -> int:
        node = self.root
        best = node.start_mark.line + 1 if node is not None else 1
        for key in loc:
            if isinstance(node, yaml.MappingNode):
                nxt = None
                for k, v in node.value:
                    if k.value == str(key):
                        nxt = v
                        best = k.start_mark.line + 1
                        break
                node = nxt
            elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
                node = node.value[key]
                best = node.start_mark.line + 1
            else:
                break
            if node is None:
                break
        return best

    def where(self, loc: Sequence[Any]) -> str:
        return f"{self.path}:{self.line(loc)}"


def load_yaml(path: str | Path) -> tuple[Any, Locator]:
    """Parse a YAML file strictly; every problem becomes one ConfigError line with file:line."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    if len(raw) > MAX_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_BYTES // 2**20} MiB: not a farm YAML file")
    return loads_yaml(decode_text(raw, str(path)), str(path))


def decode_text(raw: bytes, name: str) -> str:
    """UTF-8 text (a UTF-8 BOM is allowed), or one line saying what the bytes are instead."""
    for bom, enc in _BOMS:
        if raw.startswith(bom):
            raise ConfigError(f"{name}:1: the file is {enc}; save it as UTF-8")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{name}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); "
                          f"save it as UTF-8") from None
    if "\x00" in text:
        line = text[:text.index("\x00")].count("\n") + 1
        raise ConfigError(f"{name}:{line}: a NUL byte: this is a binary file, not YAML")
    return text


def _check_events(text: str, name: str) -> None:
    """One pass over the parser's events: bound nesting depth and the size after alias expansion."""
    sizes: dict[str, int] = {}  # anchor -> expanded size of its node
    stack: list[list[Any]] = []  # [anchor, running size] of the open collections
    total = 0
    for ev in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(ev, yaml.CollectionStartEvent):
            stack.append([ev.anchor, 1])
            if len(stack) > MAX_DEPTH:
                raise ConfigError(f"{name}:{ev.start_mark.line + 1}: nested deeper than {MAX_DEPTH} levels")
            continue
        if isinstance(ev, yaml.CollectionEndEvent):
            anchor, size = stack.pop()
        elif isinstance(ev, yaml.ScalarEvent):
            anchor, size = ev.anchor, 1
        elif isinstance(ev, yaml.AliasEvent):
            anchor, size = None, sizes.get(ev.anchor, 1)
        else:
            continue
        if anchor is not None:
            sizes[anchor] = size
        if stack:
            stack[-1][1] += size
        else:
            total += size
        if total + sum(s for _, s in stack) > MAX_VALUES:
            raise ConfigError(f"{name}:{ev.start_mark.line + 1}: aliases expand to more than {MAX_VALUES:,} values; "
                              f"refusing to build it (a YAML alias bomb?)")


def _check_duplicate_keys(root: yaml.Node | None, name: str) -> None:
    seen: set[int] = set()
    todo = [root] if root is not None else []
    while todo:
        node = todo.pop()
        if id(node) in seen:  # an alias shares its node: look at it once
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            keys: dict[Any, int] = {}
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
                    if k.value in keys:
                        raise ConfigError(f"{name}:{k.start_mark.line + 1}: duplicate key {k.value!r} "
                                          f"(first at line {keys[k.value]})")
                    keys[k.value] = k.start_mark.line + 1
                todo += [k, v]
        elif isinstance(node, yaml.SequenceNode):
            todo += node.value


def _bad_scalar_line(text: str) -> int:
    """The line of the first scalar PyYAML resolves but cannot construct (2024-13-45 as a timestamp)."""
    loader = yaml.SafeLoader(text)
    try:
        todo = [loader.get_single_node()]
        while todo:
            node = todo.pop(0)
            if isinstance(node, yaml.ScalarNode):
                try:
                    loader.construct_object(node)
                except (ValueError, OverflowError):
                    return node.start_mark.line + 1
            elif isinstance(node, yaml.MappingNode):
                todo += [x for kv in node.value for x in kv]
            elif isinstance(node, yaml.SequenceNode):
                todo += node.value
    finally:
        loader.dispose()
    return 1


def loads_yaml(text: str, name: str = "<string>") -> tuple[Any, Locator]:
    try:
        _check_events(text, name)
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            _check_duplicate_keys(root, name)
            data = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise ConfigError(f"{name}:{line}: invalid YAML: {exc.problem or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: invalid YAML: {exc}") from exc
    except (ValueError, OverflowError) as exc:  # e.g. a timestamp PyYAML resolves but cannot build
        raise ConfigError(f"{name}:{_bad_scalar_line(text)}: invalid YAML value: {exc}") from None
    return data, Locator(name, root)


def _loc_text(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def describe(exc: ValidationError) -> tuple[list[Any], str]:
    """The first error of a pydantic ValidationError as (location, "field: message")."""
    errors = exc.errors()
    # A typo gives "unknown key 'serail'" and "missing key 'serial'": the unknown key is the one to fix.
    err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
    # Drop pydantic's union/tagged-union markers from the location, keep the user's keys.
    loc = [p for p in err["loc"] if isinstance(p, int) or not str(p).startswith(("function-", "tagged-"))]
    field = _loc_text(loc)
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = f"unknown key {loc[-1]!r}" if loc else "unknown key"
    elif err["type"] == "missing":
        msg = f"missing required key {loc[-1]!r}" if loc else "missing key"
    msg = msg.removeprefix("Value error, ")
    given = err.get("input")
    if err["type"] in ("literal_error", "enum", "int_parsing", "float_parsing", "bool_parsing", "int_type",
                       "float_type", "bool_type", "string_type", "less_than_equal", "greater_than_equal", "less_than",
                       "greater_than") and isinstance(given, str | int | float):
        msg = f"{given!r}: {msg}"
    return loc, (f"{field}: {msg}" if field and err["type"] != "missing" else msg)


def validate(model: type[M], data: Any, locator: Locator) -> M:
    """Validate `data` as `model`; the first error becomes one line naming file:line and field."""
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as exc:
        loc, text = describe(exc)
        raise ConfigError(f"{locator.where(loc)}: {text}") from None
