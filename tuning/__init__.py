"""keras-tuner search over kpair models (imports kpair and layers).

`PairHyperModel` is the search space and how a trial trains; `run_search`
runs a resumable search that writes a table, a plot and the best model.
"""

# First: kpair loads TensorFlow (quietly, with oneDNN's CPU kernels) before
# keras_tuner and keras would load it with TensorFlow's own settings.
import kpair  # noqa: F401

from .hypermodel import PairHyperModel
from .search import TUNERS, run_search

__all__ = ["TUNERS", "PairHyperModel", "run_search"]
