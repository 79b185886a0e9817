"""Errors a user can cause. Each is also a ValueError or RuntimeError, so plain ``except`` works,
and the CLI turns any ``OIALRError`` into one line and exit code 2."""

from __future__ import annotations

from pydantic import ValidationError


class OIALRError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(OIALRError, ValueError):
    """A bad option, spec field or argument; the message names it and the fix."""


class NoEligibleLayersError(ConfigError):
    """No layer of the model can be converted with the given options."""


class DataError(OIALRError, FileNotFoundError):
    """A dataset could not be found or read; the message says where it looked."""


class StorageError(OIALRError, RuntimeError):
    """A storage URL is malformed, unreachable, or holds a schema we cannot read."""


class TrainingDiverged(OIALRError, RuntimeError):
    """The loss became NaN or infinite."""


def describe_validation_error(err: ValidationError, prefix: str = "") -> str:
    """One line naming the first bad field, what is wrong and the value given."""
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "(top level)"
    given = first.get("input")
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown option (a typo?)"
    shown = "" if isinstance(given, dict) else f" (got {given!r})"
    return f"{prefix}`{field}`: {msg}{shown}"
