"""The stems of kpair's backbone: the layers before its first stage.

`small` is a 3x3 convolution, stride 1, without pooling (for images of
about 32 pixels); `imagenet` a 7x7 convolution, stride 2, then 3x3 max
pooling, stride 2. The names live apart from `kpair.models.backbone` so that
`kpair.config` checks a stem without loading Keras.
"""

STEMS = ("small", "imagenet")
