"""Device profiles (what a kind of device is) and the inventory (which devices exist, how to reach them).

A *profile* (``device_profiles/<name>.yaml``) describes a kind of device: ABI, memory, core
masks, power source, thermal zones, start temperature. A *device* is one physical unit with a
name, a profile, a transport and tags; agents own devices. The embedded default inventory is
one device, ``local``, whose profile is detected from this host.
"""

from __future__ import annotations

import os
import platform
import posixpath
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from farm.errors import ConfigError
from farm.paths import REPO_ROOT, cache_dir
from farm.yamlio import Locator, load_yaml, validate

GIB = 1024**3


class _Strict(BaseModel):
    # strict: `count: "8"` or `tags: [1]` is a mistake, not 8 and "1".
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class PowerConfig(_Strict):
    """Where power comes from. `source` names a sampler in the power registry."""

    source: str = "none"
    rate_hz: float = Field(default=50.0, gt=0)
    options: dict[str, Any] = Field(default_factory=dict)


class ThermalConfig(_Strict):
    """Thermal gating: start a job only below `start_temp_c` and flat within `stable_delta_c`."""

    zones: list[str] = Field(default_factory=list)  # files in millidegrees C (sysfs thermal_zone*/temp)
    start_temp_c: float = 45.0
    stable_delta_c: float = 1.0
    stable_window_s: float = 5.0
    timeout_s: float = 600.0
    throttle_temp_c: float | None = None  # above this during a run, the run is flagged throttled
    cpufreq: list[str] = Field(default_factory=list)  # scaling_cur_freq files (kHz)
    cpufreq_max: list[str] = Field(default_factory=list)  # cpuinfo_max_freq files (kHz)


class CpuConfig(_Strict):
    count: int = Field(gt=0)
    big: str | None = None  # hex affinity masks (documentation; the `cpus` axis resolves from max_khz)
    mid: str | None = None
    little: str | None = None
    # cpufreq cpuinfo_max_freq of each core, cpu0 first (kHz): the cluster topology the `cpus` axis
    # (all/big/little/prime) resolves from; None: one core type
    max_khz: list[int] | None = None

    @model_validator(mode="after")
    def _one_per_core(self) -> CpuConfig:
        if self.max_khz is not None and len(self.max_khz) != self.count:
            raise ValueError(f"max_khz lists {len(self.max_khz)} cores, count is {self.count}")
        return self


class PowerModes(_Strict):
    """What the `power_mode` axis may set on this kind of device (before a job; restored after it)."""

    nvpmodel: dict[int, str] = Field(default_factory=dict)  # Jetson: mode id -> name (/etc/nvpmodel.conf)
    jetson_clocks: bool = False  # Jetson: `jetson_clocks` pins clocks at their maximum (`+clocks`)
    cpufreq: bool = False  # scaling_governor / scaling_{min,max}_freq writable (root; a `rooted` tag on phones)
    sudo: bool = False  # the device's user sets them through `sudo -n` (a board's farm user with NOPASSWD rights)


class DeviceProfile(_Strict):
    """A kind of device."""

    name: str
    description: str = ""
    kind: Literal["phone", "board", "host"]
    abi: str  # arm64-v8a, aarch64, x86_64
    engine_target: Literal["host", "aarch64-linux-static"]
    ram_gib: float = Field(gt=0)
    usable_ram_fraction: float = Field(default=0.6, gt=0, le=1)
    cpus: CpuConfig
    workdir: str
    est_gflops: float = Field(default=20.0, gt=0, description="sustained GFLOP/s, all cores (for estimates)")
    mem_bw_gbs: float = Field(default=10.0, gt=0, description="sustained memory bandwidth (for estimates)")
    power: PowerConfig = Field(default_factory=PowerConfig)
    thermal: ThermalConfig = Field(default_factory=ThermalConfig)
    power_modes: PowerModes = Field(default_factory=PowerModes)
    setup: list[str] = Field(default_factory=list)
    teardown: list[str] = Field(default_factory=list)
    source: str = ""  # where the figures come from

    @property
    def ram_bytes(self) -> int:
        return int(self.ram_gib * GIB)

    @property
    def usable_ram_bytes(self) -> int:
        return int(self.ram_bytes * self.usable_ram_fraction)


class TransportConfig(BaseModel):
    """How to reach a device: `kind` selects the transport, the rest are its options (checked against
    the transport's ``Options`` model when the inventory is loaded: :func:`check_inventory`)."""

    model_config = ConfigDict(extra="allow", strict=True)
    kind: str = "local"

    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class DeviceEntry(_Strict):
    """One physical device in the inventory."""

    name: str
    profile: str
    transport: TransportConfig = Field(default_factory=TransportConfig)
    tags: list[str] = Field(default_factory=list)
    workdir: str | None = None  # overrides the profile's (virtual devices live under a sandbox)


class Inventory(_Strict):
    """The devices known to a coordinator or an agent (``devices.yaml`` or an agent config)."""

    devices: list[DeviceEntry] = Field(default_factory=list)
    profile_dirs: list[str] = Field(default_factory=list)


def profile_dirs(extra: list[str] | None = None) -> list[Path]:
    dirs = [Path(p) for p in (extra or [])]
    env = os.environ.get("FARM_PROFILES")
    if env:
        dirs += [Path(p) for p in env.split(os.pathsep) if p]
    dirs.append(REPO_ROOT / "device_profiles")
    return dirs


def load_profile(name: str, extra_dirs: list[str] | None = None) -> DeviceProfile:
    """Load a profile by name (or a path to a YAML file)."""
    if name == "host-auto":
        return host_profile()
    candidates = [Path(name)] if name.endswith((".yaml", ".yml")) else [
        d / f"{name}.yaml" for d in profile_dirs(extra_dirs)]
    for path in candidates:
        if path.is_file():
            data, loc = load_yaml(path)
            profile = validate(DeviceProfile, data, loc)
            _check_power(profile, loc)
            return profile
    known = sorted({p.stem for d in profile_dirs(extra_dirs) if d.is_dir() for p in d.glob("*.yaml")})
    raise ConfigError(f"unknown device profile {name!r}; known: {', '.join([*known, 'host-auto'])}")


def _check_power(profile: DeviceProfile, loc: Locator) -> None:
    """The power source exists and its options are its own (file:line of the profile)."""
    from farm.power import POWER_SOURCES

    known = POWER_SOURCES.names()
    if profile.power.source not in known:
        raise ConfigError(f"{loc.where(['power', 'source'])}: power.source: {profile.power.source!r} is not one of "
                          f"{', '.join(known)}")
    POWER_SOURCES.options(profile.power.source, profile.power.options,
                          lambda at: loc.where(["power", "options", *at]))


def host_profile() -> DeviceProfile:
    """A profile for this machine, read from the machine (the embedded default's device)."""
    from farm.transports.local import host_ram_bytes

    mem = host_ram_bytes() or 8 * GIB
    machine = platform.machine()
    zones = sorted(str(p) for p in Path("/sys/class/thermal").glob("thermal_zone*/temp"))
    rapl = Path("/sys/class/powercap/intel-rapl:0/energy_uj")
    power = PowerConfig(source="rapl", options={"domains": [str(rapl)]}) if rapl.exists() else PowerConfig(
        source="cpu_model")
    cores = os.cpu_count() or 1
    khz = [Path(f"/sys/devices/system/cpu/cpu{i}/cpufreq/cpuinfo_max_freq") for i in range(cores)]
    max_khz = [int(p.read_text()) for p in khz] if all(p.is_file() for p in khz) else None
    return DeviceProfile(
        name="host-auto", description=f"this host ({machine}, {cores} cores)", kind="host",
        abi=machine, engine_target="host",
        ram_gib=mem / GIB, usable_ram_fraction=0.8, cpus=CpuConfig(count=cores, max_khz=max_khz),
        workdir=str(cache_dir("device")),
        est_gflops=15.0 * cores, mem_bw_gbs=10.0, power=power,
        thermal=ThermalConfig(zones=zones, start_temp_c=80.0),
    )


def load_inventory(path: str | Path | None = None) -> Inventory:
    """The inventory from `path`, $FARM_DEVICES, or the embedded default (just `local`)."""
    path = path or os.environ.get("FARM_DEVICES")
    inv = Inventory()
    if path:
        data, loc = load_yaml(path)
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"{path}:1: an inventory is a mapping with keys devices, profile_dirs")
        inv = validate(Inventory, data, loc)
        # Profile dirs are relative to the inventory file, so the file works from any cwd.
        base = Path(path).resolve().parent
        inv.profile_dirs = [str(base / d) for d in inv.profile_dirs]
        check_inventory(inv, loc)
    embedded = 0 if any(d.name == "local" for d in inv.devices) else 1
    if embedded:
        inv.devices.insert(0, DeviceEntry(name="local", profile="host-auto", tags=["host"]))
    _one_workdir_each(inv, loc if path else None, embedded)
    return inv


# Transport options that say which machine a device is (not how to log in to it).
_WHERE_KEYS = ("host", "port", "serial", "adb_host", "adb_port")


def _one_workdir_each(inv: Inventory, loc: Locator | None, embedded: int) -> None:
    """Two entries on one machine with one workdir would share (and overwrite) each other's files.

    `embedded`: 1 when the embedded `local` entry was put in front (file indices are one less)."""
    seen: dict[tuple[Any, ...], DeviceEntry] = {}
    for i, entry in enumerate(inv.devices):
        if i < embedded:  # the implicit `local` is not the user's entry: theirs are checked among themselves
            continue
        workdir = entry.workdir
        if workdir is None:
            try:
                workdir = load_profile(entry.profile, inv.profile_dirs).workdir
            except ConfigError:
                continue  # an unknown profile is reported where the profile is needed
        options = entry.transport.options()
        key = (entry.transport.kind, *(str(options.get(k, "")) for k in _WHERE_KEYS), posixpath.normpath(workdir))
        first = seen.setdefault(key, entry)
        if first is not entry:
            where = f"{loc.where(['devices', i - embedded])}: " if loc else ""
            raise ConfigError(f"{where}devices[{i - embedded}] {entry.name!r} uses workdir {workdir} on the "
                              f"same {entry.transport.kind} device as {first.name!r}: give each entry its own workdir")


def check_inventory(inv: Inventory, loc: Locator, at: tuple[Any, ...] = ()) -> None:
    """Everything about every device, at load time and with file:line: unique names, a known profile
    (which itself loads cleanly), a known transport kind and options that transport takes."""
    from farm.transports import TRANSPORTS

    kinds = TRANSPORTS.names()
    first: dict[str, int] = {}
    for i, dev in enumerate(inv.devices):
        here = [*at, "devices", i]
        if dev.name in first:
            raise ConfigError(f"{loc.where([*here, 'name'])}: device name {dev.name!r} is used twice "
                              f"(first at devices[{first[dev.name]}])")
        first[dev.name] = i
        try:
            load_profile(dev.profile, inv.profile_dirs)
        except ConfigError as exc:
            text = str(exc)
            # a missing profile is this file's mistake; a broken profile file names its own file:line
            raise ConfigError(f"{loc.where([*here, 'profile'])}: {text}" if text.startswith("unknown device profile")
                              else text) from None
        if dev.transport.kind not in kinds:
            raise ConfigError(f"{loc.where([*here, 'transport', 'kind'])}: transport.kind: {dev.transport.kind!r} "
                              f"is not one of {', '.join(kinds)}")
        TRANSPORTS.options(dev.transport.kind, dev.transport.options(),
                           lambda sub, here=here: loc.where([*here, "transport", *sub]))


def select_devices(inventory: Inventory, selectors: list[str]) -> list[DeviceEntry]:
    """Resolve sweep selectors: a device name, ``profile:NAME`` or ``tag:NAME``."""
    chosen: list[DeviceEntry] = []
    for sel in selectors:
        kind, _, value = sel.partition(":") if ":" in sel else ("name", "", sel)
        if kind == "profile":
            found = [d for d in inventory.devices if d.profile == value]
        elif kind == "tag":
            found = [d for d in inventory.devices if value in d.tags]
        elif kind == "name":
            found = [d for d in inventory.devices if d.name == value]
        else:
            raise ConfigError(f"device selector {sel!r}: use NAME, profile:NAME or tag:NAME")
        if not found:
            known = ", ".join(d.name for d in inventory.devices)
            raise ConfigError(f"device selector {sel!r} matches no device; known devices: {known}")
        chosen += [d for d in found if d not in chosen]
    return chosen
