"""The agent's configuration file (``agents/agent.yaml``): who the agent is and where everything lives.

One agent runs on one host and owns the devices attached to it. The file names the executor it
serves (celery or ray), the broker or Ray head, the store, its devices (inline or an inventory
file), its spool directory and the timing of heartbeats and leases.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from farm.devices import Inventory, check_inventory, load_inventory
from farm.errors import ConfigError
from farm.paths import data_dir
from farm.yamlio import load_yaml, validate

CONFIG_ENV = "FARM_AGENT_CONFIG"  # Ray workers find their agent's config through this


class AgentConfig(BaseModel):
    """An agent.yaml."""

    # strict: `heartbeat_s: "5"` or `lease_s: .inf` is a mistake, not a value
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    name: str = Field(default_factory=socket.gethostname, pattern=r"^[A-Za-z0-9_.@-]+$")
    executor: Literal["celery", "ray"] = "celery"
    broker_url: str = Field(default_factory=lambda: os.environ.get("FARM_BROKER_URL", "redis://127.0.0.1:6379/0"))
    store_url: str | None = None  # None: $FARM_DB_URL, else the local SQLite store
    ray_address: str = Field(default_factory=lambda: os.environ.get("FARM_RAY_ADDRESS", "127.0.0.1:6379"))
    ray_node_ip: str | None = None  # the address this node advertises (default: Ray's guess)
    devices: str | Inventory = Field(default_factory=Inventory)
    spool_dir: str | None = None  # None: <data dir>/spool/<name>
    heartbeat_s: float = Field(default=5.0, gt=0, description="device and job-lease heartbeat period")
    lease_s: float = Field(default=60.0, gt=0, description="a job whose agent is silent this long is re-queued")
    reap_s: float = Field(default=5.0, gt=0, description="how often this agent looks for jobs of silent agents")
    visibility_timeout_s: float = Field(default=6 * 3600, gt=0,
                                        description="Redis redelivery of unacked jobs; above the longest job")
    unacked_restore_s: float = Field(default=60.0, gt=0)
    source: str = ""  # the file it came from, so relative paths resolve beside it

    @model_validator(mode="after")
    def _lease_above_heartbeat(self) -> AgentConfig:
        if self.lease_s < 2 * self.heartbeat_s:
            raise ValueError(f"lease_s ({self.lease_s}) must be at least twice heartbeat_s ({self.heartbeat_s})")
        if self.visibility_timeout_s < self.lease_s:
            raise ValueError("visibility_timeout_s must exceed lease_s")
        return self

    def inventory(self) -> Inventory:
        if isinstance(self.devices, Inventory):
            inv = self.devices
        else:
            path = Path(self.devices)
            if not path.is_absolute() and self.source:
                path = Path(self.source).parent / path
            inv = load_inventory(path)
            # load_inventory adds the coordinator's implicit `local`; an agent owns only what it lists.
            inv = inv.model_copy(update={"devices": [d for d in inv.devices if d.name != "local" or
                                                     d.profile != "host-auto"]})
        if not inv.devices:
            raise ConfigError(f"{self.source or 'agent config'}: the agent lists no devices")
        base = Path(self.source).parent if self.source else Path.cwd()
        dirs = [d if Path(d).is_absolute() else str(base / d) for d in inv.profile_dirs]
        return inv.model_copy(update={"profile_dirs": dirs})

    def spool_path(self) -> Path:
        path = Path(self.spool_dir) if self.spool_dir else data_dir() / "spool" / self.name
        path.mkdir(parents=True, exist_ok=True)
        return path


def load_agent_config(path: str | Path | None = None) -> AgentConfig:
    """Read an agent.yaml (or the one named by $FARM_AGENT_CONFIG) with file:line errors."""
    path = path or os.environ.get(CONFIG_ENV)
    if not path:
        raise ConfigError(f"no agent config: pass --config or set ${CONFIG_ENV}")
    data, loc = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: an agent config is a mapping (name, executor, devices, ...)")
    cfg = validate(AgentConfig, data, loc)
    cfg = cfg.model_copy(update={"source": str(Path(path).resolve())})
    if isinstance(cfg.devices, Inventory):  # an inline inventory is checked like a devices.yaml
        check_inventory(cfg.inventory(), loc)
    return cfg
