"""YAML loading that remembers where every value came from, for file:line error messages.

``load_yaml`` returns plain Python data plus a ``Locator`` that maps a pydantic error location
(a tuple of keys and indices) to the line of the node in the file, so users read
``jobs/x.yaml:12: quants[1]: 'q5_9' is not one of ...`` instead of a stack of pydantic text.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from farm.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


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
    """Parse a YAML file; syntax errors become ConfigError with file:line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    return loads_yaml(text, str(path))


def loads_yaml(text: str, name: str = "<string>") -> tuple[Any, Locator]:
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else 1
        raise ConfigError(f"{name}:{line}: invalid YAML: {exc.problem or exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{name}: invalid YAML: {exc}") from exc
    return data, Locator(name, root)


def _loc_text(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def validate(model: type[M], data: Any, locator: Locator) -> M:
    """Validate `data` as `model`; the first error becomes one line naming file:line and field."""
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as exc:
        err = exc.errors()[0]
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
        if err["type"] in ("literal_error", "enum", "int_parsing", "float_parsing", "bool_parsing") and \
                isinstance(given, str | int | float):
            msg = f"{given!r}: {msg}"
        text = f"{field}: {msg}" if field and err["type"] != "missing" else msg
        raise ConfigError(f"{locator.where(loc)}: {text}") from None
