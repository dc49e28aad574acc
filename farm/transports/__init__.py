"""Transports (adb, ssh, local) behind one interface and one registry."""

from __future__ import annotations

from typing import Any

from farm.registry import Registry
from farm.transports.base import CommandResult, DeviceInfo, Transport, quote_argv

TRANSPORTS: Registry[type[Transport]] = Registry("transport", "farm.transports", {
    "local": "farm.transports.local:LocalTransport",
    "adb": "farm.transports.adb:AdbTransport",
    "ssh": "farm.transports.ssh:SshTransport",
})


def open_transport(kind: str, **options: Any) -> Transport:
    """Instantiate the transport `kind` with the options of a device entry."""
    return TRANSPORTS.create(kind, **options)


__all__ = ["TRANSPORTS", "CommandResult", "DeviceInfo", "Transport", "open_transport", "quote_argv"]
