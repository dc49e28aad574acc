"""Power sensors of virtual devices: a thread that keeps sandbox files following a power model.

Owns the *values* a virtual phone or board shows for power, never the device itself (the lab binds
the sandbox directories over the real device paths). Layout under the sandbox root, mirroring the
device paths so the same farm code reads them:

- Android fuel gauge: ``sys/class/power_supply/battery/{current_now,voltage_now,status}`` in µA/µV
  (or mA/mV), sign by convention ("negative-discharge" kernel rule or "positive-discharge" vendors),
  ``sys/class/power_supply/usb/online`` 0/1.
- INA3221 hwmon: ``sys/class/hwmon/hwmon0/{name,in<N>_label,in<N>_input (mV),curr<N>_input (mA)}``
  by default; a lab board's real directory is under ``sys/bus/i2c/drivers/ina3221/...`` (its
  ``sys/class/hwmon`` entry is a link that resolves only inside the board), so the lab passes that.
- RAPL: ``sys/class/powercap/intel-rapl:0/{energy_uj,max_energy_range_uj}`` (µJ, wraps).
- Tools: ``bin/tegrastats`` and ``bin/vcgencmd`` shell scripts printing the real formats (Orin /
  TX2 tegrastats lines, Pi 5 ``pmic_read_adc``) with values from the model (``bin/.powerfeed-mw``, mW).

Files are replaced atomically (write + rename), so bind *directories*, not single files. Models:
:class:`AnalyticModel` P(t) = a + b·sin(ωt) on CLOCK_MONOTONIC with a closed-form integral (the
energy check), and :class:`LoadModel` P = idle + k·busy cores of the selected processes.
:class:`DeviceFeed` is the lab's recipe per virtual device (LoadModel over the device's mount
namespace + its sensors); the latest feeder started on a sandbox owns it until it stops.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from farm.lab.powerfeed_tools import install_tools


class PowerModel(Protocol):
    def watts(self, t_s: float) -> float:
        """Power in W at CLOCK_MONOTONIC time t_s (seconds)."""
        ...


@dataclass
class AnalyticModel:
    """P(t) = a + b·sin(ω·t), t in seconds of CLOCK_MONOTONIC."""

    a: float = 3.0
    b: float = 1.0
    omega: float = 2 * math.pi * 0.5

    def watts(self, t_s: float) -> float:
        return self.a + self.b * math.sin(self.omega * t_s)

    def energy_j(self, t0_ns: int, t1_ns: int) -> float:
        """∫P dt over [t0, t1] exactly."""
        t0, t1 = t0_ns / 1e9, t1_ns / 1e9
        return self.a * (t1 - t0) - self.b / self.omega * (math.cos(self.omega * t1) - math.cos(self.omega * t0))


# (pid, start time) -> (ppid, own CPU ticks: utime + stime, reaped children's: cutime + cstime)
_Snapshot = dict[tuple[int, int], tuple[int, int, int]]


@dataclass
class LoadModel:
    """P = idle_w + k_w_per_core × CPU cores used by the selected processes.

    Processes: `pids` and their descendants, plus every process in the mount namespace of
    `namespace_of` (a virtual device's daemon: everything its shells start), plus processes whose
    cwd is under `cwd_root`. CPU time comes from /proc/<pid>/stat, re-measured every `window_s`,
    process by process: one born in the window counts from zero, and one that ended counts up to
    its end through its parent's reaped-children time (when the parent is selected too), so the
    engine's last moments are not lost as they would be in a plain sum over live processes.
    """

    idle_w: float = 1.5
    k_w_per_core: float = 2.0
    pids: set[int] = field(default_factory=set)
    namespace_of: int | None = None
    cwd_root: str | None = None
    window_s: float = 0.1
    _last: tuple[float, _Snapshot] | None = None
    _cores: float = 0.0
    _in_ns: dict[tuple[int, int], bool] = field(default_factory=dict)  # (pid, start time) -> in namespace_of's

    def _snapshot(self) -> _Snapshot:
        procs: dict[int, tuple[int, int, int, int]] = {}  # pid -> (ppid, start, own, children)
        for entry in os.scandir("/proc"):
            if entry.name.isdigit():
                try:
                    f = Path(f"/proc/{entry.name}/stat").read_text().rsplit(")", 1)[1].split()
                    procs[int(entry.name)] = (int(f[1]), int(f[19]), int(f[11]) + int(f[12]),
                                              int(f[13]) + int(f[14]))
                except (OSError, IndexError, ValueError):
                    continue
        ns = _mnt_ns(self.namespace_of) if self.namespace_of else None
        if ns:  # a process's namespace is read once, when it is first seen (not 10 readlinks a second each)
            seen = {key: self._in_ns.get(key) for key in ((p, v[1]) for p, v in procs.items())}
            self._in_ns = {key: (_mnt_ns(key[0]) == ns) if hit is None else hit for key, hit in seen.items()}
        chosen = {p for p, v in procs.items()
                  if p in self.pids or (ns and self._in_ns.get((p, v[1]))) or self._in_root(p)}
        grew = True
        while grew:  # descendants of chosen processes
            extra = {p for p, (parent, *_) in procs.items() if parent in chosen and p not in chosen}
            chosen |= extra
            grew = bool(extra)
        return {(p, procs[p][1]): (procs[p][0], procs[p][2], procs[p][3]) for p in chosen}

    @staticmethod
    def used_ticks(then: _Snapshot, now: _Snapshot) -> int:
        """CPU ticks the selected processes used between two snapshots."""
        used = 0
        for key, (_, own, kids) in now.items():
            _, own0, kids0 = then.get(key, (0, 0, 0))  # born since: everything is new
            used += (own - own0) + (kids - kids0)
        alive = {pid for pid, _ in now}
        gone = {key[0]: ppid for key, (ppid, _, _) in then.items() if key not in now}
        for key, (ppid, own, kids) in then.items():
            if key not in now:
                for _ in range(len(gone)):  # reaped by a parent that ended too (and so on upwards)
                    if ppid not in gone:
                        break
                    ppid = gone[ppid]
                if ppid in alive:  # counted before; a live ancestor's children time now holds all of it
                    used -= own + kids
        return max(0, used)

    def _in_root(self, pid: int) -> bool:
        if not self.cwd_root:
            return False
        try:
            return os.readlink(f"/proc/{pid}/cwd").startswith(self.cwd_root)
        except OSError:
            return False

    def cpu_seconds(self) -> float:
        """CPU time the selected live processes and the children they reaped have used so far."""
        return sum(own + kids for _, own, kids in self._snapshot().values()) / os.sysconf("SC_CLK_TCK")

    @property
    def cores(self) -> float:
        """Cores in use over the last window."""
        return self._cores

    def watts(self, t_s: float) -> float:
        if self._last is None or t_s - self._last[0] >= self.window_s:
            now = self._snapshot()
            if self._last is not None:
                then_t, then = self._last
                self._cores = self.used_ticks(then, now) / os.sysconf("SC_CLK_TCK") / (t_s - then_t)
            self._last = (t_s, now)
        return self.idle_w + self.k_w_per_core * self._cores


def _mnt_ns(pid: int | None) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/mnt")
    except OSError:
        return None


def _put(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")  # writers never share one
    tmp.write_text(text)
    os.replace(tmp, path)


@dataclass
class AndroidGauge:
    """How the virtual phone's fuel gauge reports: unit, sign convention, voltage, charger."""

    supply: str = "sys/class/power_supply/battery"
    unit: str = "uA"  # or "mA"
    sign: str = "negative-discharge"  # kernel rule; "positive-discharge" for many vendors
    voltage_v: float = 3.85
    charging: bool = False

    def write(self, root: Path, watts: float) -> None:
        amps = watts / self.voltage_v
        sign = 1 if self.sign == "positive-discharge" else -1
        current = sign * amps * (1e6 if self.unit == "uA" else 1e3)
        volts = self.voltage_v * (1e6 if self.unit == "uA" else 1e3)
        base = root / self.supply
        _put(base / "current_now", f"{round(current)}\n")
        _put(base / "voltage_now", f"{round(volts)}\n")
        _put(base / "status", "Charging\n" if self.charging else "Discharging\n")
        _put(root / "sys/class/power_supply/usb/online", "1\n" if self.charging else "0\n")


@dataclass
class Ina3221:
    """A Jetson INA3221: rails as fractions of the board power, each at a bus voltage (mV)."""

    hwmon: str = "sys/class/hwmon/hwmon0"
    rails: dict[str, tuple[float, float]] = field(default_factory=lambda: {
        "VDD_IN": (1.0, 5000.0), "VDD_CPU_GPU_CV": (0.35, 5000.0), "VDD_SOC": (0.3, 5000.0)})

    def write(self, root: Path, watts: float) -> None:
        base = root / self.hwmon
        for n, (name, (share, mv)) in enumerate(self.rails.items(), start=1):
            if not (base / f"in{n}_label").exists():
                _put(base / f"in{n}_label", f"{name}\n")
            _put(base / f"in{n}_input", f"{round(mv)}\n")
            _put(base / f"curr{n}_input", f"{round(watts * share / mv * 1e6)}\n")


@dataclass
class RaplCounter:
    """A powercap RAPL domain: energy_uj accumulating the model's energy, wrapping at max_energy_range_uj."""

    domain: str = "sys/class/powercap/intel-rapl:0"
    max_range_uj: int = 262_143_328_850
    _energy_uj: float = 0.0
    _last_t: float | None = None

    def write(self, root: Path, watts: float) -> None:
        now = time.monotonic()
        if self._last_t is not None:
            self._energy_uj = (self._energy_uj + watts * (now - self._last_t) * 1e6) % self.max_range_uj
        self._last_t = now
        base = root / self.domain
        if not (base / "max_energy_range_uj").exists():
            _put(base / "max_energy_range_uj", f"{self.max_range_uj}\n")
        _put(base / "energy_uj", f"{int(self._energy_uj)}\n")


# Feeders running per sandbox root, latest last: only the latest writes, so a test can put its own
# model on a lab device (whose lab feeder then pauses) and hand the device back when it stops. A
# feeder writes holding its root's lock, so a takeover never lands in the middle of a tick.
_active: dict[Path, list[PowerFeeder]] = {}
_root_locks: dict[Path, threading.Lock] = {}
_active_lock = threading.Lock()


class PowerFeeder(threading.Thread):
    """Writes the model's power into the sandbox `rate_hz` times a second until stopped.

    Several feeders may be started on one sandbox: the one started last owns the files until it
    stops, then the previous one resumes.
    """

    def __init__(self, root: str | Path, model: PowerModel, *, rate_hz: float = 500.0,
                 android: AndroidGauge | None = None, ina3221: Ina3221 | None = None,
                 rapl: RaplCounter | None = None, tools: str | None = None, tegrastats_format: str = "orin") -> None:
        super().__init__(name="powerfeed", daemon=True)
        self.root = Path(root)
        self._key = self.root.resolve()
        with _active_lock:
            self._lock = _root_locks.setdefault(self._key, threading.Lock())
        self.model, self.rate_hz = model, rate_hz
        self.android, self.ina3221, self.rapl = android, ina3221, rapl
        self._halt = threading.Event()
        self.ticks = 0
        if android:
            (self.root / android.supply).mkdir(parents=True, exist_ok=True)
            (self.root / "sys/class/power_supply/usb").mkdir(parents=True, exist_ok=True)
        if ina3221:
            (self.root / ina3221.hwmon).mkdir(parents=True, exist_ok=True)
            _put(self.root / ina3221.hwmon / "name", "ina3221\n")
        if rapl:
            (self.root / rapl.domain).mkdir(parents=True, exist_ok=True)
        self.watts_file = install_tools(self.root / tools, tegrastats_format) if tools else None
        self.tick()  # files exist before anyone looks

    def owns(self) -> bool:
        """No other feeder started later on this sandbox is running."""
        with _active_lock:
            stack = _active.get(self._key)
            return not stack or stack[-1] is self

    def tick(self) -> None:
        if not self.owns():
            return
        period = 1.0 / self.rate_hz
        # the value is held for one period: write the model at the middle of that hold
        watts = self.model.watts(time.monotonic() + period / 2)
        with self._lock:
            if self.owns():
                self._write(watts)

    def _write(self, watts: float) -> None:
        if self.android:
            self.android.write(self.root, watts)
        if self.ina3221:
            self.ina3221.write(self.root, watts)
        if self.rapl:
            # a counter integrates what happened since the last tick, so it takes the value of now
            self.rapl.write(self.root, self.model.watts(time.monotonic()))
        if self.watts_file:
            _put(self.watts_file, f"{round(watts * 1000)}\n")
        self.ticks += 1

    def run(self) -> None:
        period = 1.0 / self.rate_hz
        next_t = time.monotonic()
        while not self._halt.is_set():
            self.tick()
            next_t += period
            delay = next_t - time.monotonic()
            if delay < -period:  # fell behind (busy host): do not burst to catch up
                next_t = time.monotonic()
            self._halt.wait(max(0.0, delay))

    def start(self) -> None:
        with self._lock, _active_lock:
            _active.setdefault(self._key, []).append(self)
        super().start()

    def stop(self) -> None:
        self._halt.set()
        if self.is_alive():
            self.join(timeout=5)
        with self._lock, _active_lock:
            stack = _active.get(self._key, [])
            if self in stack:
                stack.remove(self)
            if not stack:
                _active.pop(self._key, None)

    def __enter__(self) -> PowerFeeder:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class DeviceFeed:
    """How a virtual device's power sensors behave: idle + k × cores its own processes use.

    One recipe for phones and boards; the sensors differ (a fuel gauge, INA3221 rails, the
    tegrastats/vcgencmd stand-ins, RAPL counters), the model does not. Paths are relative to the sandbox root the
    device sees as ``/`` (the host-side files behind its bind mounts, never symlinks that only
    resolve inside the device).
    """

    idle_w: float
    k_w_per_core: float
    android: AndroidGauge | None = None
    ina3221: Ina3221 | None = None
    rapl: RaplCounter | None = None
    tools: str | None = None
    tegrastats_format: str = "orin"
    rate_hz: float = 50.0
    window_s: float = 0.1

    def start(self, root: Path, namespace_of: int | None) -> PowerFeeder:
        """A running feeder whose load is every process in the mount namespace of `namespace_of`."""
        model = LoadModel(idle_w=self.idle_w, k_w_per_core=self.k_w_per_core, namespace_of=namespace_of,
                          window_s=self.window_s)
        feeder = PowerFeeder(root, model, rate_hz=self.rate_hz, android=self.android, ina3221=self.ina3221,
                             rapl=self.rapl, tools=self.tools, tegrastats_format=self.tegrastats_format)
        feeder.start()
        return feeder
