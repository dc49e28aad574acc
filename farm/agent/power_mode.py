"""The `power_mode` axis: set a device's power mode before a job, read it back, restore it after.

Modes (a sweep's ``power_mode`` entries):

- ``default``: nothing is touched (the device's mode as it is);
- ``nvpmodel:ID`` or ``nvpmodel:NAME`` (Jetson, ``sudo nvpmodel -m ID``), ``+clocks`` appended runs
  ``jetson_clocks`` too (clocks pinned at the mode's maximum); read back with ``nvpmodel -q``
  (``NV Power Mode: NAME`` then the id) and ``jetson_clocks --show`` (``cpuN: … MinFreq=… MaxFreq=…``);
- ``governor:NAME``: every core's cpufreq ``scaling_governor``;
- ``freq:KHZ``: every core pinned (``scaling_min_freq`` = ``scaling_max_freq`` = KHZ).

Before changing anything the previous state is written to ``<workdir>/run/power_mode.restore`` (JSON;
``jetson_clocks --store`` keeps the clocks next to it). :func:`restore` puts it back after the job and
deletes the file; a job that died in between (a killed agent) leaves the file, and
:func:`farm.agent.scope.prepare` restores from it before the next job on that device.
"""

from __future__ import annotations

import json
import posixpath
import re
import shlex
from dataclasses import dataclass
from typing import Any

from farm.devices import DeviceProfile
from farm.errors import InfraError, JobError
from farm.transports.base import Transport

DEFAULT = "default"
CPUFREQ = "/sys/devices/system/cpu/cpu[0-9]*/cpufreq"
_NV_NAME = re.compile(r"^NV Power Mode:\s*(\S.*?)\s*$", re.M)
_SHOW_CPU = re.compile(r"^cpu(\d+):.*?MinFreq=(\d+)\s+MaxFreq=(\d+)", re.M)


@dataclass(frozen=True)
class Mode:
    kind: str  # default | nvpmodel | governor | freq
    value: str = ""
    clocks: bool = False

    @property
    def label(self) -> str:
        if self.kind == DEFAULT:
            return DEFAULT
        return f"{self.kind}:{self.value}{'+clocks' if self.clocks else ''}"


def parse(text: str) -> Mode:
    """A mode from its sweep-file spelling; ValueError names the problem."""
    text = text.strip()
    if text == DEFAULT:
        return Mode(DEFAULT)
    kind, sep, value = text.partition(":")
    clocks = value.endswith("+clocks")
    value = value.removesuffix("+clocks")
    if not sep or not value or kind not in ("nvpmodel", "governor", "freq"):
        raise ValueError(f"power_mode {text!r} is not default, nvpmodel:ID[+clocks], governor:NAME or freq:KHZ")
    if clocks and kind != "nvpmodel":
        raise ValueError(f"power_mode {text!r}: +clocks (jetson_clocks) goes with nvpmodel:ID")
    if kind == "freq" and not value.isdigit():
        raise ValueError(f"power_mode {text!r}: freq is in kHz, a whole number")
    if kind == "governor" and not re.fullmatch(r"[a-z0-9_]+", value):
        raise ValueError(f"power_mode {text!r}: not a cpufreq governor name")
    return Mode(kind, value, clocks)


def cannot(profile: DeviceProfile, tags: list[str], mode: Mode) -> str | None:
    """Why a device of `profile` (with `tags`) cannot set `mode`; None when it can."""
    pm = profile.power_modes
    if mode.kind == DEFAULT:
        return None
    if mode.kind == "nvpmodel":
        if not pm.nvpmodel:
            return f"{profile.name} has no nvpmodel (profile power_modes.nvpmodel is empty)"
        if _nv_id(profile, mode.value) is None:
            known = ", ".join(f"{i} ({n})" for i, n in sorted(pm.nvpmodel.items()))
            return f"{profile.name} has no nvpmodel mode {mode.value!r} (modes: {known})"
        if mode.clocks and not pm.jetson_clocks:
            return f"{profile.name} has no jetson_clocks (profile power_modes.jetson_clocks: false)"
        return None
    if not (pm.cpufreq or "rooted" in tags):
        return (f"{profile.name} cannot set cpufreq {mode.kind} (needs root: profile power_modes.cpufreq "
                "or a device tagged rooted)")
    if mode.kind == "freq" and profile.cpus.max_khz and int(mode.value) > max(profile.cpus.max_khz):
        return f"freq {mode.value} kHz is above {profile.name}'s fastest core ({max(profile.cpus.max_khz)} kHz)"
    return None


def _nv_id(profile: DeviceProfile, value: str) -> int | None:
    for i, name in profile.power_modes.nvpmodel.items():
        if value == str(i) or value == name:
            return i
    return None


def restore_file(workdir: str) -> str:
    from farm.agent.scope import run_dir

    return posixpath.join(run_dir(workdir), "power_mode.restore")


def _root(profile: DeviceProfile | None, script: str) -> str:
    """`script` as the device's user runs what needs root: through ``sudo -n`` when the profile says so."""
    return f"sudo -n sh -c {shlex.quote(script)}" if profile is not None and profile.power_modes.sudo else script


def _sh(transport: Transport, script: str, what: str, profile: DeviceProfile | None = None) -> str:
    out = transport.shell(_root(profile, script), timeout=60)
    if out.exit_code != 0:
        raise JobError(f"power mode: {what} exited {out.exit_code}: {(out.stderr or out.stdout).strip()[:200]}")
    return out.stdout


def read_nvpmodel(transport: Transport, profile: DeviceProfile | None = None) -> tuple[str, int]:
    """(name, id) from ``nvpmodel -q``: ``NV Power Mode: 15W`` then ``0`` (warnings may come first)."""
    text = _sh(transport, "nvpmodel -q", "nvpmodel -q", profile)
    name = _NV_NAME.search(text)
    ids = [line.strip() for line in text[name.end():].splitlines() if line.strip().isdigit()] if name else []
    if not name or not ids:
        raise JobError(f"power mode: cannot read `nvpmodel -q` output: {text.strip()[:200]!r}")
    return name.group(1), int(ids[0])


def read_clocks(transport: Transport, profile: DeviceProfile | None = None) -> bool:
    """Are the CPU clocks pinned (``jetson_clocks --show``: every cpu's MinFreq equals its MaxFreq)?"""
    text = _sh(transport, "jetson_clocks --show", "jetson_clocks --show", profile)
    cpus = _SHOW_CPU.findall(text)
    if not cpus:
        raise JobError(f"power mode: no cpu lines in `jetson_clocks --show`: {text.strip()[:200]!r}")
    return all(lo == hi for _, lo, hi in cpus)


def read_cpufreq(transport: Transport) -> dict[str, dict[str, str]]:
    """Every core's governor and min/max (kHz), by cpufreq directory."""
    script = (f"for d in {CPUFREQ}; do [ -d \"$d\" ] || continue; echo \"$d $(cat $d/scaling_governor) "
              f"$(cat $d/scaling_min_freq) $(cat $d/scaling_max_freq)\"; done")
    out: dict[str, dict[str, str]] = {}
    for line in _sh(transport, script, "reading cpufreq").splitlines():
        parts = line.split()
        if len(parts) == 4:
            out[parts[0]] = {"governor": parts[1], "min": parts[2], "max": parts[3]}
    if not out:
        raise JobError("power mode: the device has no cpufreq directories")
    return out


def _write_cpufreq(state: dict[str, dict[str, str]]) -> str:
    """Script writing `state`: max, min, max again (whichever way the range moves, one order is legal for
    the kernel; the first max write may be refused), then the governor."""
    lines = []
    for d, s in state.items():
        q = shlex.quote(d)
        lines.append(f"echo {shlex.quote(s['max'])} > {q}/scaling_max_freq 2>/dev/null; "
                     f"echo {shlex.quote(s['min'])} > {q}/scaling_min_freq; "
                     f"echo {shlex.quote(s['max'])} > {q}/scaling_max_freq; "
                     f"echo {shlex.quote(s['governor'])} > {q}/scaling_governor")
    return "; ".join(lines) or "true"


def apply(transport: Transport, profile: DeviceProfile, workdir: str, mode: Mode) -> dict[str, Any]:
    """Set `mode`, after recording what it changes; returns what was read back (stored with the result)."""
    if mode.kind == DEFAULT:
        return {}
    previous: dict[str, Any] = {"mode": mode.label, "sudo": profile.power_modes.sudo}
    store_path = posixpath.join(posixpath.dirname(restore_file(workdir)), "jetson_clocks.store")
    if mode.kind == "nvpmodel":
        name, nv_id = read_nvpmodel(transport, profile)
        previous["nvpmodel"] = nv_id
        if mode.clocks:
            _sh(transport, f"jetson_clocks --store {shlex.quote(store_path)}", "jetson_clocks --store", profile)
            previous["clocks_store"] = store_path
    else:
        previous["cpufreq"] = read_cpufreq(transport)
    # recorded before any change: a job killed from here on is undone by the next job's scope.prepare
    _sh(transport, f"printf '%s\\n' {shlex.quote(json.dumps(previous))} > {shlex.quote(restore_file(workdir))}",
        "writing the restore file")
    if mode.kind == "nvpmodel":
        want = _nv_id(profile, mode.value)
        # stdin closed: a mode that needs a reboot asks on stdin; unanswered, it is not applied (read back below)
        _sh(transport, f"nvpmodel -m {int(want or 0)} </dev/null", f"nvpmodel -m {want}", profile)
        if mode.clocks:
            _sh(transport, "jetson_clocks", "jetson_clocks", profile)
        name, nv_id = read_nvpmodel(transport, profile)
        back: dict[str, Any] = {"nvpmodel": nv_id, "nvpmodel_name": name}
        if nv_id != want:
            raise JobError(f"power mode: nvpmodel -m {want} left mode {nv_id} ({name})")
        if mode.clocks:
            back["jetson_clocks"] = read_clocks(transport, profile)
            if not back["jetson_clocks"]:
                raise JobError("power mode: jetson_clocks ran but the CPU clocks are not pinned")
        return {"read_back": back, "previous": previous}
    dirs = previous["cpufreq"]
    if mode.kind == "governor":
        script = "; ".join(f"echo {shlex.quote(mode.value)} > {shlex.quote(d)}/scaling_governor" for d in dirs)
    else:
        script = _write_cpufreq({d: {"governor": s["governor"], "min": mode.value, "max": mode.value}
                                 for d, s in dirs.items()})
    transport.shell(_root(profile, script), timeout=60)  # a refused write shows in the read-back below
    now = read_cpufreq(transport)
    wrong = [d for d, s in now.items() if (s["governor"] != mode.value if mode.kind == "governor"
                                          else (s["min"], s["max"]) != (mode.value, mode.value))]
    if wrong:
        raise JobError(f"power mode {mode.label}: not applied on {wrong[0]} (read back {now[wrong[0]]})")
    return {"read_back": {"cpufreq": now}, "previous": previous}


def restore(transport: Transport, workdir: str, text: str | None = None) -> dict[str, Any] | None:
    """Put back what the restore file says and delete it; None when there is none. InfraError when the
    device refuses (the file stays, so the next job tries again). `text`: the file, already read."""
    path = shlex.quote(restore_file(workdir))
    if text is None:
        text = transport.shell(f"cat {path} 2>/dev/null", timeout=30).stdout
    text = text.strip()
    if not text:
        return None
    try:
        previous = json.loads(text)
    except json.JSONDecodeError:
        transport.shell(f"rm -f {path}", timeout=30)  # a half-written file: nothing was changed yet
        return None
    parts = []
    if "nvpmodel" in previous:
        parts.append(f"nvpmodel -m {int(previous['nvpmodel'])} </dev/null")
    if previous.get("clocks_store"):
        parts.append(f"jetson_clocks --restore {shlex.quote(previous['clocks_store'])}")
    if previous.get("cpufreq"):
        parts.append(_write_cpufreq(previous["cpufreq"]))
    script = " && ".join(f"{{ {p}; }}" for p in parts) or "true"
    if previous.get("sudo"):  # as it was set: the restore file says how
        script = f"sudo -n sh -c {shlex.quote(script)}"
    done = transport.shell(script, timeout=60)
    if done.exit_code != 0:
        raise InfraError(f"could not restore the power mode from {restore_file(workdir)}: "
                         f"{(done.stderr or done.stdout).strip()[:200]}")
    transport.shell(f"rm -f {path}", timeout=30)
    return previous
