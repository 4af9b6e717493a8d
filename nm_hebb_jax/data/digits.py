"""scikit-learn's handwritten digits as small RGB images (offline, ships with scikit-learn)."""

from __future__ import annotations

import numpy as np

from nm_hebb_jax.data.errors import DataError

DIGITS_CLASSES = tuple(str(i) for i in range(10))
# Upsampling the 8x8 scans further gains nothing; the bound keeps the arrays (1,797 x S x S x 3
# bytes, 1.4 GB at 512) from exhausting memory on a mistyped size.
MAX_IMAGE_SIZE = 512


def load_digits_arrays(image_size: int | None = 32) -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 8x8 digits of ``sklearn.datasets.load_digits`` as uint8 RGB images.

    Pixel values 0..16 are scaled to 0..255 (rounded); images are upsampled by nearest-neighbour
    (pixel ``i`` of the output takes source pixel ``floor(i * 8 / image_size)``, so sizes that are
    multiples of 8 give crisp square blocks) and replicated to 3 channels.

    Args:
      image_size: output height and width in ``[1, MAX_IMAGE_SIZE]`` (default 32; ``None`` = 32).

    Returns:
      ``(images, labels)``: uint8 [1797, S, S, 3] and int32 [1797] in 0..9.

    Raises:
      DataError: ``image_size`` out of range (one line).
    """
    from sklearn.datasets import load_digits

    size = 32 if image_size is None else int(image_size)
    if not 1 <= size <= MAX_IMAGE_SIZE:
        raise DataError(f"data.image_size={size} must be in [1, {MAX_IMAGE_SIZE}] for digits")
    digits = load_digits()
    pixels = np.round(np.asarray(digits.images, dtype=np.float64) * (255.0 / 16.0))
    pixels = np.clip(pixels, 0, 255).astype(np.uint8)  # [N, 8, 8]
    src = (np.arange(size) * 8) // size
    pixels = pixels[:, src][:, :, src]
    images = np.repeat(pixels[..., None], 3, axis=-1)
    return np.ascontiguousarray(images), np.asarray(digits.target, dtype=np.int32)
