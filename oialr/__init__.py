"""OIALR: orthogonality-informed adaptive low-rank training for PyTorch models.

::

    import oialr
    ctl = oialr.OIALR(model, optimizer, delay=1000, update_freq=100, sigma_cutoff=0.1)
    # in the training loop, right after optimizer.step():
    ctl.step()
"""

from .config import OIALRConfig
from .controller import OIALR, LayerRecord
from .conversion import ConversionReport, load_factorised, to_dense
from .errors import ConfigError, OIALRError
from .lowrank import LowRankLayer

__all__ = [
    "OIALR",
    "OIALRConfig",
    "LayerRecord",
    "ConversionReport",
    "LowRankLayer",
    "load_factorised",
    "to_dense",
    "OIALRError",
    "ConfigError",
]

__version__ = "0.1.0"
