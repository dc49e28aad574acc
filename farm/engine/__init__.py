"""The bundled reference engine: portable C sources in `src/`, built for the host or aarch64 by `build`."""

from farm.engine.build import PROGRAMS, TARGETS, EngineBuild, build, build_info

__all__ = ["PROGRAMS", "TARGETS", "EngineBuild", "build", "build_info"]
