"""Build llama.cpp's ``llama-bench`` (and farm's logits program, from the same build) and cache it: from
the PyPI sdist, or from any llama.cpp source tree.

Owns the llama-bench binaries farm runs. Two sources:

- the llama.cpp copy vendored in the ``llama-cpp-python`` sdist (``pip download``; no git clone, pinned
  by the sdist version), cached under ``farm.paths.cache_dir("llamacpp")/<version>/<isa>/`` (so under
  ``$FARM_HOME/cache`` when FARM_HOME is set, as every other cache);
- a source tree (a ``git archive`` of an engine commit made by ``farm.engine_builds``), cached under
  ``.../llamacpp/tree/<key>/`` with key = sha256(commit or tree digest, isa, extra flags).

A build takes ~3.5 min on 2 cores, so it happens once per key: in a temporary directory renamed into
place (concurrent callers are safe; a cached binary is never half-written). ``build.json`` next to the
binary records flags, commit and sha256 as provenance (completed once for a binary found without it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from farm.errors import ConfigError, InfraError
from farm.paths import cache_dir

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
TARGET = "llama-bench"

# GGML_NATIVE=ON is not usable on VMs whose CPUs advertise AMX: -march=native enables it and ggml's AMX
# matmul segfaults when the tile state is not available to guests. So ISAs are listed explicitly; "avx2"
# is the ISA of the reference engine's host build (the apples-to-apples peer).
_X86 = ["-DGGML_NATIVE=OFF", "-DGGML_AVX=ON", "-DGGML_AVX2=ON", "-DGGML_FMA=ON", "-DGGML_F16C=ON", "-DGGML_BMI2=ON"]
ISA_FLAGS: dict[str, list[str]] = {
    "avx2": _X86,
    "avx512": [*_X86, "-DGGML_AVX512=ON", "-DGGML_AVX512_VBMI=ON", "-DGGML_AVX512_VNNI=ON",
               "-DGGML_AVX512_BF16=ON", "-DGGML_AVX_VNNI=ON"],
    "portable": ["-DGGML_NATIVE=OFF"],
    "native": ["-DGGML_NATIVE=ON"],
}
_COMMON = ["-DCMAKE_BUILD_TYPE=Release", "-DLLAMA_CURL=OFF", "-DBUILD_SHARED_LIBS=OFF"]


@dataclass(frozen=True)
class LlamaBenchBuild:
    """A llama-bench binary and its provenance."""

    path: Path
    sha256: str
    isa: str
    flags: tuple[str, ...]
    commit: str | None  # llama.cpp commit it was built from (short SHA as llama-bench reports it)
    source: str  # "llama-cpp-python==0.3.36" or "tree:<commit>"


def cache_root() -> Path:
    return cache_dir("llamacpp")


def default_isa() -> str:
    """avx2 on x86 CPUs that have it, else the portable build (no -march=native, see ISA_FLAGS)."""
    try:
        words = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "portable"
    return "avx2" if {"avx2", "fma", "f16c"} <= words else "portable"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _reported_commit(exe: Path) -> str | None:
    """The commit llama-bench was built from, from its --version line ``version: N (abc1234)``."""
    try:
        out = subprocess.run([str(exe), "--version"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"commit ([0-9a-f]{6,40})|\(([0-9a-f]{6,40})\)", out.stdout + out.stderr)
    return (m.group(1) or m.group(2)) if m else None


def _run(cmd: list[str], what: str) -> None:
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise InfraError(f"{what} failed ({' '.join(cmd[:4])} ...):\n{(res.stderr or res.stdout)[-3000:]}")


def _cmake_build(src: Path, work: Path, flags: list[str], target: str = TARGET) -> Path:
    build = work / "build"
    _run(["cmake", "-S", str(src), "-B", str(build), *flags], "cmake configure of llama.cpp")
    _run(["cmake", "--build", str(build), "--target", *target.split(), "-j", str(os.cpu_count() or 2)],
         f"cmake build of {target}")
    if target != TARGET:
        return build
    exe = build / "bin" / TARGET
    if not exe.exists():
        raise InfraError(f"llama.cpp build produced no {exe}")
    return exe


def _sdist_tree(work: Path, version: str) -> Path:
    """The llama.cpp tree vendored in llama-cpp-python==`version`'s sdist, unpacked under `work`."""
    source = f"llama-cpp-python=={version}"
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", source, "-d", str(work)],
         f"pip download of {source}")
    sdist = next(work.glob("llama_cpp_python-*.tar.gz"))
    with tarfile.open(sdist) as tar:
        tar.extractall(work, filter="data")
    return next(work.glob("llama_cpp_python-*/vendor/llama.cpp"))


LOGITS = "farm-llama-logits"
LOGITS_SOURCE = Path(__file__).with_name("llamacpp_logits.c")


def _logits_dir(root: Path, isa: str) -> Path:
    """Where farm-llama-logits of `isa` is cached: keyed by its source, so an edit of llamacpp_logits.c
    rebuilds it rather than running a stale program."""
    return root / f"{isa}-logits-{hashlib.sha256(LOGITS_SOURCE.read_bytes()).hexdigest()[:12]}"


def link_logits(src: Path, build: Path, out: Path) -> Path:
    """Compile farm's logits program (llamacpp_logits.c) against a built llama.cpp tree's static libraries."""
    libs = [str(p) for p in sorted(build.rglob("*.a")) if p.name.startswith(("libllama", "libggml"))]
    if not libs:
        raise InfraError(f"{build}: no libllama.a / libggml*.a to link {LOGITS} against")
    obj = out.with_suffix(".o")
    _run([os.environ.get("CC", "cc"), "-O2", "-c", "-I", str(src / "include"), "-I", str(src / "ggml" / "include"),
          "-o", str(obj), str(LOGITS_SOURCE)], f"compile of {LOGITS}")
    _run([os.environ.get("CXX", "c++"), "-o", str(out), str(obj), "-Wl,--start-group", *libs, "-Wl,--end-group",
          "-fopenmp", "-lpthread", "-lm"], f"link of {LOGITS}")
    obj.unlink(missing_ok=True)
    return out


def logits_cached(isa: str | None = None, version: str = LLAMA_CPP_PYTHON_VERSION) -> Path | None:
    """farm-llama-logits if it is already built (tests skip instead of building)."""
    exe = _logits_dir(cache_root() / version, isa or default_isa()) / "bin" / LOGITS
    return exe if exe.exists() else None


def logits_program(isa: str | None = None, version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    """farm-llama-logits built against the same llama.cpp as llama-bench (the sdist), on first use; its
    llama-quantize lies next to it (K-quant files with llama.cpp's own recipe). The build's static libraries
    are kept (``<isa>-lib/``), so an edit of llamacpp_logits.c costs a link, not a llama.cpp build."""
    isa = isa or default_isa()
    root = cache_root() / version
    final = _logits_dir(root, isa)
    exe = final / "bin" / LOGITS
    if exe.exists():
        return exe
    lib = _lib_dir(root, isa)
    if not (lib / "bin" / "llama-quantize").exists():
        _build_sdist(isa, version)
    staged = Path(tempfile.mkdtemp(prefix=".out-", dir=root))
    try:
        (staged / "bin").mkdir()
        link_logits(lib, lib / "lib", staged / "bin" / LOGITS)
        shutil.copy2(lib / "bin" / "llama-quantize", staged / "bin" / "llama-quantize")
        _publish(staged, final, exe)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    return exe


def _lib_dir(root: Path, isa: str) -> Path:
    """A build's static libraries (lib/), headers (include/, ggml/include/) and llama-quantize (bin/)."""
    return root / f"{isa}-lib"


def _publish(staged: Path, final: Path, marker: Path) -> None:
    """Rename a staged directory into place; a concurrent winner's copy (with `marker`) is kept."""
    try:
        staged.rename(final)
    except OSError:
        if not marker.exists():
            raise


def _install(exe: Path, final: Path, info: dict) -> None:
    """Move a fresh binary into `final` atomically; a concurrent winner's binary is kept."""
    staged = Path(tempfile.mkdtemp(prefix=".out-", dir=final.parent))
    try:
        (staged / "bin").mkdir()
        shutil.copy2(exe, staged / "bin" / TARGET)
        (staged / "build.json").write_text(json.dumps(info, indent=1))
        try:
            staged.rename(final)
        except OSError:
            if not (final / "bin" / TARGET).exists():
                raise
    finally:
        shutil.rmtree(staged, ignore_errors=True)


def _load(final: Path, isa: str, flags: list[str], source: str) -> LlamaBenchBuild:
    exe = final / "bin" / TARGET
    meta = final / "build.json"
    info = json.loads(meta.read_text()) if meta.exists() else {}
    if "sha256" not in info:  # a binary cached by an older farm: complete its provenance once
        info = {"isa": isa, "flags": flags, "source": source, "commit": _reported_commit(exe), "sha256": _sha256(exe)}
        tmp = meta.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(info, indent=1))
        tmp.replace(meta)
    return LlamaBenchBuild(exe, info["sha256"], info["isa"], tuple(info["flags"]), info.get("commit"),
                           info["source"])


# Extra cmake flags a sweep or `farm regress --flag` may give: llama.cpp's and ggml's own switches and the
# build type. Not CMAKE_C_COMPILER_LAUNCHER, CMAKE_*_FLAGS, -C script.cmake or toolchain files: each of
# those runs or loads a program on the agent host.
_CMAKE_FLAG = re.compile(r"-D(?:(?:GGML|LLAMA)_[A-Z0-9_]+(?::BOOL|:STRING)?=[A-Za-z0-9_.+,-]*"
                         r"|CMAKE_BUILD_TYPE=(?:Release|Debug|RelWithDebInfo|MinSizeRel)|BUILD_SHARED_LIBS=(?:ON|OFF))")


def check_cmake_flags(flags: list[str] | tuple[str, ...]) -> None:
    """Raise ValueError naming the first cmake flag outside the allowlist above."""
    for flag in flags:
        if not _CMAKE_FLAG.fullmatch(flag):
            raise ValueError(f"cmake flag {flag!r} is not allowed; use -DGGML_…=, -DLLAMA_…=, "
                             f"-DCMAKE_BUILD_TYPE= or -DBUILD_SHARED_LIBS=")


def _check_isa(isa: str) -> list[str]:
    if isa not in ISA_FLAGS:
        raise ConfigError(f"unknown llama.cpp ISA {isa!r}; choose one of {', '.join(ISA_FLAGS)}")
    return [*_COMMON, *ISA_FLAGS[isa]]


def from_sdist(isa: str | None = None, version: str = LLAMA_CPP_PYTHON_VERSION) -> LlamaBenchBuild:
    """llama-bench from the llama.cpp vendored in the ``llama-cpp-python`` sdist, building it on first use."""
    isa = isa or default_isa()
    flags = _check_isa(isa)
    final = cache_root() / version / isa
    if not (final / "bin" / TARGET).exists():
        _build_sdist(isa, version)
    return _load(final, isa, flags, f"llama-cpp-python=={version}")


def _build_sdist(isa: str, version: str) -> None:
    """One cmake build of the sdist's llama.cpp for every program farm takes from it: llama-bench (cached
    in ``<isa>/``), and the static libraries, headers and llama-quantize (``<isa>-lib/``) that
    farm-llama-logits is linked against. Whichever is missing is installed; a concurrent winner's is kept."""
    flags = _check_isa(isa)
    root = cache_root() / version
    source = f"llama-cpp-python=={version}"
    root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="build-", dir=root))
    try:
        src = _sdist_tree(work, version)
        build = _cmake_build(src, work, flags, target=f"{TARGET} llama-quantize")
        exe = build / "bin" / TARGET
        if not exe.exists():
            raise InfraError(f"llama.cpp build produced no {exe}")
        if not (root / isa / "bin" / TARGET).exists():
            _install(exe, root / isa, {"isa": isa, "flags": flags, "source": source,
                                       "commit": _reported_commit(exe), "sha256": _sha256(exe)})
        lib = _lib_dir(root, isa)
        if not (lib / "bin" / "llama-quantize").exists():
            staged = Path(tempfile.mkdtemp(prefix=".lib-", dir=root))
            try:
                shutil.copytree(src / "include", staged / "include")
                shutil.copytree(src / "ggml" / "include", staged / "ggml" / "include")
                (staged / "lib").mkdir()
                for a in build.rglob("*.a"):
                    if a.name.startswith(("libllama", "libggml")):
                        shutil.copy2(a, staged / "lib" / a.name)
                (staged / "bin").mkdir()
                shutil.copy2(build / "bin" / "llama-quantize", staged / "bin" / "llama-quantize")
                _publish(staged, lib, lib / "bin" / "llama-quantize")
            finally:
                shutil.rmtree(staged, ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def from_tree(source_dir: Path, commit: str, isa: str | None = None,
              extra_flags: list[str] | tuple[str, ...] = ()) -> LlamaBenchBuild:
    """llama-bench built from a llama.cpp source tree at `commit`; cached by (commit, isa, flags)."""
    isa = isa or default_isa()
    try:
        check_cmake_flags(extra_flags)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    flags = [*_check_isa(isa), *extra_flags]
    src = Path(source_dir)
    has_bench = (src / "tools" / "llama-bench").is_dir() or (src / "examples" / "llama-bench").is_dir()
    if not (src / "CMakeLists.txt").exists() or not has_bench:
        raise ConfigError(f"{src} does not look like a llama.cpp source tree (no CMakeLists.txt / llama-bench)")
    key = hashlib.sha256(json.dumps([commit, isa, flags]).encode()).hexdigest()[:24]
    final = cache_root() / "tree" / key
    source = f"tree:{commit}"
    if (final / "bin" / TARGET).exists():
        return _load(final, isa, flags, source)
    final.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=final.parent))
    try:
        exe = _cmake_build(src, work, flags)
        _install(exe, final, {"isa": isa, "flags": flags, "source": source, "commit": commit, "sha256": _sha256(exe)})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return _load(final, isa, flags, source)


def cached(isa: str | None = None, version: str = LLAMA_CPP_PYTHON_VERSION) -> Path | None:
    """The sdist build's binary if it is already in the cache (tests skip instead of building)."""
    exe = cache_root() / version / (isa or default_isa()) / "bin" / TARGET
    return exe if exe.exists() else None


def llama_bench_path(isa: str = "avx2", version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    """The path of the sdist build of llama-bench for `isa` (built on first use)."""
    return from_sdist(isa, version).path


if __name__ == "__main__":
    if sys.argv[1:2] == ["--where"]:  # where the builds are cached, without building anything
        print(cache_root())
    else:  # build (once) and print llama-bench and farm-llama-logits: .ci/run does it before the tests
        isa = sys.argv[1] if len(sys.argv) > 1 else None
        print(from_sdist(isa).path)
        print(logits_program(isa))
