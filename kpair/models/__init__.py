"""The models: backbone, pair model, losses, building from a config,
precision, and pretrained weights loaded onto a backbone.

Importing this package registers kpair's custom Keras objects (under the
package name `kpair`): the backbone, the pair model, the losses, and through
the backbone the normalization layers of `kpair.layers`.
"""

from kpair.models import backbone, losses, pair_model  # noqa: F401  (registration)
