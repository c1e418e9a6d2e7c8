"""Normalization layers for models whose batches may each hold one domain.

Pure Keras 3 (`keras.ops`): imports nothing else of kpair (installed as
`kpair.layers`; the folder stays at the top of the repository).
"""

from .eval_mode_batch_normalization import EvalModeBatchNormalization
from .ghost_batch_normalization import GhostBatchNormalization
from .per_domain_batch_normalization import PerDomainBatchNormalization
from .registry import NormFactory, get, names, options, summary

__all__ = [
    "EvalModeBatchNormalization",
    "GhostBatchNormalization",
    "NormFactory",
    "PerDomainBatchNormalization",
    "get",
    "names",
    "options",
    "summary",
]
