"""What every engine farm cannot build shares: a lab-supplied binary per ABI and a model directory.

MNN, ExecuTorch, mllm, ONNX Runtime GenAI and MLC ship no device binaries farm could build here, so the
lab gives them in the backend's options (validated by a pydantic model, unknown keys refused)::

    backends:
      - name: mnn
        options:
          binary: {arm64-v8a: /opt/mnn/android/llm_bench,          # a file, or a directory (binary + *.so)
                   aarch64: {url: "https://lab/llm_bench", sha256: "9f2c..."}}
          program: llm_bench                                         # the executable inside a directory
          model_dir: /models/qwen2.5-0.5b-mnn

Both go through the agent's content-addressed artifact cache (one artifact per file), and the device
command first lays them out again as directories of links (engines open their neighbours by relative
path: MNN's config.json names llm.mnn, an .so sits next to its binary). Each engine module owns its
command line and its parser (``parse_text`` → :class:`Measured`, also what ``farm ingest`` reads); this
module owns staging, the repetition loop for engines without a repetition flag, and keeping the raw output.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import urllib.request
from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, model_validator

from farm.backends.base import Artifact, Backend, BackendOutput, Measured, Prepared
from farm.devices import DeviceProfile
from farm.errors import ConfigError, JobError
from farm.jobs import Job
from farm.registry import PluginOptions
from farm.transports.base import CommandResult, quote_argv

REP_MARK = "FARM_REP"  # printed by the device loop before each repetition's process
RAW_LIMIT = 64 * 1024  # raw output kept with the job (the tail: engines print their summary last)


class Download(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class PrebuiltOptions(PluginOptions):
    """Options every prebuilt engine takes; an engine adds its own fields in a subclass."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, protected_namespaces=())
    binary: dict[str, str | Download] = Field(min_length=1, description="ABI → path (file or directory) or url+sha256")
    program: str | None = Field(default=None, description="the executable's name when binary is a directory")
    model_dir: str
    env: dict[str, str] = Field(default_factory=dict)
    args: list[str] = Field(default_factory=list, description="extra engine arguments, appended as given")
    engine_commit: str | None = Field(default=None, description="the engine's commit or version, as the lab knows it")

    @model_validator(mode="after")
    def _local_paths(self, info: ValidationInfo) -> PrebuiltOptions:
        if (info.context or {}).get("shape_only"):  # a sweep is checked where it is submitted, not on the agent
            return self
        for abi, b in self.binary.items():
            if isinstance(b, str) and not Path(b).expanduser().exists():
                raise ValueError(f"binary for {abi}: {b} does not exist")
            if isinstance(b, str) and Path(b).is_dir() and not self.program:
                raise ValueError(f"binary for {abi} is a directory: give 'program' (the executable inside it)")
        if not Path(self.model_dir).expanduser().is_dir():
            raise ValueError(f"model_dir {self.model_dir} is not a directory")
        return self


def _sha256(path: Path) -> str:
    from farm.zoo.cache import sha256_file

    return sha256_file(path)


def fetch(d: Download) -> Path:
    """A URL's file in farm's cache, verified by sha256 (kept by hash: fetched once per host)."""
    from farm.paths import cache_dir

    name = d.url.rstrip("/").rsplit("/", 1)[-1] or "binary"
    dest = cache_dir("prebuilt", d.sha256[:16]) / name
    if dest.is_file() and _sha256(dest) == d.sha256:
        return dest
    part = dest.with_suffix(dest.suffix + ".part")
    try:
        with urllib.request.urlopen(d.url, timeout=60) as resp, part.open("wb") as out:
            while chunk := resp.read(1 << 20):
                out.write(chunk)
    except OSError as exc:
        from farm.errors import InfraError

        raise InfraError(f"download {d.url}: {exc}") from exc
    got = _sha256(part)
    if got != d.sha256:
        part.unlink(missing_ok=True)
        raise ConfigError(f"download {d.url}: sha256 {got} is not the {d.sha256} the options name")
    part.replace(dest)
    return dest


def _tree(root: Path, role: str) -> list[Artifact]:
    """Every file under `root` as an artifact whose role carries its relative path (``role/rel/path``)."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    if not files:
        raise ConfigError(f"{root} holds no files")
    return [Artifact(f"{role}/{p.relative_to(root).as_posix()}", p, _sha256(p), executable=role == "engine")
            for p in files]


def tree_digest(artifacts: list[Artifact], role: str) -> str:
    """One sha256 for a directory: of its files' relative paths and hashes (what a result records)."""
    entries = sorted((a.role, a.sha256) for a in artifacts if a.role.startswith(role + "/"))
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


class PrebuiltBackend(Backend):
    """An engine farm runs but does not build. Subclasses set the class attributes and three methods."""

    Options: ClassVar[type[PrebuiltOptions]] = PrebuiltOptions
    engine: ClassVar[str] = ""  # provenance name ("MNN", "ExecuTorch", ...)
    definitions: ClassVar[str] = ""  # how this engine counts, recorded with every result
    has_depth: ClassVar[str | None] = None  # None: the engine has a KV-depth option; else why it has none
    loop_reps: ClassVar[bool] = False  # the engine has no repetition flag: farm runs it once per repetition

    def __init__(self, **options: Any) -> None:
        try:
            self.options = self.Options(**options)
        except ValidationError as exc:
            err = exc.errors()[0]
            where = ".".join(str(x) for x in err["loc"])
            raise ConfigError(f"{self.name} options{': ' + where if where else ''}: {err['msg']}") from None

    def accepts(self, job: Job, profile: DeviceProfile) -> tuple[bool, str]:
        if profile.abi not in self.options.binary:
            have = ", ".join(self.options.binary)
            return False, f"no {self.name} binary for ABI {profile.abi} (option binary has {have})"
        if job.n_depth and self.has_depth is not None:
            return False, f"depth {job.n_depth}: {self.has_depth}"
        return True, ""

    def prepare(self, job: Job, profile: DeviceProfile) -> Prepared:
        given = self.options.binary[profile.abi]
        path = fetch(given) if isinstance(given, Download) else Path(given).expanduser()
        engine = _tree(path, "engine") if path.is_dir() else [Artifact("engine", path, _sha256(path), executable=True)]
        model = _tree(Path(self.options.model_dir).expanduser(), "model")
        engine_sha = engine[0].sha256 if len(engine) == 1 else tree_digest(engine, "engine")
        return Prepared(artifacts=[*engine, *model], provenance={
            "engine": self.engine, "engine_sha256": engine_sha, "engine_build": engine_sha[:24],
            "engine_commit": self.options.engine_commit,
            "engine_source": given.url if isinstance(given, Download) else str(path), "target": profile.abi,
            "model_sha256": tree_digest(model, "model"), "model_dir": self.options.model_dir,
            "definitions": self.definitions})

    @abstractmethod
    def engine_argv(self, job: Job, exe: str, model_dir: str) -> list[str]:
        """The engine's own command line (one process; looped by farm when ``loop_reps``)."""

    @classmethod
    @abstractmethod
    def parse_text(cls, text: str, cell: tuple[int, int] | None = None) -> list[Measured]:
        """Every test the engine printed (also what ``farm ingest`` reads); JobError when nothing parses.
        `cell` = (prompt, generated) tokens asked, for engines that print rates without counts (MLC)."""

    def command(self, job: Job, staged: dict[str, str]) -> list[str]:
        """``sh -c`` a script that links the staged files back into their directories, then runs the engine."""
        cache = posixpath.dirname(next(iter(staged.values())))
        script: list[str] = []
        dirs: dict[str, str] = {}
        for role in ("engine", "model"):
            files = {r[len(role) + 1:]: p for r, p in staged.items() if r.startswith(role + "/")}
            if not files:
                continue
            digest = hashlib.sha256(json.dumps(sorted(files.items())).encode()).hexdigest()[:16]
            root = dirs[role] = posixpath.join(cache, "trees", f"{role}-{digest}")
            for rel, src in sorted(files.items()):
                dst = posixpath.join(root, rel)
                script.append(quote_argv(["mkdir", "-p", posixpath.dirname(dst)]))
                script.append(quote_argv(["ln", "-sf", src, dst]))
        exe = staged.get("engine") or posixpath.join(dirs["engine"], str(self.options.program))
        env = dict(self.options.env)
        if "engine" in dirs:  # shared libraries next to the binary
            env.setdefault("LD_LIBRARY_PATH", dirs["engine"])
        argv = [*self.engine_argv(job, exe, dirs["model"]), *self.options.args]
        run = quote_argv(["env", *(f"{k}={v}" for k, v in env.items()), *argv])
        if self.loop_reps:  # one process per repetition; the first `warmup` are dropped by parse
            n = int(job.warmup + job.repetitions)
            script.append(f"i=0; while [ $i -lt {n} ]; do echo {REP_MARK} $i; {run}; i=$((i+1)); done")
        else:
            script.append(f"exec {run}")
        return ["sh", "-c", "; ".join(["set -e", *script])]

    def parse(self, result: CommandResult, job: Job) -> BackendOutput:
        if result.exit_code != 0:
            tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
            raise JobError(f"{self.name} exited {result.exit_code}: {tail}")
        if self.loop_reps:
            chunks = re.split(rf"(?m)^{REP_MARK} \d+\n", result.stdout)[1:][job.warmup:]
            tests = [t for chunk in chunks for t in self.parse_text(chunk, (job.n_prompt, job.n_gen))]
        else:
            tests = self.parse_text(result.stdout, (job.n_prompt, job.n_gen))
        reps = self.repetitions_for(tests, job)
        raw = {"stdout": result.stdout[-RAW_LIMIT:], "stderr": result.stderr[-RAW_LIMIT:]}
        reported = [{"test": t.test, **t.reported} for t in tests]
        return BackendOutput(reps, raw=raw, provenance={"definitions": self.definitions, "reported": reported,
                                                         "raw_output": raw["stdout"]})

    def repetitions_for(self, tests: list[Measured], job: Job) -> list[Any]:
        """The job's repetitions from what the engine printed: by default the one test of the job's shape."""
        want = (job.n_prompt, job.n_gen, job.n_depth)
        found = [t for t in tests if (t.n_prompt, t.n_gen, t.n_depth) == want]
        if not found:
            have = ", ".join(t.test for t in tests) or "nothing"
            raise JobError(f"{self.name} did not report {job.test}: got {have}")
        return [r.model_copy(update={"rep": i}) for i, r in enumerate(x for t in found for x in t.repetitions)]


def join_phases(tests: list[Measured], n_prompt: int, n_gen: int, n_depth: int, engine: str) -> list[Any]:
    """Repetition i of a job = the i-th pp test's prefill + the i-th tg test's decode (engines that time the
    two phases as separate tests, as llama-bench does); a test of the job's own shape is taken whole."""
    from farm.jobs import Repetition

    whole = [r for t in tests if (t.n_prompt, t.n_gen, t.n_depth) == (n_prompt, n_gen, n_depth) for r in t.repetitions]
    if whole:
        return [r.model_copy(update={"rep": i}) for i, r in enumerate(whole)]
    pp = [r for t in tests if (t.n_prompt, t.n_gen, t.n_depth) == (n_prompt, 0, n_depth) for r in t.repetitions]
    tg = [r for t in tests if (t.n_prompt, t.n_gen, t.n_depth) == (0, n_gen, n_depth) for r in t.repetitions]
    if (n_prompt and not pp) or (n_gen and not tg):
        have = ", ".join(t.test for t in tests) or "nothing"
        raise JobError(f"{engine} did not report the prefill of {n_prompt} and the decode of {n_gen}: got {have}")
    reps = []
    for i in range(max(len(pp), len(tg))):
        p = pp[i] if i < len(pp) else None
        g = tg[i] if i < len(tg) else None
        reps.append(Repetition(rep=i, n_prompt=n_prompt if p else 0, n_gen=n_gen if g else 0,
                               prefill_s=p.prefill_s if p else None, decode_s=g.decode_s if g else None,
                               ttft_s=p.ttft_s if p else None,
                               peak_rss_bytes=max((x.peak_rss_bytes or 0 for x in (p, g) if x), default=0) or None))
    return reps


def rate_rep(n_prompt: int, n_gen: int, prefill_tps: float | None, decode_tps: float | None, **more: Any) -> Any:
    """One repetition from an engine's rates: seconds = tokens / rate, so farm's t/s equals the engine's."""
    from farm.jobs import Repetition

    pre = n_prompt / prefill_tps if n_prompt and prefill_tps else None
    dec = n_gen / decode_tps if n_gen and decode_tps else None
    more.setdefault("ttft_s", pre)
    return Repetition(rep=0, n_prompt=n_prompt if pre else 0, n_gen=n_gen if dec else 0, prefill_s=pre,
                      decode_s=dec, **more)
