"""The look of the demo data's second camera: colour cast, exposure, lens blur
and sensor noise, applied to 8-bit RGB images.

`kpair.data.demo` renders domain B through `CAMERA_B`; `kpair data demo
--camera-b-gain/--camera-b-exposure/--camera-b-blur/--camera-b-noise` make
data sets whose domains differ by more or less than the demo's (a milder
cast, a camera without noise), for figures that must hold beyond the one
data set.
"""

import dataclasses
import math

import numpy as np
from PIL import Image, ImageFilter

from kpair.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Camera:
    """A camera's look.

    Args:
        gain: gain per RGB channel (a white balance left for daylight under
            tungsten light is warm: red above green above blue).
        exposure: added to every channel after the gain, of 255.
        blur: Gaussian lens blur radius in pixels of a 32-pixel image
            (scaled with the image side).
        noise: standard deviation of Gaussian sensor noise, of 255.
    """

    gain: tuple = (1.4, 1.0, 0.6)
    exposure: float = 50.0
    blur: float = 0.6
    noise: float = 6.0

    def __post_init__(self):
        try:
            gain = tuple(float(g) for g in self.gain)
        except (TypeError, ValueError):
            gain = ()
        if len(gain) != 3 or not all(math.isfinite(g) and g > 0 for g in gain):
            raise ConfigError(
                "A camera's `gain` must be three finite numbers > 0, one per "
                f"RGB channel. Received: gain={self.gain!r}"
            )
        checks = (("exposure", -255.0, 255.0), ("blur", 0.0, 8.0),
                  ("noise", 0.0, 64.0))
        for name, low, high in checks:
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value)
                    and low <= value <= high):
                raise ConfigError(
                    f"A camera's `{name}` must be a number in [{low:g}, "
                    f"{high:g}]. Received: {name}={value!r}"
                )
        object.__setattr__(self, "gain", gain)
        for name, _, _ in checks:
            object.__setattr__(self, name, float(getattr(self, name)))

    def look(self, image, rng):
        """`image` (uint8, HxWx3) as this camera sees it; noise from `rng`."""
        cast = (image.astype(np.float32) * np.asarray(self.gain, np.float32)
                + self.exposure)
        blurred = Image.fromarray(np.clip(cast, 0, 255).astype(np.uint8))
        if self.blur:
            blurred = blurred.filter(
                ImageFilter.GaussianBlur(self.blur * image.shape[0] / 32))
        # Drawn whatever the noise, so that every later draw (patches, pairs)
        # is the same for any camera: data sets differ by the look alone.
        noisy = np.asarray(blurred, np.float32) + rng.normal(
            0.0, self.noise, cast.shape)
        return np.clip(np.round(noisy), 0, 255).astype(np.uint8)

    def settings(self):
        """The camera as JSON-ready settings (`demo.json` records them)."""
        return {"gain": list(self.gain), "exposure": self.exposure,
                "blur": self.blur, "noise": self.noise}

    def tag(self):
        """A short name of the settings, for cache directory names."""
        return "cam" + "_".join(
            f"{v:g}" for v in (*self.gain, self.exposure, self.blur, self.noise))


# Camera B of the built-in demo data (see `kpair.data.demo`).
CAMERA_B = Camera()
