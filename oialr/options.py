"""Every run option as one flat table, derived from :class:`RunConfig` and the
:class:`OIALRConfig` nested in it: the ``oialr train`` flags, the command that reproduces a run
and a study's searchable fields all come from here, so a new field needs no other edit.

A field named ``x`` with a sibling ``x_unit`` is a duration (steps, epochs or a fraction of the
run); a field marked ``FIXED`` describes the run rather than its training and is not tunable.
"""

from __future__ import annotations

import argparse
import shlex
import types
import typing
from dataclasses import dataclass
from typing import Any

import tomllib

from .config import OIALRConfig
from .errors import ConfigError
from .run_config import RunConfig

__all__ = [
    "Option", "OPTIONS", "SEARCHABLE", "nest", "add_flags", "flag_for", "values_from_flags",
    "train_command",
]  # fmt: skip


@dataclass(frozen=True)
class Option:
    """One option: its flat name, where it sits in a RunConfig, and how it is typed."""

    name: str
    path: tuple[str, ...]  # ("lr",) or ("oialr", "delay")
    kind: str  # bool, int, float, choice, text, list, dict, value (a TOML literal)
    choices: tuple[Any, ...]
    optional: bool
    tunable: bool
    description: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def unit(self) -> str | None:
        """The sibling option holding this duration's unit, if it has one."""
        unit = f"{self.name}_unit"
        return unit if unit in OPTIONS else None


def _kind(annotation: Any) -> tuple[str, tuple[Any, ...], bool]:
    """(kind, choices, optional) of a field's type."""
    args = typing.get_args(annotation)
    optional = (
        typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args
    )
    if optional:
        annotation = next(a for a in args if a is not type(None))
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        choices = typing.get_args(annotation)
        return (
            ("choice" if all(isinstance(c, str) for c in choices) else "value"),
            choices,
            optional,
        )
    if origin in (list, dict):
        return origin.__name__, (), optional
    named = {bool: "bool", int: "int", float: "float", str: "text"}
    return named.get(annotation, "value"), (), optional


def _derive() -> dict[str, Option]:
    options: dict[str, Option] = {}
    for model, prefix in ((RunConfig, ()), (OIALRConfig, ("oialr",))):
        for name, info in model.model_fields.items():
            if info.annotation is OIALRConfig:
                continue  # its fields are listed themselves
            if name in options:
                raise RuntimeError(f"option {name!r} is defined twice (RunConfig and OIALRConfig)")
            kind, choices, optional = _kind(info.annotation)
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            options[name] = Option(
                name, (*prefix, name), kind, choices, optional,
                tunable=extra.get("tunable", kind in ("bool", "int", "float", "choice", "value")),
                description=info.description or "",
            )  # fmt: skip
    return options


OPTIONS: dict[str, Option] = _derive()
SEARCHABLE: dict[str, Option] = {n: o for n, o in OPTIONS.items() if o.tunable}


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """``{"lr": 1e-3, "delay": 100}`` → ``{"lr": 1e-3, "oialr": {"delay": 100}}``."""
    nested: dict[str, Any] = {}
    for name, value in flat.items():
        *parents, leaf = OPTIONS[name].path
        table = nested
        for part in parents:
            table = table.setdefault(part, {})
        table[leaf] = value
    return nested


# -- the command line ------------------------------------------------------------------------------
def add_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per option: ``foo_bar`` → ``--foo-bar``."""
    for option in OPTIONS.values():
        help_text = option.description.replace("%", "%%") or None  # argparse formats help
        kwargs: dict[str, Any] = {"help": help_text, "default": None}
        if option.kind == "bool":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif option.kind in ("dict", "list"):
            kwargs |= {
                "action": "append",
                "metavar": "KEY=VALUE" if option.kind == "dict" else "NAME",
            }
        elif option.kind == "choice":
            kwargs |= {"choices": option.choices + (("none",) if option.optional else ())}
        else:
            kwargs["metavar"] = option.name.upper()
        parser.add_argument(option.flag, **kwargs)


def _literal(text: str) -> Any:
    """A TOML literal (number, bool, list, inf) when it parses, else the text itself."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _from_flag(option: Option, given: Any) -> Any:
    if option.optional and isinstance(given, str) and given.lower() == "none":
        return None
    if option.kind == "dict":
        pairs = {}
        for item in given:
            key, sep, raw = item.partition("=")
            if not sep or not key:
                raise ConfigError(
                    f"{option.flag} {item!r}: expected KEY=VALUE, e.g. {option.flag} widths=[64]",
                    field=option.name,
                )
            pairs[key] = _literal(raw)
        return pairs
    if option.kind in ("int", "float", "value"):
        return _literal(given)
    return given  # bool, choice, text, list: argparse has them typed


def flag_for(field: str | None) -> str | None:
    """The flag of a RunConfig field named as a ConfigError names it (``oialr.delay``)."""
    path = tuple((field or "").split("."))
    return next((o.flag for o in OPTIONS.values() if o.path == path[: len(o.path)]), None)


def values_from_flags(args: argparse.Namespace, base: dict[str, Any] | None = None) -> dict:
    """The nested RunConfig values the flags give, over ``base`` (a ``--config`` file's)."""
    values = {k: dict(v) if isinstance(v, dict) else v for k, v in (base or {}).items()}
    flat = {
        n: _from_flag(o, getattr(args, n))
        for n, o in OPTIONS.items()
        if getattr(args, n, None) is not None
    }
    for name, value in nest(flat).items():
        if isinstance(value, dict) and isinstance(values.get(name), dict):
            values[name] = {**values[name], **value}
        else:
            values[name] = value
    return values


def _render(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_render(v) for v in value) + "]"
    if isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return str(int(value))  # 100.0 steps reads as 100
    return repr(value)


def train_command(cfg: RunConfig) -> str:
    """The ``oialr train …`` command line that reproduces ``cfg`` (non-default options only;
    model, dataset and mode always, for the reader)."""
    parts, default = ["oialr train"], RunConfig.model_construct()
    for name, option in OPTIONS.items():
        value, base = _get(cfg, option.path), _get(default, option.path)
        if name == "checkpoint_dir" or (value == base and name not in ("model", "dataset", "mode")):
            continue
        if option.kind == "bool":
            parts.append(option.flag if value else f"--no-{option.flag[2:]}")
        elif option.kind == "dict":
            parts += [f"{option.flag} {shlex.quote(f'{k}={_render(v)}')}" for k, v in value.items()]
        elif option.kind == "list":
            parts += [f"{option.flag} {shlex.quote(v)}" for v in value or []]
        else:
            parts.append(
                f"{option.flag} {shlex.quote('none' if value is None else _render(value))}"
            )
    return " ".join(parts)


def _get(cfg: RunConfig, path: tuple[str, ...]) -> Any:
    value: Any = cfg
    for part in path:
        value = getattr(value, part)
    return value
