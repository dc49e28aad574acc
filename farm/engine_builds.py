"""Engine source trees at git commits, for A/B builds: the part of ``farm regress`` that touches git.

Owns turning (engine repository PATH, REV) into a read-only source tree and the backend options that
build it. ``git archive`` of the commit is unpacked under ``farm.paths.cache_dir("engine-src")/<sha>/``
(atomically, once per commit), so the user's checkout, index and worktree list are never touched and
uncommitted edits cannot leak into a build. The backend then compiles that tree; its own cache is
keyed by the tree's content, target and flags, so one (commit, target, flags) is built once.

Every result carries ``engine_commit`` (the full SHA) and ``build_flags`` as provenance: the backend
receives them as options (``source_dir``, ``engine_commit``, ``flags``) because an archived tree has
no ``.git`` to ask, and two commits with identical engine sources share one binary.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm import paths
from farm.errors import ConfigError, InfraError

# Where each backend's sources may sit inside an engine repository, most specific first.
LAYOUTS: dict[str, list[tuple[str, str]]] = {
    # (subdir, a file that must exist there)
    "reference": [("farm/engine/src", "forward.c"), ("src", "forward.c"), ("", "forward.c")],
    "llamacpp": [("", "tools/llama-bench/llama-bench.cpp"), ("vendor/llama.cpp", "tools/llama-bench/llama-bench.cpp"),
                 ("", "examples/llama-bench/llama-bench.cpp")],
}


@dataclass(frozen=True)
class EngineSource:
    """An engine commit unpacked for building."""

    repo: Path
    rev: str
    commit: str
    tree: Path
    source_dir: Path
    subject: str

    @property
    def short(self) -> str:
        return self.commit[:10]

    def backend_options(self, flags: list[str] | None = None) -> dict[str, Any]:
        """Options a backend needs to build this commit and record it as provenance."""
        opts: dict[str, Any] = {"source_dir": str(self.source_dir), "engine_commit": self.commit}
        if flags:
            opts["flags"] = list(flags)
        return opts


def _git(repo: Path, *args: str, binary: bool = False) -> Any:
    try:
        res = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=not binary, timeout=300)
    except FileNotFoundError as exc:
        raise InfraError("git is not installed") from exc
    if res.returncode != 0:
        err = res.stderr.decode(errors="replace") if binary else res.stderr
        raise ConfigError(f"git {' '.join(args[:2])} in {repo}: {err.strip().splitlines()[-1] if err.strip() else '?'}")
    return res.stdout


def resolve_commit(repo: Path | str, rev: str) -> str:
    """The full SHA of `rev` (a branch, tag, SHA or HEAD~2) in the repository at `repo`."""
    repo = Path(repo)
    if not (repo / ".git").exists() and not (repo / "HEAD").exists():
        raise ConfigError(f"--engine {repo}: not a git repository")
    try:
        return _git(repo, "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}").strip()
    except ConfigError:
        raise ConfigError(f"--engine {repo}: no commit {rev!r}") from None


def _locate(tree: Path, backend: str, subdir: str | None) -> Path:
    if subdir is not None:
        if not (tree / subdir).is_dir():
            raise ConfigError(f"engine subdir {subdir!r} does not exist at this commit")
        return tree / subdir
    for sub, marker in LAYOUTS.get(backend, []):
        if (tree / sub / marker).exists():
            return tree / sub if sub else tree
    known = ", ".join(s or "." for s, _ in LAYOUTS.get(backend, [])) or "none known"
    raise ConfigError(f"no {backend} engine sources in this commit (looked in {known}); pass --engine-subdir")


def tree_dir() -> Path:
    return paths.cache_dir("engine-src")


def checkout(repo: Path | str, rev: str, backend: str = "reference", subdir: str | None = None) -> EngineSource:
    """Unpack `rev` of `repo` into the per-commit cache (once) and find the `backend`'s sources in it."""
    repo = Path(repo).resolve()
    commit = resolve_commit(repo, rev)
    final = tree_dir() / commit
    if not final.is_dir():
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{commit[:12]}-", dir=final.parent))
        try:
            data = _git(repo, "archive", "--format=tar", commit, binary=True)
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                tar.extractall(tmp, filter="data")
            try:
                tmp.rename(final)
            except OSError:
                if not final.is_dir():  # lost the race to a concurrent unpack of the same commit: fine
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    subject = _git(repo, "log", "-1", "--format=%s", commit).strip()
    return EngineSource(repo, rev, commit, final, _locate(final, backend, subdir), subject)
