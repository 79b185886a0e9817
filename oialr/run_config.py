"""What defines one training run and what it reports: :class:`RunConfig`, :class:`RunResult`.

Torch-free on purpose: specs, the CLI and the dashboard read and validate run configurations
without loading the training code. The OIALR options are :class:`~oialr.config.OIALRConfig`
itself, nested as ``oialr``: one definition, with its units.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from .config import FIXED, Count, OIALRConfig, Options, Real
from .imports import is_import_string, resolve
from .vocab import FIXED_RANK, MODES, OIALR

__all__ = ["RunConfig", "RunResult", "BUILTIN_MODELS", "MODEL_PREFIXES", "DATASETS"]

# Names the zoo (oialr.models) and the loaders (oialr.data) answer to; kept here, torch-free.
BUILTIN_MODELS = ("mlp", "lenet5", "resnet20", "minivit")
MODEL_PREFIXES = ("tv", "timm")  # tv:<torchvision name>, timm:<timm name>
DATASETS = ("fashion-mnist", "mnist", "cifar10", "cifar100", "imagenet", "synthetic")
Mode = Literal[MODES]  # type: ignore[valid-type]


def mistyped_prefix(name: str) -> str | None:
    """Why ``name`` (``nope:resnet18``) is neither a model prefix nor an importable builder,
    or None."""
    module = name.partition(":")[0]
    if ":" in name and "." not in module and importlib.util.find_spec(module) is None:
        prefixes = ", ".join(f"{p}:" for p in MODEL_PREFIXES)
        return f"unknown model {name!r}: {module!r} is neither a prefix ({prefixes}) nor a module"
    return None


def model_names() -> list[str]:
    """Built-in model names plus the ``tv:<name>`` and ``timm:<name>`` patterns."""
    return [*BUILTIN_MODELS, *(f"{prefix}:<name>" for prefix in MODEL_PREFIXES)]


class RunConfig(Options):
    """Everything that defines one run. Steps are optimizer steps."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), strict=True)
    what: ClassVar[str] = "run option "

    name: str | None = Field(None, description="run name (default: model-dataset-mode-seed)")
    model: str = Field(
        "mlp",
        description="mlp, lenet5, resnet20, minivit, tv:<name>, timm:<name>, or your builder as "
        "package.module:function",
    )
    model_options: dict[str, Any] = Field(
        default_factory=dict, description="keyword options of the model"
    )
    dataset: str = Field(
        "fashion-mnist",
        description=f"{', '.join(DATASETS)}, or your loader as package.module:function",
    )
    dataset_options: dict[str, Any] = Field(
        default_factory=dict, description="keyword options of your dataset loader"
    )
    data_dir: str | None = Field(None, description="where the dataset's files are")
    download: bool = Field(
        False,
        description="fetch the dataset through torchvision if missing",
        json_schema_extra=FIXED,
    )
    val_fraction: Real = Field(
        0.1, ge=0.0, le=0.5, description="share held out for validation", json_schema_extra=FIXED
    )
    subset: Count | None = Field(
        None, ge=1, description="keep this many training examples", json_schema_extra=FIXED
    )
    pad_to: Count | None = Field(
        None, ge=1, description="zero-pad images to this size", json_schema_extra=FIXED
    )
    epochs: Count = Field(5, ge=1, json_schema_extra=FIXED)
    batch_size: Count = Field(128, ge=1)
    lr: Real = Field(1e-3, gt=0.0, description="peak learning rate")
    weight_decay: Real = Field(0.01, ge=0.0, description="decoupled, on matrices only")
    optimizer: Literal["adamw", "sgd"] = "adamw"
    momentum: Real = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum (Nesterov)")
    warmup_steps: Count = Field(0, ge=0, description="linear learning-rate warm-up, then cosine")
    label_smoothing: Real = Field(0.0, ge=0.0, lt=1.0)
    grad_clip: Real | None = Field(1.0, gt=0.0, description="max gradient norm (None: off)")
    mode: Mode = Field(
        OIALR, description="oialr, dense, or fixed-rank (needs fixed_rank)", json_schema_extra=FIXED
    )
    oialr: OIALRConfig = Field(default_factory=OIALRConfig, description="OIALR's options")
    seed: Count = Field(0, json_schema_extra=FIXED)
    device: str = Field("auto", description="auto, cpu, cuda, cuda:N")
    amp: bool = Field(True, description="bf16 autocast on CUDA", json_schema_extra=FIXED)
    memory_format: Literal["auto", "contiguous", "channels_last"] = Field(
        "auto",
        description="convnets' memory layout; auto: channels_last on the CPU (measured faster)",
        json_schema_extra=FIXED,
    )
    log_every: Count = Field(
        10, ge=1, description="steps between logged loss/lr/step-time rows", json_schema_extra=FIXED
    )
    checkpoint_dir: str | None = Field(None, description="checkpoint every epoch here")

    @field_validator("name")
    @classmethod
    def _plain_name(cls, name: str | None) -> str | None:
        if name is not None and (name.strip(". ") == "" or any(c in name for c in "/\\\0")):
            raise ValueError(
                f"run name {name!r} must be a plain name, without '/' (it names the run's "
                "checkpoint folder)"
            )
        return name

    @field_validator("device")
    @classmethod
    def _known_device(cls, device: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
            raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N")
        return device

    @field_validator("model")
    @classmethod
    def _known_model(cls, name: str) -> str:
        prefix, sep, rest = name.partition(":")
        if name in BUILTIN_MODELS or (sep and prefix in MODEL_PREFIXES and rest):
            return name
        if is_import_string(name):
            if mistyped_prefix(name):
                raise ValueError(mistyped_prefix(name))
            resolve(name, "model")  # importable and callable, or one line saying what is not
            return name
        raise ValueError(
            f"unknown model {name!r}; choose one of {', '.join(model_names())}, or name your "
            "builder as package.module:function"
        )

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, name: str) -> str:
        if name in DATASETS:
            return name
        if is_import_string(name):
            resolve(name, "dataset")
            return name
        raise ValueError(
            f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}, or name your "
            "loader as package.module:function"
        )

    @model_validator(mode="after")
    def _dataset_options_are_for_loaders(self) -> RunConfig:
        if self.dataset_options and self.dataset in DATASETS:
            raise ValueError("dataset_options are for your own loader (package.module:function)")
        return self

    @model_validator(mode="after")
    def _mode_and_rank(self) -> RunConfig:
        if self.mode == FIXED_RANK and self.oialr.fixed_rank is None:
            raise ValueError("mode 'fixed-rank' needs oialr.fixed_rank (a fraction of full rank)")
        if self.mode == OIALR and self.oialr.fixed_rank is not None:
            raise ValueError("oialr.fixed_rank is for mode 'fixed-rank'")
        return self

    @property
    def run_name(self) -> str:
        return self.name or f"{self.model}-{self.dataset}-{self.mode}-s{self.seed}"


@dataclass
class RunResult:
    """What a finished run reports."""

    run_id: int | None
    mode: str
    best_val_acc: float
    final_val_acc: float
    test_acc: float
    test_loss: float
    trainable_fraction: float
    stored_fraction: float
    wall_time: float
    steps: int
    epochs: int
    conversion_step: int | None
    ranks: dict[str, int] = field(default_factory=dict)
    warm_start_step: int = 0  # the step a shared warm-up snapshot started it at (0: none)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
