"""Study specs: TOML files that say what to tune, how to judge it and how long to search.

A spec is data, never code: it is parsed with ``tomllib`` and validated with pydantic, and any
mistake is one :class:`ConfigError` line naming the file, the field and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .config import OIALRConfig
from .errors import ConfigError, describe_validation_error
from .train import RunConfig

__all__ = ["StudySpec", "SearchParam", "load_spec", "parse_spec", "SEARCHABLE"]

# What a study may tune: RunConfig fields and OIALR options (the latter go to `oialr_options`).
RUN_PARAMS = {
    "delay", "update_freq", "sigma_cutoff", "lr", "weight_decay", "label_smoothing",
    "warmup_steps", "momentum", "batch_size", "rank_fraction", "grad_clip",
}  # fmt: skip
OIALR_PARAMS = {
    "max_cut_per_update", "min_rank", "switch", "stability_threshold", "stability_every",
    "optimizer_state", "rollout_fraction", "cooldown_updates", "keep_first", "keep_last",
    "min_aspect",
}  # fmt: skip
SEARCHABLE = sorted(RUN_PARAMS | OIALR_PARAMS)
# Parameters counted in optimizer steps may be given in epochs or as a fraction of the run.
STEP_PARAMS = {"delay", "update_freq"}
INT_PARAMS = {"warmup_steps", "batch_size", "stability_every", "cooldown_updates"}
_strict = ConfigDict(extra="forbid")


class SearchParam(BaseModel):
    """One tuned hyperparameter: a range (``low``/``high``, optional ``log`` or ``step``) or a
    list of ``choices``. ``unit`` applies to ``delay`` and ``update_freq``."""

    model_config = _strict

    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    choices: list[Any] | None = Field(None, min_length=1)
    unit: Literal["steps", "epochs", "fraction"] | None = None

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


class Objective(BaseModel):
    """``pareto``: maximise validation accuracy and minimise the trainable fraction (optionally a
    third: stored fraction or wall time). ``accuracy``: one objective, with pruning and an
    optional cap on the trainable fraction (an Optuna constraint)."""

    model_config = _strict

    kind: Literal["pareto", "accuracy"] = "pareto"
    third: Literal["stored_fraction", "wall_time"] | None = None
    max_trainable_fraction: float | None = Field(None, gt=0.0, le=1.0)

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
            return ["val_acc"]
        return ["val_acc", "trainable_fraction"] + ([self.third] if self.third else [])

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


class Baselines(BaseModel):
    """Runs queued before the search. Fixed-rank runs convert at ``delay`` (default: the low end
    of the delay search range) and keep that rank to the end."""

    model_config = _strict
    dense: bool = True
    fixed_rank: list[float] = Field(default_factory=list, description="fractions of full rank")
    delay: float | None = Field(None, ge=0)
    delay_unit: Literal["steps", "epochs", "fraction"] | None = None

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

    def baseline_delay(self) -> dict[str, Any]:
        """``delay``/``delay_unit`` of the fixed-rank baselines."""
        if self.baselines.delay is not None:
            return {
                "delay": self.baselines.delay,
                "delay_unit": self.baselines.delay_unit or "steps",
            }
        if "delay" in self.search and self.search["delay"].low is not None:
            return {
                "delay": self.search["delay"].low,
                "delay_unit": self.search["delay"].unit or "steps",
            }
        return {}

    def run_config(
        self, params: dict[str, Any], mode: str, seed_offset: int = 0, **extra: Any
    ) -> RunConfig:
        """The RunConfig of one trial: the spec's ``run`` table, then the trial's parameters."""
        if mode == "fixed-rank":
            extra = {**self.baseline_delay(), **extra}
        values = {**self.run, **extra, "mode": mode}
        options = dict(values.pop("oialr_options", {}))
        for name, value in params.items():
            if name in OIALR_PARAMS:
                options[name] = value
            else:
                values[name] = value
                if name in STEP_PARAMS and self.search[name].unit:
                    values[f"{name}_unit"] = self.search[name].unit
        values["oialr_options"] = options
        values["seed"] = values.get("seed", 0) + seed_offset
        return RunConfig.build(**values)


def _check_semantics(spec: StudySpec) -> None:
    """Cross-field checks pydantic cannot express; raise ValueError(field, message)."""
    for key in ("mode", "name", "storage"):
        if key in spec.run:
            raise _FieldError(f"run.{key}", "is set by the study itself; remove it")
    try:  # RunConfig knows the models and datasets: one check for specs and `oialr train`
        RunConfig.build(**spec.run)
    except ConfigError as err:
        field, _, message = str(err).replace("run option ", "").partition(": ")
        raise _FieldError(f"run.{field.strip('`')}", message) from None
    for name, param in spec.search.items():
        where = f"search.{name}"
        if name not in RUN_PARAMS | OIALR_PARAMS:
            raise _FieldError(where, f"cannot be tuned; tunable: {', '.join(SEARCHABLE)}")
        if param.unit and name not in STEP_PARAMS:
            raise _FieldError(f"{where}.unit", "only delay and update_freq take a unit")
        if param.unit == "fraction" and param.high is not None and param.high > 1:
            raise _FieldError(f"{where}.high", "a fraction of the run must be at most 1")
        if name in OIALR_PARAMS and param.choices is None:
            _check_range(where, name, param)
    if spec.pruner.name != "none" and spec.objective.kind != "accuracy":
        raise _FieldError(
            "pruner.name", "pruning needs objective.kind = 'accuracy' (Optuna cannot prune "
            "multi-objective studies); set pruner.name = 'none'",
        )  # fmt: skip
    if spec.objective.max_trainable_fraction is not None and spec.sampler.name == "random":
        raise _FieldError(
            "sampler.name", "max_trainable_fraction needs a sampler that honours constraints "
            "(tpe, nsga2 or gp), not random",
        )  # fmt: skip


def _check_range(where: str, name: str, param: SearchParam) -> None:
    """An OIALR option's range must lie inside what OIALRConfig accepts."""
    for end in ("low", "high"):
        value = getattr(param, end)
        value = int(value) if name in INT_PARAMS else value
        try:
            OIALRConfig.build(**{name: value})
        except ConfigError as err:
            raise _FieldError(f"{where}.{end}", str(err).split(": ", 1)[-1]) from None


class _FieldError(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(f"`{field}`: {message}")


def parse_spec(data: dict[str, Any], source: str = "spec") -> StudySpec:
    """Validate a spec given as a dict; errors name ``source`` and the field."""
    try:
        spec = StudySpec(**data)
        _check_semantics(spec)
    except ValidationError as err:
        raise ConfigError(describe_validation_error(err, prefix=f"{source}: ")) from None
    except _FieldError as err:
        raise ConfigError(f"{source}: {err}") from None
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
    return parse_spec(apply_overrides(data, list(overrides)), source=str(path))
