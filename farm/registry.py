"""One registry per plug-in kind: a built-in table plus entry points.

A transport, backend or power source is one module plus one line here (or an entry point in
another package's metadata under ``farm.transports`` / ``farm.backends`` / ``farm.power``).
Lookups import lazily, so a missing optional dependency only hurts the plug-in that needs it.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from farm.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name → plug-in class, from ``builtins`` ("module:attr" strings) and the entry-point group."""

    def __init__(self, kind: str, group: str, builtins: dict[str, str]) -> None:
        self.kind = kind
        self.group = group
        self._targets = dict(builtins)
        self._loaded: dict[str, Any] = {}

    def names(self) -> list[str]:
        names = set(self._targets)
        names.update(ep.name for ep in entry_points(group=self.group))
        return sorted(names)

    def register(self, name: str, target: str | type) -> None:
        """Add a plug-in at run time (tests, notebooks)."""
        if isinstance(target, str):
            self._targets[name] = target
        else:
            self._loaded[name] = target

    def get(self, name: str) -> Any:
        if name in self._loaded:
            return self._loaded[name]
        target = self._targets.get(name)
        if target is None:
            for ep in entry_points(group=self.group):
                if ep.name == name:
                    self._loaded[name] = ep.load()
                    return self._loaded[name]
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        module, _, attr = target.partition(":")
        self._loaded[name] = getattr(importlib.import_module(module), attr)
        return self._loaded[name]
