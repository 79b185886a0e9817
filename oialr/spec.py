"""Study specs: TOML files that say what to tune, how to judge it and how long to search.

A spec is data, never code: it is parsed with ``tomllib`` and validated with pydantic, and any
mistake is one :class:`ConfigError` line naming the file, the field and the fix. Its ``[run]``
table is a :class:`~oialr.run_config.RunConfig` (OIALR's options under ``[run.oialr]``); what
``[search]`` may tune, with which type and unit, is derived from those models
(:data:`oialr.options.SEARCHABLE`), and every end of every range is checked against them.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .config import StepUnit
from .errors import ConfigError, validation_error
from .imports import is_import_string, resolve
from .options import SEARCHABLE, Option, nest
from .run_config import RunConfig
from .vocab import FIXED_RANK, OIALR, TrialAttr

__all__ = ["StudySpec", "SearchParam", "load_spec", "parse_spec", "apply_overrides"]

_strict = ConfigDict(extra="forbid")


class SearchParam(BaseModel):
    """One tuned hyperparameter: a range (``low``/``high``, optional ``log`` or ``step``) or a
    list of ``choices``. ``unit`` applies to durations (``delay``, ``update_freq``)."""

    model_config = _strict

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    choices: list[Any] | None = Field(None, min_length=1)
    unit: StepUnit | None = None

    @model_validator(mode="after")
    def _check(self) -> SearchParam:
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either choices or low/high, not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("needs low and high (or choices)")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError("log=true needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("log and step cannot be combined (Optuna forbids it)")
        return self

    def points(self) -> list[tuple[str, Any]]:
        """Where the space is checked: ``(field, value)`` for every choice or both ends."""
        if self.choices is not None:
            return [(f"choices[{i}]", c) for i, c in enumerate(self.choices)]
        return [("low", self.low), ("high", self.high)]

    def is_integer(self, option: Option, unit: str | None) -> bool:
        """Sampled as integers: counts, and durations in steps (``unit``: the one in effect)."""
        return option.kind == "int" or unit == "steps"


class Objective(BaseModel):
    """``pareto``: maximise validation accuracy and minimise the trainable fraction (optionally a
    third: stored fraction or wall time). ``accuracy``: one objective, with pruning and an
    optional cap on the trainable fraction (an Optuna constraint)."""

    model_config = _strict

    kind: Literal["pareto", "accuracy"] = "pareto"
    third: Literal["stored_fraction", "wall_time"] | None = None
    max_trainable_fraction: float | None = Field(None, gt=0.0, le=1.0)
    train: str | None = Field(
        None,
        description="your training loop as package.module:function, called once per trial "
        "and seed with an oialr.tracking.RunHandle (None: oialr's own loop)",
    )

    @field_validator("train")
    @classmethod
    def _importable(cls, text: str | None) -> str | None:
        if text is not None:
            if not is_import_string(text):
                raise ValueError(f"{text!r} is not an import string like 'mypkg.train:run'")
            resolve(text, "objective.train")
        return text

    @model_validator(mode="after")
    def _check(self) -> Objective:
        if self.kind == "accuracy" and self.third:
            raise ValueError("`third` is for kind = 'pareto'")
        if self.kind == "pareto" and self.max_trainable_fraction is not None:
            raise ValueError("max_trainable_fraction is for kind = 'accuracy'")
        return self

    @property
    def names(self) -> list[str]:
        if self.kind == "accuracy":
            return [TrialAttr.VAL_ACC]
        return [TrialAttr.VAL_ACC, TrialAttr.TRAINABLE_FRACTION] + (
            [self.third] if self.third else []
        )

    @property
    def directions(self) -> list[str]:
        return ["maximize"] + ["minimize"] * (len(self.names) - 1)


class Sampler(BaseModel):
    model_config = _strict
    name: Literal["tpe", "nsga2", "random", "gp"] = "tpe"
    seed: int | None = 0


class Pruner(BaseModel):
    model_config = _strict
    name: Literal["median", "hyperband", "none"] = "none"


class Budget(BaseModel):
    model_config = _strict
    n_trials: int = Field(
        20, ge=1, description="trials in all, baselines included, all workers together"
    )
    timeout: float | None = Field(None, gt=0, description="seconds per worker")
    failures_in_a_row: int = Field(
        5, ge=1, description="stop the study once this many trials in a row fail alike"
    )


class Baselines(BaseModel):
    """Runs queued before the search. Fixed-rank runs convert at ``delay`` (default: the low end
    of the delay search range) and keep that rank to the end."""

    model_config = _strict
    dense: bool = True
    fixed_rank: list[float] = Field(default_factory=list, description="fractions of full rank")
    delay: float | None = Field(None, ge=0)
    delay_unit: StepUnit | None = None

    @model_validator(mode="after")
    def _check(self) -> Baselines:
        if any(not 0 < f <= 1 for f in self.fixed_rank):
            raise ValueError("fixed_rank fractions must lie in (0, 1]")
        return self


class StudySpec(BaseModel):
    """A whole study: see ``studies/quickstart.toml`` for a commented example."""

    model_config = _strict

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    run: dict[str, Any] = Field(default_factory=dict)
    search: dict[str, SearchParam] = Field(default_factory=dict)
    objective: Objective = Field(default_factory=Objective)
    sampler: Sampler = Field(default_factory=Sampler)
    pruner: Pruner = Field(default_factory=Pruner)
    budget: Budget = Field(default_factory=Budget)
    baselines: Baselines = Field(default_factory=Baselines)
    seeds: int = Field(1, ge=1, le=10, description="seeds per configuration; values are means")

    def unit_of(self, name: str) -> str | None:
        """The unit a searched duration is drawn in: its own, else the run's (None: not a
        duration)."""
        option = SEARCHABLE[name]
        if option.unit is None:
            return None
        if name in self.search and self.search[name].unit:
            return self.search[name].unit
        cfg = RunConfig.build(**self.run)
        return getattr(cfg.oialr if option.path[0] == "oialr" else cfg, option.unit)

    def baseline_delay(self) -> dict[str, Any]:
        """``delay``/``delay_unit`` of the fixed-rank baselines."""
        if self.baselines.delay is not None:
            return {
                "delay": self.baselines.delay,
                "delay_unit": self.baselines.delay_unit or "steps",
            }
        if "delay" in self.search and self.search["delay"].low is not None:
            param = self.search["delay"]
            return {"delay": param.low, "delay_unit": param.unit or "steps"}
        return {}

    def latest_delay(self) -> tuple[float, str] | None:
        """The latest conversion any trial of this study may have, as ``(value, unit)``: how far
        its dense warm-up is worth sharing (None: unknown, a custom loop)."""
        if self.objective.train is not None:
            return None
        run = self.run_config({}, OIALR).oialr
        ends = [(run.delay, run.delay_unit)]
        if "delay" in self.search:
            param = self.search["delay"]
            top = max(param.choices) if param.choices is not None else param.high
            ends.append((top, param.unit or run.delay_unit))
        if self.baseline_delay():
            ends.append((self.baseline_delay()["delay"], self.baseline_delay()["delay_unit"]))
        units = {unit for _, unit in ends}
        return max(ends) if len(units) == 1 else None

    def run_values(
        self,
        params: dict[str, Any],
        mode: str,
        seed_offset: int = 0,
        fixed_rank: float | None = None,
    ) -> dict[str, Any]:
        """The RunConfig values of one trial: the spec's ``run`` table, then its parameters."""
        values = copy.deepcopy(self.run)
        flat = dict(params)
        for name in params:
            unit = self.search[name].unit if name in self.search else None
            if unit:  # the search's unit, unless the caller gave one
                flat.setdefault(f"{name}_unit", unit)
        if mode == FIXED_RANK:
            flat |= {**self.baseline_delay(), "fixed_rank": fixed_rank}
        for key, value in nest(flat).items():
            values[key] = {**values.get(key, {}), **value} if isinstance(value, dict) else value
        values["mode"] = mode
        values["seed"] = values.get("seed", 0) + seed_offset
        return values

    def run_config(self, params: dict[str, Any], mode: str, seed_offset: int = 0, **extra):
        """The validated RunConfig of one trial (see :meth:`run_values`)."""
        return RunConfig.build(**self.run_values(params, mode, seed_offset, **extra))


def _check_semantics(spec: StudySpec) -> None:
    """What pydantic cannot express; raises ConfigError naming the field."""
    for key in ("mode", "name"):
        if key in spec.run:
            raise ConfigError("is set by the study itself; remove it", field=f"run.{key}")
    try:
        RunConfig.build(**spec.run)
    except ConfigError as err:
        raise ConfigError(str(err).split(": ", 1)[-1], field=f"run.{err.field}") from None
    if not spec.search:
        raise ConfigError(
            "searches nothing, so every trial would train the same configuration; add a table "
            "such as [search.sigma_cutoff] with low and high",
            field="search",
        )
    for name, param in spec.search.items():
        _check_param(spec, name, param)
    if spec.pruner.name != "none" and spec.objective.kind != "accuracy":
        raise ConfigError(
            "pruning needs objective.kind = 'accuracy' (Optuna cannot prune multi-objective "
            "studies); set pruner.name = 'none'",
            field="pruner.name",
        )
    if spec.objective.max_trainable_fraction is not None and spec.sampler.name == "random":
        raise ConfigError(
            "max_trainable_fraction needs a sampler that honours constraints (tpe, nsga2 or gp), "
            "not random",
            field="sampler.name",
        )


def _check_param(spec: StudySpec, name: str, param: SearchParam) -> None:
    where = f"search.{name}"
    option = SEARCHABLE.get(name)
    if option is None:
        raise ConfigError(f"cannot be tuned; tunable: {', '.join(sorted(SEARCHABLE))}", field=where)
    if param.unit and not option.unit:
        durations = ", ".join(n for n, o in SEARCHABLE.items() if o.unit)
        raise ConfigError(f"only durations ({durations}) take a unit", field=f"{where}.unit")
    if option.kind == "bool" and param.choices is None:
        raise ConfigError("a switch is tuned with choices = [false, true]", field=where)
    whole = param.choices is None and param.is_integer(option, spec.unit_of(name))
    if whole:
        for end in ("low", "high", "step"):  # Optuna draws whole numbers between whole ends
            value = getattr(param, end)
            if value is not None and not float(value).is_integer():
                what = "steps" if option.kind != "int" else "whole numbers"
                raise ConfigError(f"{name} takes {what}: give a whole number (got {value:g})",
                                  field=f"{where}.{end}")  # fmt: skip
    for end, value in param.points():  # ranges are intervals: their ends stand for them
        value = int(value) if whole else value  # as Optuna will draw it
        try:
            RunConfig.build(**spec.run_values({name: value}, OIALR))
        except ConfigError as err:
            raise ConfigError(str(err).split(": ", 1)[-1], field=f"{where}.{end}") from None


def parse_spec(data: dict[str, Any], source: str = "spec") -> StudySpec:
    """Validate a spec given as a dict; errors name ``source`` and the field."""
    try:
        spec = StudySpec(**data)
        _check_semantics(spec)
    except ValidationError as err:
        raise validation_error(err, what=f"{source}: ") from None
    except ConfigError as err:
        raise ConfigError(f"{source}: `{err.field}`: {err}", field=err.field) from None
    return spec


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``["run.epochs=3", "budget.n_trials=8"]``: dotted keys, values as TOML literals."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. --set run.epochs=3")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # a bare string
        *parents, leaf = key.strip().split(".")
        table = data
        for part in parents:
            table = table.setdefault(part, {})
            if not isinstance(table, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a table")
        table[leaf] = value
    return data


def load_spec(path: str | Path, overrides: list[str] = ()) -> StudySpec:
    """Read and validate a TOML study spec, with ``--set KEY=VALUE`` overrides applied."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such spec file; the shipped ones are in studies/")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: not valid TOML ({err})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file; a spec is TOML") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror})") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a study spec") from None
    return parse_spec(apply_overrides(data, list(overrides)), source=str(path))
