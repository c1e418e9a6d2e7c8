"""keras-tuner search over kpair models (imports kpair and layers).

`PairHyperModel` is the search space and how a trial trains; `run_search`
runs a resumable search that writes a table, a plot and the best model.
"""

from tuning.hypermodel import PairHyperModel
from tuning.search import TUNERS, run_search

__all__ = ["TUNERS", "PairHyperModel", "run_search"]
