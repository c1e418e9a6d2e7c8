"""kpair: pair models over two image domains with swappable normalization.

Importing kpair registers every custom Keras object of the project (under the
package name `kpair`), so that `keras.saving.load_model(path)` can load
kpair's `.keras` files with `safe_mode` left at True.
"""

import layers  # noqa: F401  (registers the normalization layers)

__version__ = "0.1.0"
