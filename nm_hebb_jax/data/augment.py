"""Counter-based randomness, vectorised crop/flip augmentation and normalisation statistics.

Everything here is host-side numpy. Randomness that must not depend on how a global batch is
split across processes is drawn from a counter-based hash (SplitMix64) of ``(seed, stream, step,
row)``: row ``r`` of the global batch at step ``s`` gets the same crop and flip on every process,
whether the batch is computed whole or in per-process slices.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

# Stream tags, so that different consumers of (seed, step, row) draw independent numbers.
STREAM_TRAIN_AUG = 0x5EED0001
STREAM_BALANCED_AUG = 0x5EED0002

# Standard per-channel statistics of the CIFAR training sets (pixels in [0, 1]).
PUBLISHED_STATS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}

_U64 = np.uint64
_GOLDEN = _U64(0x9E3779B97F4A7C15)
_MIX1 = _U64(0xBF58476D1CE4E5B9)
_MIX2 = _U64(0x94D049BB133111EB)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser applied elementwise.

    Args:
      x: uint64 array of any shape.

    Returns:
      uint64 array of the same shape; a bijective, well-mixed hash of ``x``.
    """
    x = np.asarray(x, dtype=_U64)
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> _U64(30))) * _MIX1
        z = (z ^ (z >> _U64(27))) * _MIX2
        return z ^ (z >> _U64(31))


def row_keys(seed: int, stream: int, step: int, rows: np.ndarray) -> np.ndarray:
    """Per-row random keys, a pure function of ``(seed, stream, step, row)``.

    Args:
      seed: any Python int (reduced modulo 2**64).
      stream: a stream tag (one of the ``STREAM_*`` constants).
      step: the training step (>= 0).
      rows: int array [R] of global row indices in the batch.

    Returns:
      uint64 array [R] of keys; draw numbers from them with :func:`draw`.
    """
    base = splitmix64(np.array([seed % 2**64], dtype=_U64) ^ _U64(stream % 2**64))
    base = splitmix64(base ^ _U64(step % 2**64))
    return splitmix64(base ^ np.asarray(rows, dtype=np.int64).astype(_U64))


def draw(keys: np.ndarray, index: int) -> np.ndarray:
    """The ``index``-th uint64 random number of every key.

    Args:
      keys: uint64 array [R] from :func:`row_keys`.
      index: which number (0, 1, 2, ...) to draw.

    Returns:
      uint64 array [R], uniformly distributed bits.
    """
    with np.errstate(over="ignore"):
        return splitmix64(keys + _U64(index + 1) * _GOLDEN)


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """A random crop of a zero-padded image, optionally followed by a horizontal flip.

    Attributes:
      pad: zero padding (pixels) on every side before cropping back to the original size; the
        crop offset is uniform in ``[0, 2 * pad]`` on each axis, i.e. a translation by up to
        ``pad`` pixels.
      flip: whether to flip horizontally with probability 1/2.
    """

    pad: int
    flip: bool

    def __call__(self, images: np.ndarray, keys: np.ndarray) -> np.ndarray:
        """Augments a batch in one vectorised gather.

        Args:
          images: uint8 [B, H, W, C].
          keys: uint64 [B] per-row keys (:func:`row_keys`).

        Returns:
          uint8 [B, H, W, C]; padding pixels are 0 (black, before normalisation).
        """
        b, h, w, _ = images.shape
        span = _U64(2 * self.pad + 1)
        dy = (draw(keys, 0) % span).astype(np.int64)
        dx = (draw(keys, 1) % span).astype(np.int64)
        cols = np.arange(w)
        if self.flip:
            flip = (draw(keys, 2) >> _U64(63)).astype(bool)
            cols = np.where(flip[:, None], w - 1 - cols[None, :], cols[None, :])
        else:
            cols = np.broadcast_to(cols, (b, w))
        padded = np.pad(images, ((0, 0), (self.pad, self.pad), (self.pad, self.pad), (0, 0)))
        ys = dy[:, None] + np.arange(h)[None, :]  # [B, H]
        xs = dx[:, None] + cols  # [B, W]
        return padded[np.arange(b)[:, None, None], ys[:, :, None], xs[:, None, :]]


def augmentation_for(name: str, image_shape: Sequence[int]) -> Augmentation:
    """The augmentation of a dataset, chosen by its name.

    CIFAR-10/100: 4-pixel padded crop + flip. TinyImageNet: 8-pixel padded crop + flip. Digits:
    padded crop with ``pad = max(1, H // 16)`` (2 pixels at 32x32, i.e. half a pixel of the original
    8x8 digit) and no flip, because digits are not mirror-symmetric. Any other name: ``pad =
    max(1, H // 8)`` + flip.

    Args:
      name: dataset name (``data.name``).
      image_shape: (H, W, C).

    Returns:
      The :class:`Augmentation`.
    """
    h = int(image_shape[0])
    if name in ("cifar10", "cifar100"):
        return Augmentation(pad=4, flip=True)
    if name == "tinyimagenet":
        return Augmentation(pad=8, flip=True)
    if name == "digits":
        return Augmentation(pad=max(1, h // 16), flip=False)
    return Augmentation(pad=max(1, h // 8), flip=True)


def channel_stats(
    images: np.ndarray, index: np.ndarray | None = None, *, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-channel mean and standard deviation of uint8 images, in [0, 1] units.

    Computed from per-channel 256-bin histograms, chunk by chunk, so memory stays small.

    Args:
      images: uint8 [N, H, W, C].
      index: optional int [M] rows of ``images`` to use (default: all).
      chunk: images per chunk.

    Returns:
      ``(mean, std)``, each float32 [C].
    """
    rows = np.arange(images.shape[0]) if index is None else np.asarray(index)
    c = images.shape[-1]
    hist = np.zeros((c, 256), dtype=np.int64)
    for lo in range(0, rows.shape[0], chunk):
        part = images[rows[lo : lo + chunk]].reshape(-1, c)
        for ch in range(c):
            hist[ch] += np.bincount(part[:, ch], minlength=256)
    values = np.arange(256, dtype=np.float64) / 255.0
    n = hist.sum(axis=1)
    mean = hist @ values / n
    var = hist @ (values**2) / n - mean**2
    return mean.astype(np.float32), np.sqrt(np.maximum(var, 0.0)).astype(np.float32)
