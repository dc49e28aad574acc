"""The file trees that make a directory look like a phone or a board (owns the sandbox layout).

A sandbox is ``<lab>/<device>/``::

    fs/                 bind-mounted into the device's mount namespace (see farm.lab.nsexec):
      data/             -> /data                  (phones: /data/local/tmp is the workdir)
      var/tmp/          -> /var/tmp               (boards: /var/tmp/farm is the workdir)
      sys/class/        -> /sys/class             (power_supply/*, thermal/thermal_zone*, hwmon/*)
      sys/bus/          -> /sys/bus               (boards: i2c/drivers/ina3221{,x}/...)
      sys/cpu/          -> /sys/devices/system/cpu (cpuN/cpufreq/*, online)
      sys/firmware/     -> /sys/firmware          (boards: devicetree/base/model, serial-number)
      bin/              -> /usr/local/bin         (getprop, dumpsys; tegrastats/vcgencmd, nvpmodel/jetson_clocks
                                                   stand-ins)
    etc/                props, keys, sshd_config, nvpmodel.status (the stand-in's mode; not bound on the device)
    log/

Every device file a profile names (thermal zones, cpufreq, the power source's files) is created
with a plausible idle value. Values change only when someone writes them: the power model
(``farm.lab.powerfeed``) writes ``fs/sys/...`` files from the host side and may install
``tegrastats``/``vcgencmd`` into ``fs/bin``. :func:`host_path` maps a device path to its file.
"""

from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

from farm.devices import DeviceProfile

# (device prefix, directory under fs/), longest prefix first.
MOUNTS = [("/sys/devices/system/cpu", "sys/cpu"), ("/sys/class", "sys/class"), ("/sys/bus", "sys/bus"),
          ("/sys/firmware", "sys/firmware"), ("/usr/local/bin", "bin"), ("/data", "data"),
          ("/var/tmp", "var/tmp")]
PHONE_MOUNTS = ["/data", "/sys/class", "/sys/devices/system/cpu", "/usr/local/bin"]
BOARD_MOUNTS = ["/var/tmp", "/sys/class", "/sys/bus", "/sys/devices/system/cpu", "/sys/firmware",
                "/usr/local/bin"]

ZONE_TYPES = {"pixel-8": ["BIG", "MID", "LITTLE"], "galaxy-s24": ["cpu0-big", "cpu1-mid", "cpu2-little"],
              "jetson-orin-nano": ["cpu-thermal", "gpu-thermal"], "jetson-agx-orin": ["cpu-thermal", "gpu-thermal"],
              "raspberry-pi-5": ["cpu-thermal"], "x86-host": ["x86_pkg_temp"]}
# INA3221 channels per board: (label, mV, mA) at idle.
INA_RAILS = {"jetson-orin-nano": {"1-0040": [("VDD_IN", 5072, 900), ("VDD_CPU_GPU_CV", 5064, 95),
                                             ("VDD_SOC", 5064, 286)]},
             "jetson-agx-orin": {"1-0040": [("VDD_GPU_SOC", 5048, 760), ("VDD_CPU_CV", 5048, 160),
                                            ("VIN_SYS_5V0", 5056, 620)],
                                 "1-0041": [("NC", 0, 0), ("VDDQ_VDD2_1V8AO", 5040, 110), ("NC", 0, 0)]}}
CPU_MIN_KHZ = 729600  # Orin's lowest CPU step (tegrastats at idle: CPU [0%@729,...]); any board's floor here
DT_MODEL = {"jetson-orin-nano": "NVIDIA Jetson Orin Nano Developer Kit",
            "jetson-agx-orin": "NVIDIA Jetson AGX Orin Developer Kit",
            "raspberry-pi-5": "Raspberry Pi 5 Model B Rev 1.0"}

GETPROP = """#!/bin/sh
# getprop stand-in: answers from the virtual phone's property file, in Android's formats.
props={props}
if [ $# -eq 0 ]; then
  while IFS='=' read -r k v; do printf '[%s]: [%s]\\n' "$k" "$v"; done < "$props"; exit 0
fi
v=$(grep -m1 "^$1=" "$props" | cut -d= -f2-)
printf '%s\\n' "${{v:-$2}}"
"""

DUMPSYS = r"""#!/bin/sh
# dumpsys stand-in: `dumpsys battery` in the Android 14 format, read from the sandbox's sysfs;
# `dumpsys battery unplug|reset|set KEY VALUE` fake state like the real service does.
B=/sys/class/power_supply
state=__STATE__
[ "$1" = battery ] || { echo "Can't find service: $1"; exit 0; }
case "$2" in
  unplug) printf 'ac=0\nusb=0\nwireless=0\ndock=0\n' > "$state"; exit 0 ;;
  reset) rm -f "$state"; exit 0 ;;
  set) echo "$3=$4" >> "$state"; exit 0 ;;
esac
rd() { cat "$1" 2>/dev/null || echo "$2"; }
ov() { v=$(grep "^$1=" "$state" 2>/dev/null | tail -n1 | cut -d= -f2); echo "${v:-$2}"; }
tf() { [ "$1" = 1 ] && echo true || echo false; }
case "$(rd $B/battery/status Unknown)" in
  Charging) st=2 ;; Discharging) st=3 ;; "Not charging") st=4 ;; Full) st=5 ;; *) st=1 ;;
esac
echo "Current Battery Service state:"
echo "  AC powered: $(tf $(ov ac $(rd $B/ac/online 0)))"
echo "  USB powered: $(tf $(ov usb $(rd $B/usb/online 0)))"
echo "  Wireless powered: $(tf $(ov wireless $(rd $B/wireless/online 0)))"
echo "  Dock powered: $(tf $(ov dock $(rd $B/dock/online 0)))"
echo "  Max charging current: 0"
echo "  Max charging voltage: 0"
echo "  Charge counter: $(rd $B/battery/charge_counter 0)"
echo "  status: $(ov status $st)"
echo "  health: 2"
echo "  present: true"
echo "  level: $(ov level $(rd $B/battery/capacity 50))"
echo "  scale: 100"
echo "  voltage: $(( $(rd $B/battery/voltage_now 3900000) / 1000 ))"
echo "  temperature: $(rd $B/battery/temp 250)"
echo "  technology: $(rd $B/battery/technology Li-ion)"
echo "  Charging state: 1"
echo "  Charging policy: 1"
echo "  Capacity level: 3"
"""

# nvpmodel stand-in: the board's mode table (its profile's power_modes.nvpmodel), the mode kept in the sandbox
# (the real tool keeps /var/lib/nvpmodel/status); `-q` prints as JetPack 5/6 does: "NV Power Mode: NAME" then
# the id. It changes the mode only: clocks stay (the lab's CPUs are the host's).
NVPMODEL = """#!/bin/sh
status=__STATUS__
modes='__MODES__'
cur=$(cat "$status")
name_of() { printf '%s\n' "$modes" | while read -r i n; do [ "$i" = "$1" ] && echo "$n"; done; }
case "$1" in
  -q) echo "NV Power Mode: $(name_of "$cur")"; echo "$cur" ;;
  -m) [ -n "$(name_of "$2")" ] || { echo "NVPM ERROR: Invalid power mode ID: $2" >&2; exit 1; }
      echo "$2" > "$status" ;;
  *) echo "usage: nvpmodel -q | -m ID" >&2; exit 1 ;;
esac
"""

# jetson_clocks stand-in: pins every CPU's scaling_min_freq at its maximum (what the real script does to the CPUs);
# --store/--restore keep and put back the cpufreq settings; --show prints the real "cpuN: Online=1 Governor=..."
# lines.
JETSON_CLOCKS = """#!/bin/sh
C=/sys/devices/system/cpu
case "$1" in
  --show)
    echo "SOC family:tegra234  Machine:__MACHINE__"
    echo "Online CPUs: $(cat $C/online)"
    for d in $C/cpu[0-9]*; do f=$d/cpufreq
      echo "${d##*/}: Online=1 Governor=$(cat $f/scaling_governor) MinFreq=$(cat $f/scaling_min_freq)" \
           "MaxFreq=$(cat $f/scaling_max_freq) CurrentFreq=$(cat $f/scaling_cur_freq) IdleStates: WFI=1 c7=1"
    done ;;
  --store)
    : > "$2" || exit 1
    for f in $C/cpu[0-9]*/cpufreq/scaling_min_freq $C/cpu[0-9]*/cpufreq/scaling_max_freq \
             $C/cpu[0-9]*/cpufreq/scaling_governor; do echo "$f:$(cat $f)" >> "$2"; done ;;
  --restore)
    [ -f "$2" ] || { echo "Error: $2 file not found" >&2; exit 1; }
    while IFS=: read -r f v; do echo "$v" > "$f"; done < "$2" ;;
  "")
    for f in $C/cpu[0-9]*/cpufreq; do cat $f/cpuinfo_max_freq > $f/scaling_max_freq
      cat $f/cpuinfo_max_freq > $f/scaling_min_freq; done ;;
  *) echo "Unknown option: $1" >&2; exit 1 ;;
esac
"""

UNAME = """#!/bin/sh
case "$1" in
  -m|-p|-i) echo aarch64 ;;
  -a) echo "$(/bin/uname -s -n -r -v) aarch64 GNU/Linux" ;;
  *) exec /bin/uname "$@" ;;
esac
"""


def host_path(fs: Path, device_path: str) -> Path:
    """The sandbox file behind `device_path` (which must lie under one of the bound prefixes)."""
    for prefix, sub in MOUNTS:
        if device_path == prefix or device_path.startswith(prefix + "/"):
            return fs / sub / device_path[len(prefix):].lstrip("/")
    raise ValueError(f"{device_path} is outside the virtual device's bound directories")


def binds(fs: Path, device_paths: list[str]) -> list[str]:
    """``SRC:DST`` arguments for farm.lab.nsexec."""
    return [f"{host_path(fs, p)}:{p}" for p in device_paths]


def _put(fs: Path, device_path: str, value: object) -> None:
    path = host_path(fs, device_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{value}\n")
    path.chmod(0o666)  # the power model and test users write these from outside


def _script(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


def _skeleton(root: Path, mounts: list[str]) -> Path:
    if root.exists():
        shutil.rmtree(root)
    fs = root / "fs"
    for d in mounts:
        host_path(fs, d).mkdir(parents=True, exist_ok=True)
    for d in (root, root / "etc", root / "log", fs, *[host_path(fs, d) for d in mounts]):
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o755)
    return fs


def _common(fs: Path, profile: DeviceProfile, base: str, cpus: int) -> None:
    types = ZONE_TYPES.get(base, [])
    # Steady and below the profile's cool-down threshold, so its gate passes at the shipped defaults.
    below = int(profile.thermal.start_temp_c * 1000) - 3000
    for i, zone in enumerate(profile.thermal.zones):
        _put(fs, zone, min(35000 + 1000 * i, below))
        _put(fs, zone.rsplit("/", 1)[0] + "/type", types[i] if i < len(types) else f"zone{i}")
    for f in ("online", "possible", "present"):
        _put(fs, f"/sys/devices/system/cpu/{f}", f"0-{cpus - 1}" if cpus > 1 else "0")
    khz = profile.cpus.max_khz or [2400000] * cpus
    for i in range(cpus):  # the lab profile's topology (farm.lab.lab.lab_cpus): big.LITTLE where the base has it
        d = f"/sys/devices/system/cpu/cpu{i}/cpufreq"
        top = khz[i] if i < len(khz) else khz[-1]
        _put(fs, f"{d}/scaling_cur_freq", min(1800000, top))
        _put(fs, f"{d}/cpuinfo_max_freq", top)
        _put(fs, f"{d}/cpuinfo_min_freq", CPU_MIN_KHZ)
        _put(fs, f"{d}/scaling_max_freq", top)
        _put(fs, f"{d}/scaling_min_freq", CPU_MIN_KHZ)
        _put(fs, f"{d}/scaling_governor", "schedutil")
        _put(fs, f"{d}/scaling_available_governors", "conservative ondemand userspace powersave performance schedutil")
    for f in [*profile.thermal.cpufreq, *profile.thermal.cpufreq_max]:
        if not host_path(fs, f).exists():
            _put(fs, f, 1800000)


def build_phone(root: Path, profile: DeviceProfile, base: str, props: dict[str, str], cpus: int) -> list[str]:
    """Create a phone sandbox; returns the nsexec ``--bind`` arguments."""
    fs = _skeleton(root, PHONE_MOUNTS)
    tmp = host_path(fs, "/data/local/tmp")
    tmp.mkdir(parents=True)
    tmp.chmod(0o1777)
    (root / "etc" / "props").write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    supply = str(profile.power.options.get("supply", "/sys/class/power_supply/battery"))
    sign = -1 if profile.power.options.get("sign", "negative-discharge") == "negative-discharge" else 1
    for name, value in {"status": "Discharging", "capacity": 80, "voltage_now": 3950000,
                        "current_now": sign * 350000, "current_avg": sign * 340000, "temp": 300,
                        "charge_counter": 3500000, "present": 1, "technology": "Li-ion",
                        "health": "Good", "type": "Battery"}.items():
        _put(fs, f"{supply}/{name}", value)
    for charger in profile.power.options.get("chargers", []) or [
            f"/sys/class/power_supply/{n}/online" for n in ("usb", "ac", "wireless")]:
        _put(fs, charger, 0)
        _put(fs, charger.rsplit("/", 1)[0] + "/type", charger.split("/")[-2].upper())
    _common(fs, profile, base, cpus)
    bin_dir = host_path(fs, "/usr/local/bin")
    _script(bin_dir / "getprop", GETPROP.format(props=root / "etc" / "props"))
    _script(bin_dir / "dumpsys", DUMPSYS.replace("__STATE__", str(root / "etc" / "battery-override")))
    return binds(fs, PHONE_MOUNTS)


def ina3221_monitors(base: str) -> list[tuple[str, str, list[tuple[str, int, int]]]]:
    """(i2c bus, device path of its hwmon directory, idle rails) of each INA3221 of board `base`.

    JetPack 5/6 layout: the hwmon directory lives under the i2c device; ``/sys/class/hwmon/hwmonN``
    is an absolute link to it that resolves only inside the board."""
    return [(bus, f"/sys/bus/i2c/drivers/ina3221/{bus}/hwmon/hwmon{n + 1}", rails)
            for n, (bus, rails) in enumerate(INA_RAILS.get(base, {}).items())]


def build_board(root: Path, profile: DeviceProfile, base: str, serial: str, cpus: int) -> list[str]:
    """Create a board sandbox; returns the nsexec ``--bind`` arguments."""
    fs = _skeleton(root, BOARD_MOUNTS)
    host_path(fs, "/var/tmp").chmod(0o1777)
    for n, (bus, hw, rails) in enumerate(ina3221_monitors(base)):
        _put(fs, f"{hw}/name", "ina3221")
        for ch, (label, mv, ma) in enumerate(rails, start=1):
            _put(fs, f"{hw}/in{ch}_label", label)
            _put(fs, f"{hw}/in{ch}_input", mv)
            _put(fs, f"{hw}/curr{ch}_input", ma)
        link = host_path(fs, f"/sys/class/hwmon/{hw.rsplit('/', 1)[1]}")
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(hw, link)  # absolute: resolves inside the board's namespace
        # JetPack 4 (ina3221x iio driver) names, for tools that still read them.
        iio = f"/sys/bus/i2c/drivers/ina3221x/{bus}/iio:device{n}"
        for ch, (label, mv, ma) in enumerate(rails):
            _put(fs, f"{iio}/rail_name_{ch}", label)
            _put(fs, f"{iio}/in_voltage{ch}_input", mv)
            _put(fs, f"{iio}/in_current{ch}_input", ma)
            _put(fs, f"{iio}/in_power{ch}_input", mv * ma // 1000)
    if profile.kind == "board":  # an x86 host has no devicetree: ssh falls back to hostname and machine-id
        dt = "/sys/firmware/devicetree/base"
        host_path(fs, dt).mkdir(parents=True, exist_ok=True)
        host_path(fs, f"{dt}/model").write_bytes(DT_MODEL.get(base, profile.description).encode() + b"\0")
        host_path(fs, f"{dt}/serial-number").write_bytes(serial.encode() + b"\0")
    if profile.power.source == "rapl":  # powercap counters at rest (the power model makes them count)
        for domain in profile.power.options.get("domains", []):
            _put(fs, str(domain), 0)
            _put(fs, str(domain).rsplit("/", 1)[0] + "/max_energy_range_uj", 262_143_328_850)
    _common(fs, profile, base, cpus)
    if profile.abi == "aarch64":
        # The board's identity says arm64 as the real one does; everything else is the host's uname.
        _script(host_path(fs, "/usr/local/bin") / "uname", UNAME)
    if profile.power_modes.nvpmodel:
        status = root / "etc" / "nvpmodel.status"
        status.write_text(f"{min(profile.power_modes.nvpmodel)}\n")  # boots in the lowest id (15W, MAXN)
        status.chmod(0o666)  # the board's test user runs the stand-in
        modes = "\n".join(f"{i} {n}" for i, n in sorted(profile.power_modes.nvpmodel.items()))
        _script(host_path(fs, "/usr/local/bin") / "nvpmodel",
                NVPMODEL.replace("__STATUS__", shlex.quote(str(status))).replace("__MODES__", modes))
    if profile.power_modes.jetson_clocks:
        _script(host_path(fs, "/usr/local/bin") / "jetson_clocks",
                JETSON_CLOCKS.replace("__MACHINE__", DT_MODEL.get(base, profile.description)))
    host_path(fs, "/var/tmp/farm").mkdir(mode=0o1777)
    host_path(fs, "/var/tmp/farm").chmod(0o1777)
    return binds(fs, BOARD_MOUNTS)
