"""One registry per plug-in kind: a built-in table plus entry points.

A transport, backend or power source is one module plus one line here (or an entry point in
another package's metadata under ``farm.transports`` / ``farm.backends`` / ``farm.power``).
Lookups import lazily, so a missing optional dependency only hurts the plug-in that needs it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from farm.errors import ConfigError

T = TypeVar("T")


class PluginOptions(BaseModel):
    """The options a plug-in takes: each plug-in class names its subclass as ``Options``.

    Strict and closed: a typo (``insecure_accept_any_host_keys``) or a string where a bool belongs
    (``insecure_accept_any_host_key: "false"``) is an error, never ignored or read as truthy.
    """

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class Registry(Generic[T]):
    """Name → plug-in class, from ``builtins`` ("module:attr" strings) and the entry-point group."""

    def __init__(self, kind: str, group: str, builtins: dict[str, str], extras: dict[str, str] | None = None) -> None:
        self.kind = kind
        self.group = group
        self._targets = dict(builtins)
        self._loaded: dict[str, Any] = {}
        self._extras = dict(extras or {})  # plug-in name -> what to pip install when its dependency is missing

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
        try:
            self._loaded[name] = getattr(importlib.import_module(module), attr)
        except ModuleNotFoundError as exc:
            if exc.name and (module == exc.name or module.startswith(exc.name + ".")):
                raise  # the plug-in's own module is missing: a broken install, not a missing extra
            hint = self._extras.get(name, exc.name or "")
            raise ConfigError(f"{self.kind} {name!r} needs the Python package {exc.name!r}, which is not "
                              f"installed: pip install '{hint}'") from None
        return self._loaded[name]

    def options(self, name: str, given: dict[str, Any] | None,
                where: Callable[[Sequence[Any]], str] | None = None,
                context: dict[str, Any] | None = None) -> PluginOptions:
        """Validate the options `given` to plug-in `name` against its ``Options`` model.

        `where` maps a location inside the options (keys, indices) to the place the user wrote it
        ("file.yaml:12"); an unknown option is an error that lists the known ones. `context` reaches
        the model's validators (``shape_only``: a sweep checked where it is submitted, not on the agent).
        """
        model: type[PluginOptions] = getattr(self.get(name), "Options", PluginOptions)
        try:
            return model.model_validate(given or {}, context=context)
        except ValidationError as exc:
            from farm.yamlio import describe

            loc, text = describe(exc)
            if any(e["type"] == "extra_forbidden" for e in exc.errors()) and len(loc) == 1:
                known = ", ".join(model.model_fields) or "none"
                text = f"unknown option {loc[0]!r}; known: {known}"
            place = f"{where(loc)}: " if where else ""
            raise ConfigError(f"{place}{self.kind} {name!r}: {text}") from None

    def create(self, name: str, *args: Any, **options: Any) -> Any:
        """An instance of plug-in `name` built from validated options (ConfigError on a bad one)."""
        opts = self.options(name, options)
        return self.get(name)(*args, **opts.model_dump(exclude_unset=True))
