"""Errors a user can cause. Each is also a ValueError or RuntimeError, so plain ``except`` works,
and the CLI turns any ``OIALRError`` into one line and exit code 2."""

from __future__ import annotations

from pydantic import ValidationError


class OIALRError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(OIALRError, ValueError):
    """A bad option, spec field or argument; the message names it and the fix.

    ``field`` is the dotted name of the option at fault when one is (``run.oialr.delay``), so
    callers can re-address it (a spec names ``run.…``, the CLI ``--…``) without parsing text.
    """

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


class NoEligibleLayersError(ConfigError):
    """No layer of the model can be converted with the given options."""


class DataError(OIALRError, FileNotFoundError):
    """A dataset could not be found or read; the message says where it looked."""


class StorageError(OIALRError, RuntimeError):
    """A storage URL is malformed, unreachable, or holds a schema we cannot read."""


class StudyStopped(OIALRError, RuntimeError):
    """A study stopped on its own: its trials kept failing for the same reason."""


class TrainingDiverged(OIALRError, RuntimeError):
    """The loss became NaN or infinite."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived; the running trial or run is recorded on the way out."""


class RunPruned(OIALRError):
    """A recorder stopped the run early on purpose (a study's pruner); not a failure."""


def validation_error(err: ValidationError, prefix: str = "", what: str = "") -> ConfigError:
    """One-line ConfigError naming the first bad field, what is wrong and the value given.

    ``prefix`` is prepended to the field's dotted name (``run.``); ``what`` to the message.
    """
    first = err.errors()[0]
    field = prefix + (".".join(str(p) for p in first["loc"]) or "(top level)")
    given = first.get("input")
    msg = first["msg"].removeprefix("Value error, ")  # our validators' own words
    if first["type"] == "extra_forbidden":
        msg = "unknown option (a typo?)"
    shown = "" if isinstance(given, dict) or repr(given) in msg else f" (got {given!r})"
    return ConfigError(f"{what}`{field}`: {msg}{shown}", field=field)
