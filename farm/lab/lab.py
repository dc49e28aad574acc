"""The virtual device lab: N phones behind a private adb server, M boards behind real sshds.

``with Lab(root, phones=2, boards=1) as lab:`` starts an adb server of its own (own port from
55551 up, own ``HOME``/``TMPDIR``: the user's server on 5037 and anything on 5555 stay out of it),
the virtual devices, ``adb connect``s the phones, and writes ``devices.yaml`` (loadable by
:func:`farm.devices.load_inventory`) plus ``profiles/lab-<profile>.yaml``: the real profile with
what differs on this host (core count and masks, compute rate under qemu, cpufreq files).
Everything is stopped by pid on exit. ``kill_phone``/``restart_phone`` simulate a dropped device.

Power: every device's sensors follow idle + k × the CPU cores its own processes use (its mount
namespace, so the engine running makes power rise), fed while the device runs
(:class:`farm.lab.powerfeed.DeviceFeed`): phones through the fuel gauge (``current_now``,
``voltage_now``; unit and sign as the profile states, else the vendor's habit, or ``gauges=``),
boards through their INA3221 hwmon files and ``tegrastats``/``vcgencmd`` stand-ins on the PATH, the
x86 host (a "board" reached over ssh, running the host engine natively) through RAPL ``energy_uj``
counters. ``power=False`` leaves the sandbox's static idle values.

Cores: a virtual device has this host's cores (``taskset`` runs on this host's kernel, so any mask the
lab profile yields is valid here) with its base profile's cluster topology mapped onto them
(:func:`lab_cpus`: cpu0 the slowest cluster's speed, the last core the fastest's), written to its sandbox
sysfs as cpufreq ``cpuinfo_max_freq`` per cpu; so ``cpus: [big, little]`` resolve on the virtual phones.
Jetsons get ``nvpmodel``/``jetson_clocks`` stand-ins keeping their state in the sandbox.

``Lab.every_profile(root)`` (``farm lab up --all-profiles``) starts one device per shipped profile.
Every thermal zone rests steady below its profile's cool-down threshold, so the gate passes at the
shipped poll and window, as on a device at rest.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from farm.devices import DeviceProfile, load_profile
from farm.errors import InfraError
from farm.lab import sandbox
from farm.lab.powerfeed import AndroidGauge, DeviceFeed, Ina3221, RaplCounter
from farm.lab.virtual import (
    SSHD,
    VirtualBoard,
    VirtualDevice,
    VirtualPhone,
    ensure_lab_user,
    kill_namespace,
    port_free,
    wait_port,
)
from farm.power.trace import total_rails

FIRST_PORT = 55551
# Boards (and ssh hosts) in the order `boards=N` takes them; phones likewise by `phone_profiles`.
BOARD_PROFILES = ("jetson-orin-nano", "raspberry-pi-5", "jetson-agx-orin", "x86-host")
PHONE_PROPS = {
    "pixel-8": {"ro.product.model": "Pixel 8", "ro.product.device": "shiba", "ro.product.name": "shiba",
                "ro.soc.model": "Tensor G3", "ro.product.manufacturer": "Google",
                "ro.build.fingerprint": "google/shiba/shiba:14/AP2A.240805.005/12025142:user/release-keys"},
    "galaxy-s24": {"ro.product.model": "SM-S921B", "ro.product.device": "e1s", "ro.product.name": "e1sxxx",
                   "ro.soc.model": "s5e9945", "ro.product.manufacturer": "samsung",
                   "ro.build.fingerprint": "samsung/e1sxxx/e1s:14/UP1A.231005.007/S921BXXU1AXB4:user/release-keys"},
}

# Power model of each virtual device: (idle W, W per busy core); boards with INA3221 rails idle at
# their rails' reading (sandbox.INA_RAILS), so files and model agree from the first tick.
LOAD_W = {"pixel-8": (0.9, 2.2), "galaxy-s24": (1.1, 2.6), "raspberry-pi-5": (2.7, 1.4),
          "x86-host": (12.0, 9.0), "phone": (1.0, 2.4), "board": (3.0, 2.0)}
# Fuel-gauge convention of a vendor whose profile states none (Samsung: mA, positive discharging).
VENDOR_GAUGE = {"galaxy-s24": ("mA", "positive-discharge")}


def tools_missing() -> list[str]:
    """What the lab needs from the system and cannot find."""
    need = {"adb": shutil.which("adb"), "sshd": SSHD if os.access(SSHD, os.X_OK) else None,
            "qemu-aarch64-static": shutil.which("qemu-aarch64-static"), "ssh-keygen": shutil.which("ssh-keygen")}
    missing = [name for name, path in need.items() if not path]
    if os.geteuid() != 0:
        missing.append("root (namespaces, bind mounts, the board's test user)")
    return missing


def shipped_profiles() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(phone profiles, board and host profiles) shipped in device_profiles/, each sorted by name."""
    from farm.paths import REPO_ROOT

    profiles = [load_profile(p.stem) for p in sorted((REPO_ROOT / "device_profiles").glob("*.yaml"))]
    return (tuple(p.name for p in profiles if p.kind == "phone"),
            tuple(p.name for p in profiles if p.kind != "phone"))


def lab_cpus(base: DeviceProfile, cpus: int) -> dict[str, Any]:
    """The base's cluster topology on this host's `cpus` cores: host core i gets the speed of base core
    round(i·(n-1)/(cpus-1)), so the first core is a little one and the last the fastest (2 host cores of a
    Pixel 8: cpu0 little, cpu1 prime). `taskset` runs on this host's kernel, so every mask the lab profile
    yields names online host cores; the lab's big/little are what this mapping says, not the silicon's."""
    n = base.cpus.count
    khz = base.cpus.max_khz or [2400000] * n
    mine = [khz[round(i * (n - 1) / (cpus - 1))] if cpus > 1 else khz[-1] for i in range(cpus)]
    lo, hi = min(mine), max(mine)
    mask = (1 << cpus) - 1
    little = sum(1 << i for i, k in enumerate(mine) if k == lo) if lo < hi else None
    big = sum(1 << i for i, k in enumerate(mine) if k == hi) if lo < hi else mask
    return {"count": cpus, "big": hex(big), "mid": None, "little": hex(little) if little else None, "max_khz": mine}


def lab_profile(base: DeviceProfile, cpus: int) -> DeviceProfile:
    """`base` as it looks on this host: cores, masks, qemu speed and the cpufreq files that exist."""
    data = base.model_dump()
    data["name"] = f"lab-{base.name}"
    how = "aarch64 via qemu" if base.engine_target == "aarch64-linux-static" else "native"
    data["description"] = f"virtual {base.name} (farm lab, {cpus} host cores, {how}): {base.description}"
    data["cpus"] = lab_cpus(base, cpus)
    # the stand-ins and the sandbox's cpufreq files are the test user's: no root needed (nor any sudo rights)
    data["power_modes"]["sudo"] = False
    slow = 5.0 if base.engine_target == "aarch64-linux-static" and platform.machine() != "aarch64" else 1.0
    data["est_gflops"] = round(8.0 * cpus / slow, 1)
    data["thermal"]["cpufreq"] = [f"/sys/devices/system/cpu/cpu{i}/cpufreq/scaling_cur_freq" for i in range(cpus)]
    data["thermal"]["cpufreq_max"] = [f"/sys/devices/system/cpu/cpu{i}/cpufreq/cpuinfo_max_freq"
                                      for i in range(cpus)]
    data["source"] = f"derived by farm.lab from device_profiles/{base.name}.yaml; {base.source}"
    return DeviceProfile.model_validate(data)


class Lab:
    """Start virtual devices; use as a context manager. Paths and ports are attributes."""

    def __init__(self, root: str | Path, phones: int = 2, boards: int = 1,
                 phone_profiles: tuple[str, ...] = ("pixel-8", "galaxy-s24"),
                 board_profiles: tuple[str, ...] = BOARD_PROFILES,
                 first_port: int = FIRST_PORT, power: bool = True,
                 gauges: dict[str, AndroidGauge] | None = None,
                 phone_features: dict[str, str] | None = None) -> None:
        self.root = Path(root).resolve()
        self.power = power
        self.phone_features = dict(phone_features or {})  # by phone name: what its adbd advertises
        self.gauges = dict(gauges or {})  # by device name or base profile name
        self.n_phones, self.n_boards = phones, boards
        self.phone_profiles, self.board_profiles = phone_profiles, board_profiles
        self._next_port = first_port
        self.cpus = os.cpu_count() or 1
        self.adb_port = 0
        self.adb_proc: subprocess.Popen | None = None
        self.phones: dict[str, VirtualPhone] = {}
        self.boards: dict[str, VirtualBoard] = {}
        self.inventory_path = self.root / "devices.yaml"
        self.profile_dir = self.root / "profiles"

    @classmethod
    def every_profile(cls, root: str | Path, **options: Any) -> Lab:
        """A lab with one virtual device for each shipped profile (phones over adb, the rest over ssh)."""
        phones, boards = shipped_profiles()
        return cls(root, phones=len(phones), boards=len(boards), phone_profiles=phones, board_profiles=boards,
                   **options)

    # -- life cycle -------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _port(self) -> int:
        while not port_free(self._next_port) or self._next_port == 5555:
            self._next_port += 1
        self._next_port += 1
        return self._next_port - 1

    def start(self) -> None:
        missing = tools_missing()
        if missing:
            raise InfraError(f"farm lab needs: {', '.join(missing)} (Debian: apt-get install adb "
                             "openssh-server qemu-user-static)")
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # the board's test user must reach its sandbox
        self.profile_dir.mkdir(exist_ok=True)
        if self.n_phones:
            self._start_adb_server()
        for i in range(self.n_phones):
            self._add_phone(f"phone{i + 1}", self.phone_profiles[i % len(self.phone_profiles)], i)
        if self.n_boards:
            ensure_lab_user()
        for i in range(self.n_boards):
            self._add_board(f"board{i + 1}", self.board_profiles[i % len(self.board_profiles)], i)
        self.write_inventory()
        self.write_state()

    def write_state(self) -> None:
        """Pids and namespaces, so ``farm lab down`` in another shell can stop this lab by pid."""
        state = {"owner": os.getpid(), "adb": self.adb_proc.pid if self.adb_proc else None,
                 "devices": [{"name": d.name, "pid": d.proc.pid, "ns": d.ns} for d in self.devices() if d.proc]}
        (self.root / "lab.json").write_text(json.dumps(state, indent=1))

    def stop(self) -> None:
        for dev in [*self.phones.values(), *self.boards.values()]:
            dev.kill()
        if self.adb_proc is not None and self.adb_proc.poll() is None:
            self.adb_proc.send_signal(signal.SIGTERM)  # our server, by pid; never `adb kill-server`
            try:
                self.adb_proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.adb_proc.kill()
                self.adb_proc.wait()
        self.adb_proc = None
        (self.root / "lab.json").unlink(missing_ok=True)

    # -- adb --------------------------------------------------------------------------------

    def adb_env(self) -> dict[str, str]:
        home = self.root / "adb-home"
        home.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("ANDROID_")}
        env.update(HOME=str(home), TMPDIR=str(home), ANDROID_ADB_SERVER_PORT=str(self.adb_port))
        return env

    def adb(self, *args: str, timeout: float = 30) -> str:
        """Run the real adb client against the lab's server (``adb -P PORT ...``)."""
        out = subprocess.run(["adb", "-P", str(self.adb_port), *args], env=self.adb_env(),
                             capture_output=True, text=True, timeout=timeout)
        return out.stdout + out.stderr

    def _start_adb_server(self) -> None:
        self.adb_port = self._port()
        log = (self.root / "adb-server.log").open("ab")
        self.adb_proc = subprocess.Popen(["adb", "-P", str(self.adb_port), "server", "nodaemon"],
                                         env=self.adb_env(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, start_new_session=True)
        log.close()
        wait_port(self.adb_port, 15, self.adb_proc, "adb server")

    def connect_phone(self, name: str, timeout: float = 15) -> None:
        """``adb connect`` and wait until the server lists the phone as ``device``.

        A restarted phone is still known to the server as offline: it is disconnected first, or adb
        would only re-adopt it on its own retry, ~10 s later."""
        serial = self.phones[name].transport["serial"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.adb("connect", serial, timeout=10)
            state = self.adb("-s", serial, "get-state", timeout=10).strip()
            if state == "device":
                return
            if "offline" in state:
                self.adb("disconnect", serial, timeout=10)
            time.sleep(0.2)
        raise InfraError(f"adb server did not adopt virtual phone {name} ({serial}): {self.adb('devices')}")

    # -- devices ----------------------------------------------------------------------------

    def _add_phone(self, name: str, base_name: str, index: int) -> None:
        base = load_profile(base_name)
        profile = self._write_profile(base)
        port = self._port()
        serial = f"LAB{index + 1:04d}{base_name.upper().replace('-', '')}"[:16]
        props = {**PHONE_PROPS.get(base_name, {"ro.product.model": base_name}), "ro.serialno": serial,
                 "ro.product.cpu.abi": base.abi, "ro.build.version.sdk": "34",
                 "ro.build.version.release": "14", "ro.hardware": base_name}
        binds = sandbox.build_phone(self.root / name, profile, base_name, props, self.cpus)
        phone = VirtualPhone(name, base_name, self.root / name, port, binds,
                             transport={"kind": "adb", "serial": f"127.0.0.1:{port}", "adb_port": self.adb_port},
                             feed=self._feed(name, base_name, profile), features=self.phone_features.get(name))
        self.phones[name] = phone
        phone.start()
        self.connect_phone(name)

    def _add_board(self, name: str, base_name: str, index: int) -> None:
        base = load_profile(base_name)
        profile = self._write_profile(base)
        port = self._port()
        binds = sandbox.build_board(self.root / name, profile, base_name, f"LABB{index + 1:04d}", self.cpus)
        board = VirtualBoard(name, base_name, self.root / name, port, binds, feed=self._feed(name, base_name, profile))
        board.prepare()
        self.boards[name] = board
        board.start()

    def _feed(self, name: str, base: str, profile: DeviceProfile) -> DeviceFeed | None:
        """The power sensors of a virtual device, for phones and boards alike (None: power off)."""
        if not self.power:
            return None
        idle_w, k_w = LOAD_W.get(base, LOAD_W["phone" if profile.kind == "phone" else "board"])
        feed = DeviceFeed(idle_w, k_w)
        if profile.power.source == "android_battery":
            feed.android = self._gauge(name, base, profile)
        for _bus, hw, rails in sandbox.ina3221_monitors(base):
            mw = {label: mv * ma / 1000 for label, mv, ma in rails}
            opts = profile.power.options
            total = total_rails(list(mw), opts.get("rail"), opts.get("rails"))
            total_mw = sum(mw[r] for r in total) if total else 0.0
            if total_mw > 0:  # the monitor with the board's total (one input rail, or AGX Orin's summed rails)
                feed.idle_w = total_mw / 1000
                # Rails as shares of the total, so the rails the sampler sums give back the model's power;
                # the real directory, not the /sys/class/hwmon link (it resolves only inside the board).
                feed.ina3221 = Ina3221(hwmon=_rel(hw), rails={label: (mw[label] / total_mw, mv)
                                                              for label, mv, _ in rails})
                break
        if profile.power.source == "rapl":  # an x86 host: package energy counters the model integrates
            domains = [str(d) for d in profile.power.options.get("domains", [])]
            if domains:  # the first package carries the model's power (a lab host has one socket)
                feed.rapl = RaplCounter(domain=_rel(domains[0]).rsplit("/", 1)[0])
        if profile.kind == "board":
            feed.tools = _rel("/usr/local/bin")  # tegrastats / vcgencmd stand-ins on the board's PATH
        return feed

    def _gauge(self, name: str, base: str, profile: DeviceProfile) -> AndroidGauge:
        """The phone's fuel-gauge convention: as configured, else as its profile states, else the vendor's."""
        if name in self.gauges or base in self.gauges:
            return self.gauges.get(name) or self.gauges[base]
        unit, sign = VENDOR_GAUGE.get(base, ("uA", "negative-discharge"))
        options = profile.power.options
        return AndroidGauge(supply=_rel(str(options.get("supply", "/sys/class/power_supply/battery"))),
                            unit=options.get("unit") or unit, sign=options.get("sign") or sign)

    def _write_profile(self, base: DeviceProfile) -> DeviceProfile:
        profile = lab_profile(base, self.cpus)
        path = self.profile_dir / f"{profile.name}.yaml"
        path.write_text(yaml.safe_dump(profile.model_dump(exclude_none=True), sort_keys=False))
        return profile

    def devices(self) -> list[VirtualDevice]:
        return [*self.phones.values(), *self.boards.values()]

    def device(self, name: str) -> VirtualDevice:
        found = self.phones.get(name) or self.boards.get(name)
        if found is None:
            raise KeyError(f"no virtual device {name!r}; have {', '.join(d.name for d in self.devices())}")
        return found

    def write_inventory(self) -> Path:
        entries: list[dict[str, Any]] = []
        for dev in self.devices():
            kind = load_profile(dev.base_profile).kind  # phone, board or host
            entries.append({"name": dev.name, "profile": f"lab-{dev.base_profile}",
                            "transport": dict(dev.transport), "tags": ["lab", kind, dev.base_profile]})
        text = yaml.safe_dump({"profile_dirs": [str(self.profile_dir)], "devices": entries}, sort_keys=False)
        self.inventory_path.write_text("# written by farm lab; valid while the lab runs\n" + text)
        return self.inventory_path

    def sandbox_file(self, name: str, device_path: str) -> Path:
        """The host file behind a device path of virtual device `name` (to feed or inspect it)."""
        return sandbox.host_path(self.device(name).root / "fs", device_path)

    # -- failures ---------------------------------------------------------------------------

    def kill_phone(self, name: str) -> None:
        """The phone drops off: its daemon and everything it runs die at once."""
        self.phones[name].kill()

    def restart_phone(self, name: str, reconnect: bool = True) -> None:
        """Bring a killed phone back on the same port (adb re-adopts it; `reconnect` hurries it)."""
        phone = self.phones[name]
        phone.start()
        if reconnect:
            self.connect_phone(name)

    def kill_board(self, name: str) -> None:
        self.boards[name].kill()

    def restart_board(self, name: str) -> None:
        self.boards[name].start()


def _rel(device_path: str) -> str:
    """A device path as the sandbox-relative path of the host file behind it."""
    return str(sandbox.host_path(Path(), device_path))


def stop_lab(root: str | Path) -> int:
    """Stop a lab started by another process from its ``lab.json``; returns how many parts it stopped."""
    state_file = Path(root) / "lab.json"
    if not state_file.exists():
        return 0
    state = json.loads(state_file.read_text())
    stopped = 0
    for dev in state.get("devices", []):
        if dev.get("ns") and Path(f"/proc/{dev['pid']}").exists():
            kill_namespace(dev["ns"], [dev["pid"]])
            stopped += 1
    if state.get("adb") and Path(f"/proc/{state['adb']}").exists():
        os.kill(state["adb"], signal.SIGTERM)
        stopped += 1
    owner = state.get("owner")
    if owner and owner != os.getpid() and Path(f"/proc/{owner}").exists():
        os.kill(owner, signal.SIGTERM)  # `farm lab up` leaves its foreground loop and cleans up
    state_file.unlink(missing_ok=True)
    return stopped
