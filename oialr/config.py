"""OIALR's options: one validated, self-documenting model (units in the descriptions)."""

from __future__ import annotations

import math
import numbers
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from .errors import ConfigError, validation_error

__all__ = ["Options", "OIALRConfig", "Count", "Real", "StepUnit", "FIXED"]


def _whole(value: Any) -> Any:
    """Python and numpy integers pass; bools, strings, floats and tensors do not."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"must be a whole number, not {type(value).__name__}")
    return int(value)


def _real(value: Any) -> Any:
    """Finite Python and numpy numbers pass; bools, strings, tensors, inf and NaN do not."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"must be a number, not {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"must be finite, not {value}")
    return float(value)


def _names(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


# Strict numbers: a string, a bool or a tensor given for a count or a fraction is a mistake.
Count = Annotated[int, BeforeValidator(_whole)]
Real = Annotated[float, BeforeValidator(_real)]
Names = Annotated[list[str], BeforeValidator(_names)]
# A duration counted in optimizer steps, epochs, or as a fraction of the whole run.
StepUnit = Literal["steps", "epochs", "fraction"]
# Marks an option that describes the run or its bookkeeping, not a training hyperparameter:
# studies do not search it (oialr.options derives the searchable fields from this mark).
FIXED = {"tunable": False}


class Options(BaseModel):
    """A validated set of options: :meth:`build` turns pydantic's errors into one-line
    :class:`ConfigError`s that name the field (and, for a typo, the valid names)."""

    what: ClassVar[str] = "option "  # how the messages call one of these

    @classmethod
    def build(cls, **values: Any):
        try:
            return cls(**values)
        except ValidationError as err:
            error = validation_error(err, what=cls.what)
            first = err.errors()[0]
            if first["type"] == "extra_forbidden":
                model: type[BaseModel] = cls
                for part in first["loc"][:-1]:  # the model the unknown name was given to
                    inner = model.model_fields.get(str(part))
                    if inner is None or not isinstance(inner.annotation, type):
                        break
                    model = inner.annotation
                valid = ", ".join(model.model_fields)
                raise ConfigError(f"{error}; valid options: {valid}", error.field) from None
            raise error from None


class OIALRConfig(Options):
    """Every option of :class:`oialr.OIALR`, with its default and unit.

    Invalid values raise :class:`oialr.errors.ConfigError` (a ``ValueError``) naming the option and
    the allowed range; unknown options are rejected with the list of valid ones.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)
    what: ClassVar[str] = "OIALR option "

    delay: Real = Field(1000, ge=0, description="dense warm-up before conversion, in delay_unit")
    delay_unit: StepUnit = Field("steps", json_schema_extra=FIXED)
    update_freq: Real = Field(
        100, gt=0, description="time between rank updates, in update_freq_unit"
    )
    update_freq_unit: StepUnit = Field("steps", json_schema_extra=FIXED)
    sigma_cutoff: Real = Field(
        0.1, ge=0.0, lt=1.0, description="keep singular values s_i >= sigma_cutoff * s_1 (relative)"
    )
    keep_first: bool = Field(False, description="keep the model's input layer dense")
    keep_last: bool = Field(True, description="keep the output head (last nn.Linear) dense")
    min_aspect: Real = Field(
        10.0, ge=1.0, description="leave layers dense whose max(m, n) / min(m, n) is at least this"
    )
    include: Names | None = Field(
        None, description="module-name globs to convert (None: every eligible layer)"
    )
    exclude: Names = Field(default_factory=list, description="module-name globs to keep dense")
    max_cut_per_update: Real = Field(
        0.5, gt=0.0, le=1.0, description="largest fraction of a layer's rank cut in one update"
    )
    min_rank: Real = Field(
        0.01,
        gt=0.0,
        description="rank floor: a fraction of full rank if < 1, else a count; never below 1",
    )
    switch: Literal["delay", "stability"] = Field(
        "delay",
        description="convert all layers at `delay`, or each layer once its basis stability "
        "passes `stability_threshold` (with `delay` as the latest step)",
    )
    stability_every: Real | None = Field(
        None,
        ge=0,
        description="time between warm-up stability measurements, in stability_every_unit "
        "(None: update_freq; 0: off)",
    )
    stability_every_unit: StepUnit = Field("steps", json_schema_extra=FIXED)
    stability_threshold: Real = Field(
        0.98, gt=0.0, le=1.0, description="stability (mean column cosine) that triggers conversion"
    )
    factored: Literal["auto", True, False] = Field(
        "auto",
        description="factored forward per layer when cheaper ('auto'), always, or never",
        json_schema_extra=FIXED,
    )
    optimizer_state: Literal["rotate", "reset"] = Field(
        "rotate",
        description="at each update, rotate momenta into the new bases ('rotate') or restart "
        "the mixing matrix's optimizer state ('reset')",
    )
    rollout_fraction: Real = Field(
        1.0, gt=0.0, le=1.0, description="fraction of layers (deepest first) converted per update"
    )
    cooldown_updates: Count = Field(0, ge=0, description="updates a layer sits out after a cut")
    fixed_rank: Real | None = Field(
        None,
        gt=0.0,
        le=1.0,
        description="baseline: truncate to this fraction of full rank at conversion, never update",
        json_schema_extra=FIXED,
    )
    compact: Literal["auto", True, False] = Field(
        "auto",
        description="shrink a layer's storage (and its optimizer state) once its rank falls "
        "below 71 % of what is stored; 'auto': not under torch.distributed, where a shape "
        "change would mean re-wrapping DDP",
        json_schema_extra=FIXED,
    )
    top_k_sigma: Count | None = Field(
        None,
        ge=1,
        description="largest singular values of Σ kept in each update record; None: the whole "
        "spectrum (stored as 4 bytes a value), so the dashboard shows where the cutoff cuts",
        json_schema_extra=FIXED,
    )

    @classmethod
    def durations(cls) -> list[str]:
        """Options with a sibling ``<name>_unit``: steps, epochs or a fraction of the run."""
        return [name for name in cls.model_fields if f"{name}_unit" in cls.model_fields]

    @model_validator(mode="after")
    def _check_combinations(self) -> OIALRConfig:
        for name in self.durations():
            value, unit = getattr(self, name), getattr(self, f"{name}_unit")
            if value is not None and unit == "steps" and not float(value).is_integer():
                raise ValueError(f"{name} in steps must be a whole number")
            if value is not None and unit == "fraction" and value > 1:
                raise ValueError(f"{name} as a fraction of the run must be at most 1")
        if self.min_rank >= 1 and self.min_rank != int(self.min_rank):
            raise ValueError("min_rank >= 1 must be a whole number of singular values")
        if self.switch == "stability" and self.rollout_fraction < 1:
            raise ValueError("rollout_fraction < 1 only applies to switch='delay'")
        if self.switch == "stability" and self.stability_every == 0:
            raise ValueError("switch='stability' needs stability_every > 0")
        return self

    def in_steps(self, steps_per_epoch: int | None = None, total_steps: int | None = None):
        """This config with every duration resolved to whole optimizer steps (a positive
        duration to at least one step).

        Raises:
            ConfigError: a unit needs ``steps_per_epoch`` or ``total_steps`` that was not given.
        """
        scales = {"steps": 1, "epochs": steps_per_epoch, "fraction": total_steps}
        resolved: dict[str, Any] = {}
        for name in self.durations():
            value, unit = getattr(self, name), getattr(self, f"{name}_unit")
            if scales[unit] is None:
                needs = "steps_per_epoch" if unit == "epochs" else "total_steps"
                raise ConfigError(
                    f"{name}_unit={unit!r} needs the run's {needs}: pass "
                    f"OIALR(..., {needs}=...) or give {name} in steps",
                    field=name,
                )
            if value is not None:
                steps = math.floor(value * scales[unit] + 0.5)
                resolved[name] = max(1, steps) if value > 0 else 0
            resolved[f"{name}_unit"] = "steps"
        return self.model_copy(update=resolved)

    def rank_floor(self, full_rank: int) -> int:
        """``min_rank`` in singular values for a layer of full rank ``full_rank``."""
        if self.min_rank < 1:
            return max(1, math.ceil(self.min_rank * full_rank))
        return min(full_rank, int(self.min_rank))

    @property
    def stability_interval(self) -> int:
        return int(self.update_freq if self.stability_every is None else self.stability_every)
