"""Executors hand jobs to agents: in-process (embedded default), Celery on Redis, Ray."""

from __future__ import annotations

from farm.executors.base import Executor, ProgressEvent
from farm.registry import Registry

EXECUTORS: Registry[type[Executor]] = Registry("executor", "farm.executors", {
    "local": "farm.executors.local:LocalExecutor",
    "celery": "farm.executors.celery:CeleryExecutor",
    "ray": "farm.executors.ray:RayExecutor",
}, extras={"ray": "farm[ray]"})

__all__ = ["EXECUTORS", "Executor", "ProgressEvent"]
