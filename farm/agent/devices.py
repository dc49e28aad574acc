"""The devices an agent owns: their profiles and open transports, reused across jobs."""

from __future__ import annotations

import contextlib
import threading

from farm.devices import DeviceEntry, DeviceProfile, Inventory, load_profile
from farm.errors import ConfigError
from farm.transports import open_transport
from farm.transports.base import Transport


class DevicePool:
    """Profiles and transports of an inventory's devices, opened lazily, one per device."""

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory
        self._by_name = {d.name: d for d in inventory.devices}
        self._profiles: dict[str, DeviceProfile] = {}
        self._transports: dict[str, Transport] = {}
        self._lock = threading.Lock()

    def entry(self, name: str) -> DeviceEntry:
        try:
            return self._by_name[name]
        except KeyError:
            raise ConfigError(f"device {name!r} is not attached here; known: {', '.join(self._by_name)}") from None

    def profile(self, name: str) -> DeviceProfile:
        entry = self.entry(name)
        with self._lock:
            if entry.profile not in self._profiles:
                self._profiles[entry.profile] = load_profile(entry.profile, self.inventory.profile_dirs)
            return self._profiles[entry.profile]

    def transport(self, name: str) -> Transport:
        entry = self.entry(name)
        with self._lock:
            if name not in self._transports:
                self._transports[name] = open_transport(entry.transport.kind, **entry.transport.options())
            return self._transports[name]

    def drop(self, name: str) -> None:
        """Forget a transport after an infrastructure error; the next use reconnects."""
        with self._lock:
            t = self._transports.pop(name, None)
        if t is not None:
            with contextlib.suppress(Exception):  # a broken transport may fail to close; dropped anyway
                t.close()

    def close(self) -> None:
        for name in list(self._transports):
            self.drop(name)
