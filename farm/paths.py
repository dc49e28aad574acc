"""Where farm keeps its files: the store, caches of engine builds and models, agent spools.

``FARM_HOME`` overrides everything (tests point it at a temp dir); otherwise the platform's user
data and cache directories are used.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    home = os.environ.get("FARM_HOME")
    path = Path(home) / "data" if home else Path(platformdirs.user_data_dir("farm"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir(*parts: str) -> Path:
    home = os.environ.get("FARM_HOME")
    path = Path(home) / "cache" if home else Path(platformdirs.user_cache_dir("farm"))
    path = path.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
