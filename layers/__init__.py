"""Normalization layers for models whose batches may each hold one domain.

Pure Keras 3 (`keras.ops`): no import of `kpair` or `tuning`.
"""

from layers.eval_mode_batch_normalization import EvalModeBatchNormalization
from layers.per_domain_batch_normalization import PerDomainBatchNormalization
from layers.registry import NormFactory, get, names, options, summary

__all__ = [
    "EvalModeBatchNormalization",
    "NormFactory",
    "PerDomainBatchNormalization",
    "get",
    "names",
    "options",
    "summary",
]
