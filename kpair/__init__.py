"""kpair: pair models over two image domains with swappable normalization.

Importing kpair registers every custom Keras object of the project (under the
package name `kpair`), so that `keras.saving.load_model(path)` can load
kpair's `.keras` files with `safe_mode` left at True.
"""

import sys

if "tensorflow" not in sys.modules:
    # First to load TensorFlow: keep its C++ start-up log lines (CUDA probes,
    # CPU feature notices) out of the user's terminal.
    from kpair.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()

import kpair.backbone  # noqa: E402, F401  (registers ResNet18Backbone)
import kpair.losses  # noqa: E402, F401  (registers PairLoss, PairTypeLoss)
import kpair.pair_model  # noqa: E402, F401  (registers PairModel)
import layers  # noqa: E402, F401  (registers the normalization layers)

__version__ = "0.1.0"
