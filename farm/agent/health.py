"""Device health checks: reachable, storage free, battery level, temperature.

`farm devices check` runs them and quarantines a failing device in the store, so dispatch
stops sending it jobs until someone looks (`farm devices release NAME`).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any

from farm.devices import DeviceEntry, DeviceProfile
from farm.errors import FarmError, InfraError
from farm.transports.base import Transport, quote_argv

MIN_FREE_MIB = 1024  # room for an engine and a 0.5B q8_0 model with margin
MIN_BATTERY_PCT = 30  # below this a phone's DVFS and fuel gauge behave differently
TEMP_MARGIN_C = 10.0  # hotter than start_temp + margin at rest means a fan/case/placement problem
DEFAULT_SUPPLY = "/sys/class/power_supply/battery"
# Names one instruction set goes by: Android's ABI names (ro.product.cpu.abi) and `uname -m`'s.
ABI_FAMILY = {"arm64-v8a": "aarch64", "arm64": "aarch64", "aarch64": "aarch64", "x86_64": "x86_64",
              "amd64": "x86_64", "armeabi-v7a": "arm", "armv7l": "arm", "armv8l": "arm", "x86": "x86",
              "i686": "x86", "i386": "x86", "riscv64": "riscv64"}


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class Health:
    device: str
    checks: list[Check] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def reason(self) -> str:
        return "; ".join(f"{c.name}: {c.detail}" for c in self.checks if not c.ok)


def _free_mib(transport: Transport, path: str) -> int | None:
    # Walk up to an existing directory: the workdir may not exist before the first job.
    probe = f"p={quote_argv([path])}; while [ ! -d \"$p\" ]; do p=$(dirname \"$p\"); done; df -k \"$p\" | tail -n 1"
    out = transport.shell(probe, timeout=20)
    fields = out.stdout.split()
    if out.exit_code != 0 or len(fields) < 4:
        return None
    try:
        return int(fields[3]) // 1024
    except ValueError:
        return None


def abi_mismatch(device_abi: str, profile: DeviceProfile) -> str | None:
    """Why a device reporting `device_abi` cannot run what its profile builds for (None: it can)."""
    family = ABI_FAMILY.get(device_abi.strip().lower(), device_abi.strip().lower())
    if family == ABI_FAMILY.get(profile.abi.lower(), profile.abi.lower()):
        return None
    return (f"device reports abi {device_abi.strip()!r} but its profile {profile.name} says {profile.abi!r}: "
            f"the engine built for the profile would not run there; fix the inventory's profile")


def require_abi(device: str, device_abi: str, profile: DeviceProfile) -> None:
    """Refuse (as infrastructure) to run on a device whose instruction set is not its profile's."""
    why = abi_mismatch(device_abi, profile)
    if why:
        raise InfraError(f"device {device}: {why}")


def _supply(profile: DeviceProfile) -> str:
    """The phone's battery directory as its profile's power source names it."""
    return str(profile.power.options.get("supply") or DEFAULT_SUPPLY).rstrip("/")


def _battery_pct(transport: Transport, profile: DeviceProfile) -> int | None:
    out = transport.run(["cat", f"{_supply(profile)}/capacity"], timeout=10)
    try:
        return int(out.stdout.strip()) if out.exit_code == 0 else None
    except ValueError:
        return None


def check_device(entry: DeviceEntry, profile: DeviceProfile, transport: Transport) -> Health:
    """Run every check that applies to the device's kind."""
    health = Health(entry.name)
    try:
        info = transport.info()
    except FarmError as exc:
        health.checks.append(Check("reachable", False, str(exc)))
        return health
    health.info["fingerprint"] = info.fingerprint()
    health.checks.append(Check("reachable", True, f"{info.model} ({info.abi})"))
    mismatch = abi_mismatch(info.abi, profile)
    health.checks.append(Check("abi", mismatch is None, mismatch or f"{info.abi} as profile {profile.name}"))
    workdir = entry.workdir or profile.workdir
    free = _free_mib(transport, posixpath.normpath(workdir))
    health.info["free_mib"] = free
    health.checks.append(Check("storage", free is not None and free >= MIN_FREE_MIB,
                               f"{free} MiB free under {workdir}" if free is not None else "df failed"))
    if profile.kind == "phone":
        pct = _battery_pct(transport, profile)
        health.info["battery_pct"] = pct
        health.checks.append(Check("battery", pct is not None and pct >= MIN_BATTERY_PCT,
                                   f"{pct}%" if pct is not None else f"no capacity file in {_supply(profile)}"))
    if profile.thermal.zones:
        from farm.agent.thermal import read_state

        hottest = read_state(transport, profile, workdir=workdir).hottest_c
        health.info["temp_c"] = hottest
        limit = profile.thermal.start_temp_c + TEMP_MARGIN_C
        health.checks.append(Check("temperature", hottest is not None and hottest <= limit,
                                   f"{hottest:.1f} °C (limit {limit:.0f})" if hottest is not None
                                   else "no zone readable"))
    return health
