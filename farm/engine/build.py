"""Build the reference engine's C programs for the host or for aarch64 Linux (static), with provenance.

Owns compiling `farm/engine/src` (or another checkout's sources, for A/B runs of two engine commits)
into a cached binary. A build is keyed by the sha256 of (program sources, compiler version, flags,
target), stored under ``farm.paths.cache_dir("engine")/<key>/`` (the user cache dir, or
$FARM_HOME/cache) and produced in a temporary directory renamed into place, so concurrent builds
of the same key are safe and a cached binary is never half-written.

API:
    build(target="host", out_dir=None, flags=None, source_dir=None, program="farm-engine") -> EngineBuild
    build_info(path) -> dict            # provenance of a binary made by build()
    PROGRAMS                            # program name -> its C sources (relative to the source dir)
    TARGETS                             # target name -> compiler and default flags
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from farm import paths
from farm.errors import ConfigError, InfraError

SOURCE_DIR = Path(__file__).resolve().parent / "src"

# Sources an older engine checkout (an A/B base) may not have yet.
NEWER_SOURCES = frozenset({"kquant.c", "pack.c"})
# Program name -> sources. A second small program (e.g. a power sampler) is one more entry here.
PROGRAMS: dict[str, list[str]] = {
    "farm-engine": ["main.c", "gguf.c", "model.c", "forward.c", "quant.c", "kquant.c", "pack.c", "threadpool.c"],
    "farm-sampler": ["sampler/sampler.c"],  # farm.power's on-device sampler (CLOCK_MONOTONIC)
    "farm-pair": ["pair/pair.c"],  # runs two engine builds in lock step, one timed phase each (farm regress)
    # the quantized dot-product kernels on fixed data, to compare builds (scalar, AVX2, NEON) kernel by kernel
    "farm-kcheck": ["kcheck/kcheck.c", "quant.c", "kquant.c", "pack.c", "gguf.c"],
}
# Headers every program may include; they are part of the cache key.
_LAYOUT = 2  # bump when build.json changes, so old cache entries are not read
HEADERS = ["common.h", "gguf.h", "model.h", "quant.h", "threadpool.h"]

_COMMON = ["-std=c11", "-D_GNU_SOURCE", "-O3", "-pthread", "-Wall", "-Wextra"]
TARGETS: dict[str, dict[str, object]] = {
    # Flags for "host" are completed at build time from /proc/cpuinfo (see host_flags).
    "host": {"cc": os.environ.get("CC", "cc"), "flags": _COMMON, "ldflags": ["-lm"]},
    # armv8.2-a+dotprod: every phone SoC since ~2018 and the Pi 5 / Orin have SDOT.
    "aarch64-linux-static": {
        "cc": "aarch64-linux-gnu-gcc",
        "flags": [*_COMMON, "-static", "-march=armv8.2-a+dotprod"],
        "ldflags": ["-lm"],
    },
}


# Extra compiler flags a user may give (backend option `flags`, `farm regress --flag`): optimisation,
# target CPU, macros, -f code-generation and -m machine options. Nothing that names a program or a file
# to run or read (-wrapper, -B, -specs=, @file, -fplugin=, -Wl,..., -o, -include): the flags come from a
# sweep file, and a sweep must not be able to run a command on the agent host.
_FLAG_VALUE = r"[A-Za-z0-9_.+,-]*"  # no '/', no spaces: a value is never a path
_ALLOWED_FLAG = re.compile(rf"-O(?:[0-3sgz]|fast)?|-m(?:arch|cpu|tune)={_FLAG_VALUE}|-D[A-Za-z_]\w*(?:={_FLAG_VALUE})?"
                           rf"|-U[A-Za-z_]\w*|-f(?!plugin)[a-z0-9][a-z0-9-]*(?:={_FLAG_VALUE})?"
                           rf"|-m[a-z0-9][a-z0-9-]*(?:={_FLAG_VALUE})?")


def check_flags(flags: list[str] | tuple[str, ...]) -> None:
    """Raise ValueError naming the first flag outside the allowlist above."""
    for flag in flags:
        if not isinstance(flag, str) or not _ALLOWED_FLAG.fullmatch(flag):
            raise ValueError(f"compiler flag {flag!r} is not allowed; use -O…, -march=/-mcpu=/-mtune=, -D…, "
                             f"-f… (not -fplugin) or -m…")


@dataclass(frozen=True)
class EngineBuild:
    """A built program and where it came from."""

    path: Path
    program: str
    target: str
    flags: tuple[str, ...]
    source_sha256: str
    compiler: str
    key: str
    sha256: str  # of the binary: what a device must hold to skip staging
    commit: str | None  # git commit of the source checkout ("-dirty" if src/ has local changes)

    @property
    def build_id(self) -> str:
        return self.key


def host_flags() -> list[str]:
    """AVX2/FMA/F16C only if this CPU has all three (no -march=native: binaries move between hosts)."""
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    words = set(cpuinfo.split())
    if {"avx2", "fma", "f16c"} <= words:
        return ["-mavx2", "-mfma", "-mf16c"]
    return []


def _compiler_version(cc: str) -> str:
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, check=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        raise InfraError(f"C compiler {cc!r} is not usable ({exc}); install it or set CC") from exc
    return out.stdout.splitlines()[0].strip()


def _source_digest(source_dir: Path, program: str) -> str:
    h = hashlib.sha256()
    for name in sorted({*PROGRAMS[program], *HEADERS}):
        p = source_dir / name
        if not p.exists():
            if name in HEADERS or name in NEWER_SOURCES:
                continue
            raise ConfigError(f"{source_dir}: missing engine source {name}")
        h.update(name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def cache_dir() -> Path:
    return paths.cache_dir("engine")


def _git_commit(source_dir: Path) -> str | None:
    try:
        head = subprocess.run(["git", "-C", str(source_dir), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(source_dir), "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def build(
    target: str = "host",
    out_dir: Path | None = None,
    flags: list[str] | tuple[str, ...] | None = None,
    source_dir: Path | None = None,
    program: str = "farm-engine",
) -> EngineBuild:
    """Compile `program` for `target` and return the (possibly cached) binary with its provenance.

    `flags` are appended to the target's default flags (e.g. ``["-DFARM_SCALAR"]`` for the portable
    path). `out_dir` overrides the cache root. Raises ConfigError for an unknown target/program and
    InfraError when the compiler is missing or fails.
    """
    if target not in TARGETS:
        raise ConfigError(f"unknown engine target {target!r}; choose one of {', '.join(TARGETS)}")
    if program not in PROGRAMS:
        raise ConfigError(f"unknown program {program!r}; choose one of {', '.join(PROGRAMS)}")
    try:
        check_flags(list(flags or []))
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    src = Path(source_dir) if source_dir is not None else SOURCE_DIR
    spec = TARGETS[target]
    cc = str(spec["cc"])
    all_flags = [*spec["flags"], *(host_flags() if target == "host" else []), *(flags or [])]  # type: ignore[misc]
    compiler = _compiler_version(cc)
    src_sha = _source_digest(src, program)
    key = hashlib.sha256(json.dumps([_LAYOUT, program, src_sha, compiler, all_flags, target]).encode()).hexdigest()[:24]
    final = (Path(out_dir) if out_dir is not None else cache_dir()) / key
    exe = final / program
    meta = final / "build.json"
    if exe.exists() and meta.exists():
        return _from_meta(json.loads(meta.read_text()), exe)

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
    try:
        # The flags are baked into the binary (bench JSON "build_flags"): provenance travels with it.
        define = "-DFARM_BUILD_FLAGS=\"" + " ".join(all_flags).replace('"', "") + "\""
        sources = [str(src / s) for s in PROGRAMS[program] if (src / s).exists() or s not in NEWER_SOURCES]
        cmd = [cc, *all_flags, define, "-o", str(tmp / program), *sources,
               *spec["ldflags"]]  # type: ignore[misc]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            raise InfraError(f"engine build failed ({' '.join(cmd)}):\n{res.stderr[-4000:]}")
        info = {"program": program, "target": target, "flags": all_flags, "source_sha256": src_sha,
                "compiler": compiler, "key": key, "commit": _git_commit(src),
                "sha256": hashlib.sha256((tmp / program).read_bytes()).hexdigest()}
        (tmp / "build.json").write_text(json.dumps(info, indent=1))
        try:
            tmp.rename(final)
        except OSError:
            if not exe.exists():  # a concurrent build of the same key won the race: use its result
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _from_meta(json.loads(meta.read_text()), exe)


def _from_meta(info: dict, exe: Path) -> EngineBuild:
    return EngineBuild(path=exe, program=info["program"], target=info["target"], flags=tuple(info["flags"]),
                       source_sha256=info["source_sha256"], compiler=info["compiler"], key=info["key"],
                       sha256=info["sha256"], commit=info.get("commit"))


def build_info(path: Path) -> dict:
    """Provenance of a binary made by `build` (target, flags, source sha256, compiler, key)."""
    meta = Path(path).parent / "build.json"
    if not meta.exists():
        raise ConfigError(f"{path}: no build.json next to it; was it made by farm.engine.build?")
    info = asdict(_from_meta(json.loads(meta.read_text()), Path(path)))
    info["path"] = str(info["path"])
    info["flags"] = list(info["flags"])
    return info
