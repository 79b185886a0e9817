"""Import strings: ``"package.module:name"`` names your model builder, dataset loader or training
loop in a spec or on the command line. Each is resolved here, once, with one-line errors that name
the field and the fix; nothing is imported until a string is used.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable
from typing import Any

from .errors import ConfigError

__all__ = ["is_import_string", "resolve", "call_with"]

_PATTERN = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


def is_import_string(text: str) -> bool:
    """``"mypkg.nets:build"``: a dotted module, a colon, a dotted attribute."""
    return bool(_PATTERN.match(text))


def resolve(text: str, field: str) -> Callable[..., Any]:
    """The callable ``text`` names.

    Raises:
        ConfigError: the module cannot be imported, the attribute is missing or not callable
            (``field`` says where the string was given; the message names the fix).
    """
    module_name, _, attribute = text.partition(":")
    try:
        value: Any = importlib.import_module(module_name)
    except Exception as err:  # the module itself may fail in any way while importing
        raise ConfigError(
            f"cannot import {module_name!r} ({type(err).__name__}: {err}); check the name and "
            "that its folder is on PYTHONPATH",
            field=field,
        ) from None
    for part in attribute.split("."):
        if not hasattr(value, part):
            raise ConfigError(
                f"{module_name!r} has no {attribute!r}; check the name after the colon",
                field=field,
            )
        value = getattr(value, part)
    if not callable(value):
        raise ConfigError(
            f"{text!r} is a {type(value).__name__}, not a function or class",
            field=field,
        )
    return value


def call_with(function: Callable[..., Any], options: dict[str, Any], **optional: Any) -> Any:
    """``function(**options)``, plus those of ``optional`` it declares (or all, given
    ``**kwargs``): a builder that takes ``num_classes`` gets it, one that does not is not
    forced to."""
    try:
        params = inspect.signature(function).parameters
    except (TypeError, ValueError):  # builtins without a signature: options only
        return function(**options)
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    extra = {k: v for k, v in optional.items() if open_ended or k in params}
    return function(**options, **extra)
