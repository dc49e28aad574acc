"""Backends (inference engines) behind one interface and one registry."""

from __future__ import annotations

from farm.backends.base import Artifact, Backend, BackendOutput, Prepared
from farm.registry import Registry

BACKENDS: Registry[type[Backend]] = Registry("backend", "farm.backends", {
    "reference": "farm.backends.reference:ReferenceBackend",
    "llamacpp": "farm.backends.llamacpp:LlamaCppBackend",
    "sleep": "farm.backends.sleep:SleepBackend",
    "mnn": "farm.backends.mnn:MnnBackend",
    "executorch": "farm.backends.executorch:ExecuTorchBackend",
    "mllm": "farm.backends.mllm:MllmBackend",
    "ortgenai": "farm.backends.ortgenai:OrtGenAIBackend",
    "mlc": "farm.backends.mlc:MlcBackend",
})


def get_backend(name: str, **options: object) -> Backend:
    return BACKENDS.create(name, **options)


__all__ = ["BACKENDS", "Artifact", "Backend", "BackendOutput", "Prepared", "get_backend"]
