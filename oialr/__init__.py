"""OIALR: orthogonality-informed adaptive low-rank training for PyTorch models.

::

    import oialr
    ctl = oialr.OIALR(model, optimizer, delay=1000, update_freq=100, sigma_cutoff=0.1)
    # in the training loop, right after optimizer.step():
    ctl.step()

The names below load on first use (PEP 562), so ``import oialr.cli`` or the dashboard's
``import oialr.vocab`` never pull in torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import OIALRConfig
    from .controller import OIALR
    from .conversion import ConversionReport, load_factorised, to_dense
    from .errors import ConfigError, OIALRError
    from .lowrank import LowRankLayer
    from .records import LayerRecord

_PUBLIC = {
    "OIALR": "controller",
    "LayerRecord": "records",
    "OIALRConfig": "config",
    "ConversionReport": "conversion",
    "load_factorised": "conversion",
    "to_dense": "conversion",
    "LowRankLayer": "lowrank",
    "OIALRError": "errors",
    "ConfigError": "errors",
}
__all__ = [
    "OIALR",
    "LayerRecord",
    "OIALRConfig",
    "ConversionReport",
    "load_factorised",
    "to_dense",
    "LowRankLayer",
    "OIALRError",
    "ConfigError",
]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name not in _PUBLIC:
        raise AttributeError(f"module 'oialr' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value  # next time, a plain lookup
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
