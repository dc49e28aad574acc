"""Session fixtures for tests that need virtual devices, registered once in tests/conftest.py.

Never import `lab` into a test module: pytest makes every module that imports a session fixture its own
definition, so each such module started (and kept until the session ended) a lab of its own; three labs,
nine virtual devices and their power feeders, were seen slowing the rest of a CI run to a crawl.

    def test_x(lab, lab_transport):
        phone = lab_transport("phone1")            # an AdbTransport through the lab's adb server
        board = lab_transport("board1")            # an SshTransport to the lab's real sshd
        inventory = lab.inventory_path             # devices.yaml for farm.devices.load_inventory

``lab`` is one Lab for the whole session: two phones (lab-pixel-8, lab-galaxy-s24) behind a
private real adb server and one board (lab-jetson-orin-nano) behind a real sshd. Their power
sensors (phones' fuel gauges, the board's INA3221 rails and tegrastats) follow idle + load of
each device's own processes (``lab.device(name).feed``). A test that kills a device must bring it
back (``lab.restart_phone``). Missing adb/sshd/qemu or root: skip locally, fail under ``CI=true``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from farm.transports import Transport, open_transport
from tests.support import need


def need_lab_tools() -> None:
    from farm.lab import tools_missing

    missing = tools_missing()
    need(not missing, "farm lab tools (" + ", ".join(missing) + ")")


@pytest.fixture(scope="session")
def lab() -> Iterator[object]:
    """The session's virtual lab (farm.lab.Lab), started once."""
    need_lab_tools()
    from farm.lab import Lab

    root = Path(tempfile.mkdtemp(prefix="farm-lab-"))
    with Lab(root, phones=2, boards=1) as running:
        yield running


@pytest.fixture(scope="session")
def lab_transport(lab) -> Iterator[Callable[[str], Transport]]:
    """Open (and cache) a transport to a lab device by name, with its inventory options."""
    opened: dict[str, Transport] = {}

    def get(name: str) -> Transport:
        if name not in opened:
            dev = lab.device(name)
            options = {k: v for k, v in dev.transport.items() if k != "kind"}
            opened[name] = open_transport(dev.transport["kind"], **options)
        return opened[name]

    yield get
    for t in opened.values():
        t.close()


def aarch64_hello(tmp: Path) -> Path:
    """A static aarch64 program (exit 3, prints its pointer size), as farm's engine is built."""
    import shutil
    import subprocess

    need(shutil.which("aarch64-linux-gnu-gcc") is not None, "aarch64-linux-gnu-gcc")
    src = tmp / "hello.c"
    src.write_text('#include <stdio.h>\nint main(void){printf("aarch64 %d\\n",(int)sizeof(void*));return 3;}\n')
    out = tmp / "hello-aarch64"
    subprocess.run(["aarch64-linux-gnu-gcc", "-O2", "-static", str(src), "-o", str(out)], check=True)
    return out
