"""docker-compose.yml, checked the way `docker compose config` would check it, without a Docker engine.

The file is validated against the Compose Specification's JSON schema (tests/data/compose_spec.json,
from docker-compose 1.29.2, Apache-2.0), then for what the schema cannot see: services, volumes and
bind-mount sources that exist, a built image for every service that uses it, and farm commands and
config files that farm itself accepts.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import click
import jsonschema
import pytest
import yaml

from farm.agent.config import load_agent_config
from farm.cli.main import cli

REPO = Path(__file__).resolve().parent.parent
IMAGE_ROOT = "/opt/farm"  # WORKDIR of the Dockerfile, where the repo's files land


def problems(doc: dict[str, Any], root: Path = REPO) -> list[str]:
    """Everything `docker compose config` (and farm) would refuse in `doc`; empty when it is sound."""
    schema = json.loads((REPO / "tests" / "data" / "compose_spec.json").read_text())
    out = [f"{'.'.join(map(str, e.path)) or '<top>'}: {e.message}"
           for e in jsonschema.Draft7Validator(schema).iter_errors(doc)]
    if out:
        return out
    services: dict[str, dict[str, Any]] = doc.get("services", {})
    volumes = set(doc.get("volumes") or {})
    built = {svc.get("image", name) for name, svc in services.items() if "build" in svc}
    for name, svc in services.items():
        deps = svc.get("depends_on") or {}
        out += [f"{name}: depends on unknown service {d}" for d in deps if d not in services]
        for vol in svc.get("volumes") or []:
            src = vol.split(":")[0] if isinstance(vol, str) else vol.get("source", "")
            if src.startswith((".", "/")):
                if not (root / src).exists():
                    out.append(f"{name}: bind mount source {src} does not exist")
            elif src not in volumes:
                out.append(f"{name}: volume {src} is not declared")
        build = svc.get("build")
        if build is not None:
            context = root / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            if not (context / dockerfile).is_file():
                out.append(f"{name}: no {dockerfile} in build context {context}")
        image = svc.get("image", "")
        if image.startswith("farm:"):
            if image not in built:
                out.append(f"{name}: image {image} is built by no service")
            out += [f"{name}: {p}" for p in _farm_command(svc, root)]
    return out


def _farm_command(svc: dict[str, Any], root: Path) -> list[str]:
    """The service's command parses with farm's CLI, and the files it names load with farm's loaders."""
    # paths inside the image are the repo's files (the Dockerfile copies them to IMAGE_ROOT)
    args = [str(root / Path(str(a)).relative_to(IMAGE_ROOT)) if str(a).startswith(IMAGE_ROOT + "/") else str(a)
            for a in svc.get("command") or []]
    try:
        ctx = cli.make_context("farm", list(args), resilient_parsing=False)
        name, cmd, rest = cli.resolve_command(ctx, args)
        assert cmd is not None
        while isinstance(cmd, click.Group):  # e.g. `agent start`
            sub = cmd.make_context(name or "", rest, parent=ctx)
            name, cmd, rest = cmd.resolve_command(sub, rest)
            assert cmd is not None
        cmd.make_context(name or "", rest, parent=ctx)
    except (click.ClickException, AssertionError) as exc:
        return [f"farm {' '.join(args)}: {exc}"]
    found = []
    if "--config" in args:
        path = Path(args[args.index("--config") + 1])
        try:
            load_agent_config(path).inventory()
        except Exception as exc:  # any failure to load is the finding
            found.append(f"agent config {path}: {exc}")
    devices = (svc.get("environment") or {}).get("FARM_DEVICES")
    if devices and not (root / Path(devices).relative_to(IMAGE_ROOT)).is_file():
        found.append(f"FARM_DEVICES {devices} is not in the image")
    return found


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_file_is_valid(compose: dict[str, Any]) -> None:
    assert problems(compose) == []
    assert {"redis", "postgres", "coordinator", "agent"} <= set(compose["services"])


@pytest.mark.parametrize("mutate, expect", [
    (lambda d: d["services"]["agent"].update(restart_policy="always"), "restart_policy"),
    (lambda d: d["services"]["agent"]["depends_on"].update(broker={"condition": "service_started"}),
     "unknown service broker"),
    (lambda d: d["services"]["agent"].update(volumes=["spool:/home/farm/.farm"]), "volume spool is not declared"),
    (lambda d: d["services"]["grafana"]["volumes"].append("./nowhere:/x:ro"), "nowhere does not exist"),
    (lambda d: d["services"]["coordinator"].update(command=["coordinator", "--lease-s", "60"]), "--lease-s"),
    (lambda d: d["services"]["agent"].update(command=["agent", "start", "--config", "/opt/farm/agents/x.yaml"]),
     "x.yaml"),
    (lambda d: d["services"]["coordinator"].pop("build"), "built by no service"),
])
def test_the_check_catches_broken_files(compose: dict[str, Any], mutate: Any, expect: str) -> None:
    broken = copy.deepcopy(compose)
    mutate(broken)
    found = problems(broken)
    assert any(expect in p for p in found), found
