"""The `cpus` axis: which cores run the engine, resolved from a profile's cluster topology, applied with
``taskset`` on the device and read back from the engine's threads.

Selectors: ``all``; ``big`` (every core faster than the slowest cluster); ``little`` (the slowest
cluster); ``prime`` (the fastest cluster, when it is faster than another); or an explicit set, as a hex
mask (``0x30``) or a cpu list (``4-7,8``). Clusters come from ``cpus.max_khz`` (cpufreq
cpuinfo_max_freq per core); a profile without it has one core type, where ``little`` and ``prime``
do not exist (the plan drops such cells with the reason).

The engine starts as ``taskset MASK sh -c SCRIPT FILE engine…``: the shell starts a sampler in the
background, then ``exec``s the engine, so the engine keeps the pid the sampler watches. The sampler
writes each thread's ``Cpus_allowed_list`` (``/proc/PID/task/TID/status``) to FILE every 0.1 s while
the engine runs; the runner reads FILE back and stores what the kernel applied.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from farm.devices import DeviceProfile

SELECTORS = ("all", "big", "little", "prime")
_LIST = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")

# $0: the readback file; "$@": the engine. The first sample is taken before exec (the process that becomes
# the engine), the rest while it runs, every thread; the loop ends with the engine's pid.
_SAMPLER = ('f=$0; p=$$; ( while [ -d /proc/$p ]; do for t in /proc/$p/task/*; do '
            's=$(sed -n "s/^Cpus_allowed_list:[[:space:]]*//p" "$t/status" 2>/dev/null) && [ -n "$s" ] && '
            'echo "${t##*/} $s"; done; sleep 0.1; done ) > "$f" 2>/dev/null </dev/null & exec "$@"')


@dataclass(frozen=True)
class CoreSet:
    selector: str
    cores: tuple[int, ...]

    @property
    def mask(self) -> int:
        return sum(1 << c for c in self.cores)

    @property
    def hex(self) -> str:
        return f"{self.mask:x}"

    @property
    def cpulist(self) -> str:
        return format_cpulist(self.cores)


def parse_cpulist(text: str) -> tuple[int, ...]:
    """``0-3,8`` → (0, 1, 2, 3, 8) (the kernel's cpu list format)."""
    text = text.strip()
    if not _LIST.match(text):
        raise ValueError(f"{text!r} is not a cpu list (like 0-3,8)")
    out: set[int] = set()
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return tuple(sorted(out))


def format_cpulist(cores: Sequence[int]) -> str:
    """(0, 1, 2, 3, 8) → ``0-3,8``."""
    parts: list[str] = []
    cores = sorted(set(cores))
    i = 0
    while i < len(cores):
        j = i
        while j + 1 < len(cores) and cores[j + 1] == cores[j] + 1:
            j += 1
        parts.append(str(cores[i]) if i == j else f"{cores[i]}-{cores[j]}")
        i = j + 1
    return ",".join(parts)


def check_selector(value: str) -> str:
    """A selector's shape (a sweep file's `cpus` entry), independent of any device."""
    if value in SELECTORS:
        return value
    if value.lower().startswith("0x"):
        try:
            if int(value, 16) > 0:
                return value.lower()
        except ValueError:
            pass
        raise ValueError(f"cpus {value!r}: a hex mask needs at least one core (like 0xf0)")
    try:
        parse_cpulist(value)
    except ValueError:
        raise ValueError(f"cpus {value!r} is not one of {', '.join(SELECTORS)}, a hex mask (0xf0) "
                         "or a cpu list (4-7)") from None
    return value


def resolve(profile: DeviceProfile, selector: str) -> CoreSet:
    """The cores `selector` names on a device of `profile`; ValueError says why it names none."""
    n = profile.cpus.count
    khz = profile.cpus.max_khz or [0] * n
    speeds = sorted(set(khz))
    if selector == "all":
        cores = tuple(range(n))
    elif selector in ("big", "little", "prime"):
        if len(speeds) == 1:
            if selector == "big":  # one core type: every core is a big one
                cores = tuple(range(n))
            else:
                why = "no cpus.max_khz in the profile" if profile.cpus.max_khz is None else "one core type"
                raise ValueError(f"{profile.name} has no {selector} cores ({why})")
        else:
            pick = {"little": lambda k: k == speeds[0], "big": lambda k: k > speeds[0],
                    "prime": lambda k: k == speeds[-1]}[selector]
            cores = tuple(i for i, k in enumerate(khz) if pick(k))
    else:
        cores = (tuple(i for i in range(int(selector, 16).bit_length()) if int(selector, 16) >> i & 1)
                 if selector.startswith("0x") else parse_cpulist(selector))
        outside = [c for c in cores if c >= n]
        if outside:
            raise ValueError(f"cpus {selector}: cpu{outside[0]} is outside the {n} cores of {profile.name}")
    return CoreSet(selector, cores)


def wrap(argv: Sequence[str], cores: CoreSet, readback: str) -> list[str]:
    """`argv` pinned to `cores` (``taskset`` in toybox and util-linux: a hex mask, then the command), its
    threads' affinity sampled into the device file `readback`."""
    return ["taskset", cores.hex, "sh", "-c", _SAMPLER, readback, *argv]


def parse_readback(text: str) -> dict[str, object]:
    """What the sampler wrote: the cores the engine's threads were allowed (union), how many threads it saw,
    and whether every thread had the same set."""
    sets: dict[str, str] = {}
    for line in text.splitlines():
        tid, _, cpus = line.strip().partition(" ")
        if tid.isdigit() and cpus:
            sets[tid] = cpus.strip()
    if not sets:
        return {}
    union = sorted({c for v in sets.values() for c in parse_cpulist(v)})
    return {"cpus_allowed": format_cpulist(union), "threads_seen": len(sets),
            "uniform": len(set(sets.values())) == 1, "mask": f"0x{sum(1 << c for c in union):x}"}
