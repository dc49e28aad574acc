"""Bad input, through the CLI a user types: exit 2, exactly one line on stderr, no traceback, nothing stored.

One table per class of mistake (issue 13): malformed YAML files, loose types and repeated entries in a
sweep, inventories, plug-in options (plus the contract test over every registered plug-in), the store URL
and output paths and missing extras, errors found while planning, untrusted text on the terminal, and
run-id prefixes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

SWEEP = """\
version: 1
name: bad-input
models: [farm-tiny]
quants: [q4_0]
prompt_tokens: [8]
gen_tokens: [8]
"""

INVENTORY = """\
devices:
  - name: board1
    profile: raspberry-pi-5
    transport:
      kind: ssh
      host: 127.0.0.1
      port: 2222
"""


def farm(*args: str, env: dict[str, str] | None = None, cwd: Path = REPO,
         timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "farm.cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, "COLUMNS": "200", **(env or {})})


def one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """The promise: exit 2, one line on stderr naming the problem, no traceback anywhere."""
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def nothing_stored(db: Path) -> None:
    """A store untouched by a refused command: no file, or no run in it."""
    if db.exists():
        from farm.store import Store

        assert Store(f"sqlite:///{db}").runs() == []


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


def alias_bomb() -> str:
    """Ten levels of ten aliases: 10^10 strings once expanded ("billion laughs")."""
    lines = ['x0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"x{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    return SWEEP + "backends:\n  - name: reference\n    options:\n" + "".join(f"      {ln}\n" for ln in lines)


# -- 1. YAML files ------------------------------------------------------------------------------------

YAML_FILES = [
    ("utf16", SWEEP.encode("utf-16"), ":1: the file is UTF-16"),
    ("latin1", SWEEP.replace("bad-input", "caf\xe9").encode("latin-1"), ":2: not UTF-8"),
    ("binary", b"\x7fELF\x02\x01\x01\x00" + bytes(range(256)) * 4, "not UTF-8"),
    ("nul", (SWEEP + "\x00\n").encode(), ":7: a NUL byte"),
    ("huge", (SWEEP + "#" * 100 + "\n") .encode() * 50_000, "larger than 4 MiB"),
    ("duplicate-key", SWEEP + "repetitions: 3\nwarmup: 1\nrepetitions: 4\n", ":9: duplicate key 'repetitions' "
                                                                             "(first at line 7)"),
    ("alias-bomb", alias_bomb(), "aliases expand to more than 200,000 values"),
    ("deep", SWEEP + "include: " + "[" * 200 + "]" * 200 + "\n", ":7: nested deeper than 64 levels"),
    ("python-tag", SWEEP + "description: !!python/object/apply:os.system ['true']\n", ":7: invalid YAML"),
]


@pytest.mark.parametrize(("content", "expected"), [c[1:] for c in YAML_FILES], ids=[c[0] for c in YAML_FILES])
def test_a_malformed_sweep_file_is_one_line(tmp_path: Path, content: str | bytes, expected: str) -> None:
    sweep = write(tmp_path / "s.yaml", content)
    db = tmp_path / "farm.db"
    proc = farm("submit", str(sweep), "--db", f"sqlite:///{db}", timeout=60)  # the bomb used to take 8 GB, 90 s
    one_line_error(proc, f"{sweep}", expected)
    nothing_stored(db)


INVENTORY_FILES = [c for c in YAML_FILES if c[0] in ("utf16", "binary", "duplicate-key", "alias-bomb", "deep")]


@pytest.mark.parametrize(("content", "expected"), [c[1:] for c in INVENTORY_FILES], ids=[c[0] for c in INVENTORY_FILES])
def test_a_malformed_inventory_file_is_one_line(tmp_path: Path, content: str | bytes, expected: str) -> None:
    if isinstance(content, str):
        content = content.replace(SWEEP, "devices: []\n" + "\n" * 5)  # the same mistakes, inventory-shaped
    inv = write(tmp_path / "devices.yaml", content)
    one_line_error(farm("devices", "--devices", str(inv), "--db", f"sqlite:///{tmp_path / 'f.db'}"), str(inv), expected)


# -- 2. loose types and repeated entries in a sweep ------------------------------------------------------

SWEEP_VALUES = [
    ("threads-bool", "threads: [true]", ":7: threads[0]: True: Input should be a valid integer"),
    ("reps-string", "repetitions: '5'", ":7: repetitions: '5': Input should be a valid integer"),
    ("power-string", "power: 'false'", ":7: power: 'false': Input should be a valid boolean"),
    ("cooldown-string", "cooldown_s: '1'", ":7: cooldown_s: '1': Input should be a valid number"),
    ("quant-twice", "quants: [q4_0, q8_0, q4_0]", "quants[2]: 'q4_0' is listed twice (first as quants[0])"),
    ("model-twice", "models: [farm-tiny, farm-mini, farm-tiny]", "models[2]: 'farm-tiny' is listed twice"),
    ("threads-twice", "threads: [1, 2, 1]", ":7: threads[2]: 1 is listed twice"),
    ("pp-twice", "prompt_tokens: [8, 8]", "prompt_tokens[1]: 8 is listed twice"),
    ("device-twice", "devices: [local, local]", ":7: devices[1]: 'local' is listed twice"),
    ("backend-twice", "backends: [reference, {name: reference}]", ":7: backends[1]: 'reference' is listed twice"),
    ("rule-bool", "exclude: [{threads: true}]", ":7: exclude: rule threads: True is not an integer"),
    ("rule-int", "include: [{quant: 4}]", ":7: include: rule quant: 4 is not a string"),
    ("tokens-huge", "prompt_tokens: [99999999999999999999]", ":6: prompt_tokens[0]: 99999999999999999999: Input "
                                                             "should be less than or equal to 1048576"),
    ("cooldown-inf", "cooldown_s: .inf", ":7: cooldown_s: Input should be a finite number"),  # slept forever
    ("bad-date", "description: 2024-13-45", ":7: invalid YAML value: month must be in 1..12"),
]


@pytest.mark.parametrize(("line", "expected"), [c[1:] for c in SWEEP_VALUES], ids=[c[0] for c in SWEEP_VALUES])
def test_sweep_types_are_strict_and_entries_unique(tmp_path: Path, line: str, expected: str) -> None:
    key = line.split(":")[0]
    text = "".join(ln + "\n" for ln in SWEEP.splitlines() if not ln.startswith(key + ":")) + line + "\n"
    sweep = write(tmp_path / "s.yaml", text)
    db = tmp_path / "farm.db"
    one_line_error(farm("submit", str(sweep), "--db", f"sqlite:///{db}"), str(sweep), expected)
    nothing_stored(db)


# -- 3. inventories ---------------------------------------------------------------------------------

INVENTORIES = [
    ("port-range", ("port: 2222", "port: 99999"), ":7: transport 'ssh': port: 99999: Input should be less than"),
    ("port-string", ("port: 2222", "port: '22'"), ":7: transport 'ssh': port: '22': Input should be a valid integer"),
    ("kind", ("kind: ssh", "kind: telnet"), ":5: transport.kind: 'telnet' is not one of adb, local, ssh"),
    ("profile", ("raspberry-pi-5", "raspberry-pi-9"), ":3: unknown device profile 'raspberry-pi-9'"),
    ("insecure-string", ("port: 2222", "port: 2222\n      insecure_accept_any_host_key: 'false'"),
     ":8: transport 'ssh': insecure_accept_any_host_key: 'false': Input should be a valid boolean"),
    ("transport-typo", ("port: 2222", "port: 2222\n      known_host: /etc/ssh/known"),
     ":8: transport 'ssh': unknown option 'known_host'; known: host, port"),
    ("jump-typo", ("port: 2222", "port: 2222\n      jump: {host: gw, prot: 22}"), ":8: transport 'ssh': jump.prot"),
    ("entry-typo", ("    profile:", "    tag: [x]\n    profile:"), ":3: devices[0].tag: unknown key 'tag'"),
    ("adb-typo", ("kind: ssh\n      host: 127.0.0.1\n      port: 2222",
                  "kind: adb\n      serial: X\n      adb_prot: 1"),
     ":7: transport 'adb': unknown option 'adb_prot'; known: serial, adb_host, adb_port"),
    ("name-twice", ("", "  - name: board1\n    profile: x86-host\n"), ":8: device name 'board1' is used twice"),
    ("tags-int", ("    profile:", "    tags: [1]\n    profile:"), ":3: devices[0].tags[0]: 1: Input should be a valid"),
]


@pytest.mark.parametrize(("edit", "expected"), [c[1:] for c in INVENTORIES], ids=[c[0] for c in INVENTORIES])
def test_an_inventory_is_checked_whole_at_load(tmp_path: Path, edit: tuple[str, str], expected: str) -> None:
    text = INVENTORY + edit[1] if edit[0] == "" else INVENTORY.replace(edit[0], edit[1], 1)
    inv = write(tmp_path / "devices.yaml", text)
    sweep = write(tmp_path / "s.yaml", SWEEP + "devices: [local]\n")  # the bad device is not even selected
    db = tmp_path / "farm.db"
    # every command that reads an inventory: `farm devices` for each case, `submit` and `plan` for two
    commands = [["devices", "--devices", str(inv), "--db", f"sqlite:///{db}"]]
    if edit[1] in ("port: 99999", "raspberry-pi-9"):
        commands += [["submit", str(sweep), "--devices", str(inv), "--db", f"sqlite:///{db}"],
                     ["plan", str(sweep), "--devices", str(inv)]]
    for args in commands:
        one_line_error(farm(*args), f"{inv}{expected}" if expected.startswith(":") else expected)
    nothing_stored(db)


# -- 4. plug-in options -------------------------------------------------------------------------------

def registries():  # type: ignore[no-untyped-def]
    from farm.backends import BACKENDS
    from farm.power import POWER_SOURCES
    from farm.transports import TRANSPORTS

    return [(reg, name) for reg in (TRANSPORTS, BACKENDS, POWER_SOURCES) for name in reg.names()]


@pytest.mark.parametrize(("registry", "name"), registries(), ids=lambda v: getattr(v, "kind", v))
def test_every_registered_plugin_refuses_an_unknown_option(registry, name: str) -> None:  # type: ignore[no-untyped-def]
    """The contract: each plug-in declares its options (a strict pydantic model) and names them when refusing."""
    from farm.errors import ConfigError
    from farm.registry import PluginOptions

    model = registry.get(name).Options
    assert issubclass(model, PluginOptions) and model.model_config["extra"] == "forbid"
    with pytest.raises(ConfigError) as err:
        registry.options(name, {"no_such_option": 1})
    msg = str(err.value)
    assert f"{registry.kind} {name!r}: unknown option 'no_such_option'; known: " in msg
    assert all(field in msg for field in model.model_fields)
    if "\n" in msg:
        pytest.fail(msg)


REF = "backends:\n  - name: reference\n    options: "
PLUGIN_OPTIONS = [
    ("backend-typo", "backends:\n  - name: sleep\n    options: {second: 1}\n",
     ":10: backend 'sleep': unknown option 'second'; known: seconds, exit_code"),
    ("backend-type", "backends:\n  - name: sleep\n    options: {seconds: '1'}\n",
     ":10: backend 'sleep': seconds: '1': Input should be a valid number"),
    ("flags-wrapper", REF + "\n      flags: [-O2, -wrapper, '/bin/sh,-c,touch pwned']\n",
     ":11: backend 'reference': flags: compiler flag '-wrapper' is not allowed"),
    ("flags-B", REF + "{flags: [-B/tmp/evil]}\n", "flag '-B/tmp/evil' is not allowed"),
    ("flags-at", REF + "{flags: ['@/tmp/args']}\n", "flag '@/tmp/args' is not"),
    ("flags-specs", REF + "{flags: [-specs=/tmp/x]}\n", "'-specs=/tmp/x' is not"),
    ("flags-plugin", REF + "{flags: [-fplugin=/tmp/x.so]}\n", "'-fplugin=/tmp/x.so'"),
    ("cmake-launcher", "backends:\n  - name: llamacpp\n    options: {flags: [-DCMAKE_C_COMPILER_LAUNCHER=/bin/sh]}\n",
     ":10: backend 'llamacpp': flags: cmake flag '-DCMAKE_C_COMPILER_LAUNCHER=/bin/sh' is not allowed"),
    ("cmake-script", "backends:\n  - name: llamacpp\n    options: {flags: [-C, /tmp/x.cmake]}\n", "cmake flag '-C'"),
    ("llamacpp-isa", "backends:\n  - name: llamacpp\n    options: {isa: avx9}\n", "isa: 'avx9' is not one of"),
    ("lockstep-typo", REF + "{lockstep_with: {flag: []}}\n",
     "backend 'reference': lockstep_with.flag: unknown key 'flag'"),
]


@pytest.mark.parametrize(("block", "expected"), [c[1:] for c in PLUGIN_OPTIONS], ids=[c[0] for c in PLUGIN_OPTIONS])
def test_backend_options_in_a_sweep(tmp_path: Path, block: str, expected: str) -> None:
    sweep = write(tmp_path / "s.yaml", SWEEP + "devices: [local]\n" + block)
    db = tmp_path / "farm.db"
    one_line_error(farm("submit", str(sweep), "--db", f"sqlite:///{db}"), str(sweep), expected)
    nothing_stored(db)
    assert not (tmp_path / "pwned").exists() and not (REPO / "pwned").exists()


def test_allowed_compiler_flags_pass(tmp_path: Path) -> None:
    sweep = write(tmp_path / "s.yaml", SWEEP + "backends:\n  - name: reference\n    options:\n"
                  "      flags: [-O2, -march=x86-64-v2, -mtune=generic, -DFARM_SCALAR, -fno-tree-vectorize, -mavx2]\n")
    proc = farm("plan", str(sweep))
    assert proc.returncode == 0, proc.stderr


def test_power_options_are_checked_with_the_profile_line(tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    text = (REPO / "device_profiles" / "raspberry-pi-5.yaml").read_text()
    write(profiles / "my-pi.yaml", text.replace("    command: vcgencmd", "    comand: vcgencmd"))
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if "command: vcgencmd" in ln)
    inv = write(tmp_path / "devices.yaml", INVENTORY.replace("raspberry-pi-5", "my-pi") + "profile_dirs: [profiles]\n")
    one_line_error(farm("devices", "--devices", str(inv), "--db", f"sqlite:///{tmp_path / 'f.db'}"),
                   f"my-pi.yaml:{line}: power source 'rpi5_pmic': unknown option 'comand'; known: root, max_rate_hz")
    write(profiles / "my-pi.yaml", text.replace("source: rpi5_pmic", "source: rpi5_pmik"))
    one_line_error(farm("devices", "--devices", str(inv), "--db", f"sqlite:///{tmp_path / 'f.db'}"),
                   "my-pi.yaml:", "power.source: 'rpi5_pmik' is not one of")


# -- 5. environment: store URL, output paths, missing extras ---------------------------------------------

@pytest.mark.parametrize(("url", "expected"), [
    ("mysql://root@127.0.0.1/test", "'mysql' databases are not supported; use sqlite:///PATH or postgresql://"),
    ("sqlite:///", "names no file"),
    ("sqlite://", "names no file"),
    ("sqlite:///:memory:", "names no file"),
    ("redis://127.0.0.1:6379/0", "'redis' databases are not supported"),
    ("postgresql+psycopg2://postgres@127.0.0.1/postgres", "its driver is not installed"),
    ("not a url", "is not a database URL"),
])
def test_a_bad_store_url_is_one_line(tmp_path: Path, url: str, expected: str) -> None:
    for args in (["runs"], ["status", "x"], ["submit", str(write(tmp_path / "s.yaml", SWEEP))]):
        one_line_error(farm(*args, env={"FARM_DB_URL": url}, timeout=60), expected)


@pytest.mark.parametrize(("args", "expected"), [
    (["results", "RUN", "--format", "parquet", "-o", "/no/such/dir/x.parquet"], "directory '/no/such/dir' does not"),
    (["results", "RUN", "--format", "csv", "-o", "/no/such/dir/x.csv"], "/no/such/dir/x.csv: directory"),
    (["report", "RUN", "--html", "/no/such/dir/r.html"], "directory '/no/such/dir' does not exist"),
])
def test_an_unwritable_output_path_is_one_line(tmp_path: Path, args: list[str], expected: str) -> None:
    one_line_error(farm(*args, "--db", f"sqlite:///{tmp_path / 'farm.db'}"), expected)


def test_executor_ray_without_ray_says_what_to_install(tmp_path: Path) -> None:
    """Ray is installed here, so the subprocess is given a sitecustomize that makes `import ray` fail."""
    shim = tmp_path / "shim"
    shim.mkdir()
    write(shim / "sitecustomize.py", "import sys\n\nclass _NoRay:\n"
          "    def find_spec(self, name, path=None, target=None):\n"
          "        if name == 'ray' or name.startswith('ray.'):\n"
          "            raise ModuleNotFoundError(\"No module named 'ray'\", name='ray')\n\n"
          "sys.meta_path.insert(0, _NoRay())\n")
    sweep = write(tmp_path / "s.yaml", SWEEP)
    db = tmp_path / "farm.db"
    pythonpath = os.pathsep.join([str(shim), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = farm("submit", str(sweep), "--executor", "ray", "--db", f"sqlite:///{db}", env={"PYTHONPATH": pythonpath})
    one_line_error(proc, "executor 'ray' needs the Python package 'ray'", "pip install 'farm[ray]'")
    nothing_stored(db)


# -- 6. errors found while planning name the sweep's line ------------------------------------------------

def test_planning_errors_name_the_sweep_line(tmp_path: Path) -> None:
    junk = write(tmp_path / "junk.gguf", b"GGUF" + os.urandom(64))
    cases = [
        ("devices: [local, tag:gpu]\n", ":7: devices[1]: device selector 'tag:gpu' matches no device"),
        ("devices: [rack:3]\n", ":7: devices[0]: device selector 'rack:3': use NAME, profile:NAME or tag:NAME"),
        (SWEEP.replace("models: [farm-tiny]", "models:\n  - card: farm-tiny\n    vary: {n_heads: [7]}"),
         ":5: models[0].vary: farm-tiny[n_heads=7]: invalid architecture"),
        (SWEEP.replace("models: [farm-tiny]", f"models:\n  - file: {junk}"), f":4: models[0].file: {junk}: not a "
                                                                            f"readable GGUF file"),
    ]
    for text, expected in cases:
        sweep = write(tmp_path / "s.yaml", text if text.startswith("version") else SWEEP + text)
        db = tmp_path / "farm.db"
        for args in (["plan", str(sweep)], ["submit", str(sweep), "--db", f"sqlite:///{db}"]):
            one_line_error(farm(*args), f"{sweep}{expected}")
        nothing_stored(db)


def test_a_sha256_mismatch_or_a_truncated_gguf_names_the_line(tmp_path: Path) -> None:
    from farm.zoo.files import resolve_model

    model = resolve_model("farm-tiny", "q4_0")
    sweep = write(tmp_path / "s.yaml", SWEEP.replace("models: [farm-tiny]", f"models:\n  - file: {model.path}\n"
                                                                              f"    sha256: {'a' * 64}"))
    one_line_error(farm("plan", str(sweep)), f"{sweep}:5: models[0].sha256:", "sha256 mismatch")
    # a real GGUF cut short (a copy interrupted mid-way): gguf's reader fails with an IndexError inside numpy
    cut = write(tmp_path / "cut.gguf", Path(model.path).read_bytes()[:5000])
    sweep = write(tmp_path / "s.yaml", SWEEP.replace("models: [farm-tiny]", f"models:\n  - file: {cut}"))
    one_line_error(farm("plan", str(sweep)), f"{sweep}:4: models[0].file: {cut}: not a readable GGUF file")


# -- 7. untrusted text on the terminal, and run-id prefixes ---------------------------------------------

def test_markup_in_names_prints_literally_and_a_run_id_prefix_is_literal(tmp_path: Path) -> None:
    hostile = "i3[/bold]"
    inv = write(tmp_path / "devices.yaml", f"devices:\n  - name: '{hostile}'\n    profile: host-auto\n"
                                           f"    tags: ['[red]t']\n")
    db = f"sqlite:///{tmp_path / 'farm.db'}"
    listed = farm("devices", "--devices", str(inv), "--db", db)
    assert listed.returncode == 0 and hostile in listed.stdout and "Traceback" not in listed.stderr, listed.stderr
    checked = farm("devices", "--devices", str(inv), "--db", db, "check", hostile)
    assert checked.returncode in (0, 1), checked.stdout + checked.stderr
    assert f"{hostile:<16} reachable" in checked.stdout, checked.stdout
    # sleep workload: this test is about what is printed, so the cool-down gate and power sampling are off
    sweep = write(tmp_path / "s.yaml", "version: 1\nname: markup\nmodels: [farm-tiny]\nquants: [q4_0]\n"
                                       f"devices: ['{hostile}']\nbackends: [{{name: sleep, options: {{seconds: 0}}}}]\n"
                                       "prompt_tokens: [1]\ngen_tokens: [1]\nrepetitions: 1\nwarmup: 0\n"
                                       "thermal_gate: false\npower: false\nidle_s: 0\n")  # only printing is judged here
    run = farm("submit", str(sweep), "--devices", str(inv), "--db", db)
    assert run.returncode == 0 and "Traceback" not in run.stderr, run.stdout + run.stderr
    assert hostile in run.stdout
    run_id = re.search(r"run (\d{8}-\d{6}-[0-9a-f]{4})", run.stdout).group(1)  # type: ignore[union-attr]
    for wildcard in ("%", "_", run_id[:4] + "%", "________"):
        one_line_error(farm("status", wildcard, "--db", db), f"no run {wildcard!r}")
    assert farm("status", run_id[:10], "--db", db).returncode == 0


def test_dashboard_that_cannot_listen_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        one_line_error(farm("dashboard", "--port", str(port), "--db", f"sqlite:///{tmp_path / 'f.db'}"),
                       f"cannot listen on 127.0.0.1:{port}: Address already in use")
    one_line_error(farm("dashboard", "--host", "192.0.2.1", "--port", "0", "--db", f"sqlite:///{tmp_path / 'f.db'}"),
                   "cannot listen on 192.0.2.1:0: Cannot assign requested address")  # TEST-NET-1: never local
