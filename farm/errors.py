"""The one error family of farm.

Every error that reaches the user is a ``FarmError``; its class says who must act:

- ``ConfigError``: the user's input is wrong (exit 2, nothing was executed).
- ``InfraError``: a device, agent, transport or service failed; the job may be retried elsewhere
  and the failure counts towards quarantining the device.
- ``JobError``: the benchmark itself failed (crash, OOM, timeout); stored as a failed result, data.

Anything else escaping is a bug. The CLI catches these in one place.
"""

from __future__ import annotations


class FarmError(Exception):
    """Base of every error farm reports to a user."""

    error_class = "bug"
    exit_code = 1


class ConfigError(FarmError):
    """Bad user input: a sweep, a profile, a flag. Nothing was executed."""

    error_class = "config"
    exit_code = 2


class InfraError(FarmError):
    """A device, transport, agent or service failed; retry elsewhere."""

    error_class = "infra"
    exit_code = 3


class JobError(FarmError):
    """The benchmark failed on the device (crash, OOM, timeout, bad output)."""

    error_class = "job"
    exit_code = 1


class Cancelled(FarmError):
    """The run was cancelled by the user."""

    error_class = "cancelled"
    exit_code = 1


ERROR_CLASSES = ("config", "infra", "job", "cancelled", "bug")


def error_class_of(exc: BaseException) -> str:
    """The taxonomy class stored with a failed result."""
    return exc.error_class if isinstance(exc, FarmError) else "bug"
