"""Top-activating image patches of conv channels: what a deeper layer responds to.

A deeper layer's kernel acts on feature maps, not pixels, so drawing its weights shows little.
Instead, for each channel, the ``k`` evaluation images whose strongest response (over all
positions) is largest are found, and the input region that position sees, its receptive field,
is cut out of each (Zeiler & Fergus, "Visualizing and understanding convolutional networks",
ECCV 2014). Everything here is host-side numpy; the caller supplies the activations and the
receptive-field geometry (:func:`receptive_field_of_stack` for a plain stack of layers,
:func:`receptive_field_from_gradient` for any network).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class ReceptiveField:
    """Where output position ``(r, c)`` of a layer looks in its input image.

    Attributes:
      size: ``(height, width)`` of the field in input pixels.
      stride: input pixels between neighbouring output positions, ``(rows, cols)``.
      offset: input coordinate of the field's top-left corner for output position ``(0, 0)``;
        negative when the field starts in the zero padding.
    """

    size: tuple[int, int]
    stride: tuple[int, int]
    offset: tuple[int, int]

    def top_left(self, row: int, col: int) -> tuple[int, int]:
        """Input coordinate of the top-left corner of position ``(row, col)``'s field."""
        return (self.offset[0] + row * self.stride[0], self.offset[1] + col * self.stride[1])


def receptive_field_of_stack(layers: Sequence[tuple[int, int, int]]) -> ReceptiveField:
    """The receptive field after a stack of square conv / pooling layers.

    Args:
      layers: ``(kernel, stride, padding)`` per layer, input first (a 2x2 pooling with stride 2
        is ``(2, 2, 0)``; a VALID 5x5 conv is ``(5, 1, 0)``).

    Returns:
      The :class:`ReceptiveField` of the last layer's output positions.

    Example:
      >>> receptive_field_of_stack([(5, 1, 0), (2, 2, 0), (3, 1, 0)])
      ReceptiveField(size=(10, 10), stride=(2, 2), offset=(0, 0))
    """
    size, jump, start = 1, 1, 0
    for kernel, stride, padding in layers:
        size += (kernel - 1) * jump
        start -= padding * jump
        jump *= stride
    return ReceptiveField((size, size), (jump, jump), (start, start))


def receptive_field_from_gradient(
    fn: Callable[[np.ndarray], np.ndarray], image_shape: Sequence[int], *, seed: int = 0
) -> ReceptiveField:
    """Measures a network's receptive field from the gradient of one output position.

    The gradient of the channel-summed response at the central output position with respect to
    the input is non-zero exactly on the pixels that position sees (up to units that happen to be
    inactive, so four random inputs are combined). The stride is the input size over the output
    size.

    Args:
      fn: ``fn(x [1, H, W, C]) -> activation [1, h, w, C_out]``, differentiable with JAX.
      image_shape: ``(H, W, C)``.
      seed: seed of the random inputs.

    Returns:
      The :class:`ReceptiveField` (square or not, as measured).
    """
    import jax
    import jax.numpy as jnp

    h_in, w_in = int(image_shape[0]), int(image_shape[1])
    out_shape = jax.eval_shape(fn, jnp.zeros((1, *image_shape), jnp.float32)).shape
    h_out, w_out = int(out_shape[1]), int(out_shape[2])
    rc, cc = h_out // 2, w_out // 2

    def response(x):
        return jnp.sum(fn(x)[0, rc, cc])

    grad = jax.jit(jax.grad(response))
    keys = jax.random.split(jax.random.key(seed), 4)
    support = np.zeros((h_in, w_in), bool)
    for key in keys:
        g = np.asarray(grad(jax.random.normal(key, (1, *image_shape), jnp.float32)))[0]
        support |= np.abs(g).sum(axis=-1) > 0
    rows, cols = np.flatnonzero(support.any(axis=1)), np.flatnonzero(support.any(axis=0))
    if not rows.size:
        raise ValueError("the response does not depend on the input: no receptive field")
    stride = (max(1, round(h_in / h_out)), max(1, round(w_in / w_out)))
    (fh, top), (fw, left) = _axis(rows, h_in, rc, stride[0]), _axis(cols, w_in, cc, stride[1])
    return ReceptiveField((fh, fw), stride, (top - rc * stride[0], left - cc * stride[1]))


def _axis(idx: np.ndarray, n_in: int, centre: int, stride: int) -> tuple[int, int]:
    """``(size, start)`` of a field along one axis from its measured support ``idx``.

    A support that reaches the image border may be cut there; the field is then taken as
    symmetric about the position's centre ``centre * stride + (stride - 1) / 2``.
    """
    lo, hi = int(idx[0]), int(idx[-1])
    if lo > 0 and hi < n_in - 1:
        return hi - lo + 1, lo
    middle = centre * stride + (stride - 1) / 2.0
    half = max(middle - lo, hi - middle)
    return int(round(2 * half + 1)), int(round(middle - half))


@dataclasses.dataclass
class TopActivations:
    """Running top-``k`` responses of every channel over batches of activations.

    For each channel, every image contributes its strongest position only, so the ``k`` entries
    come from ``k`` different images. Ties are broken by the lower image index.

    Attributes (after updates):
      values: ``[C, k]`` float64 responses, descending (``-inf`` where fewer than ``k`` images).
      index: ``[C, k]`` image indices (as counted over all updates).
      position: ``[C, k, 2]`` ``(row, col)`` of the response in the activation map.
    """

    k: int
    values: np.ndarray | None = None
    index: np.ndarray | None = None
    position: np.ndarray | None = None
    seen: int = 0

    def update(self, activation: np.ndarray) -> None:
        """Adds a batch ``[B, h, w, C]`` of activations (images ``seen .. seen + B - 1``)."""
        a = np.asarray(activation, np.float64)
        b, h, w, c = a.shape
        flat = a.reshape(b, h * w, c)
        where = np.argmax(flat, axis=1)  # [B, C]
        best = np.take_along_axis(flat, where[:, None, :], axis=1)[:, 0, :]  # [B, C]
        if self.values is None:
            self.values = np.full((c, self.k), -np.inf)
            self.index = np.full((c, self.k), -1, np.int64)
            self.position = np.zeros((c, self.k, 2), np.int64)
        values = np.concatenate([self.values, best.T], axis=1)
        index = np.concatenate(
            [self.index, np.broadcast_to(np.arange(self.seen, self.seen + b), (c, b))], axis=1
        )
        pos = np.stack([where.T // w, where.T % w], axis=-1)
        position = np.concatenate([self.position, pos], axis=1)
        order = np.lexsort((index, -values), axis=1)[:, : self.k]  # value desc, then index
        self.values = np.take_along_axis(values, order, axis=1)
        self.index = np.take_along_axis(index, order, axis=1)
        self.position = np.take_along_axis(position, order[..., None], axis=1)
        self.seen += b


def crop_patches(
    images: np.ndarray,
    index: np.ndarray,
    position: np.ndarray,
    field: ReceptiveField,
    *,
    pad_value: int = 128,
) -> np.ndarray:
    """Cuts the receptive fields of the given positions out of the images.

    Args:
      images: uint8 ``[N, H, W, 3]``.
      index: ``[R, K]`` image indices (``-1`` = none: an all-``pad_value`` patch).
      position: ``[R, K, 2]`` output positions ``(row, col)``.
      field: the layer's :class:`ReceptiveField`.
      pad_value: grey level of the parts of a field outside the image.

    Returns:
      uint8 ``[R, K, fh, fw, 3]``.
    """
    fh, fw = field.size
    r_count, k_count = index.shape
    out = np.full((r_count, k_count, fh, fw, images.shape[-1]), pad_value, np.uint8)
    h, w = images.shape[1:3]
    for r in range(r_count):
        for k in range(k_count):
            i = int(index[r, k])
            if i < 0:
                continue
            top, left = field.top_left(int(position[r, k, 0]), int(position[r, k, 1]))
            y0, x0 = max(top, 0), max(left, 0)
            y1, x1 = min(top + fh, h), min(left + fw, w)
            if y1 > y0 and x1 > x0:
                out[r, k, y0 - top : y1 - top, x0 - left : x1 - left] = images[i, y0:y1, x0:x1]
    return out


@dataclasses.dataclass(frozen=True)
class ChannelPatches:
    """The channels chosen for a patch picture and where their top responses are.

    Attributes:
      channels: ``[R]`` channel indices, most class-selective first.
      selectivity: ``[R]`` their class selectivity index.
      num_channels: C of the layer.
      index, position, values: the rows of :class:`TopActivations` for ``channels``.
    """

    channels: np.ndarray
    selectivity: np.ndarray
    num_channels: int
    index: np.ndarray
    position: np.ndarray
    values: np.ndarray


def select_channels(
    activation_batches, labels: np.ndarray, num_classes: int, *, rows: int = 12, k: int = 8
) -> ChannelPatches:
    """The ``rows`` most class-selective live channels of a layer and their top-``k`` positions.

    Args:
      activation_batches: iterable of ``[B, h, w, C]`` activations of consecutive images, in the
        order of ``labels``; negative responses count as 0 for the selectivity (as the filter
        metrics do) but rank the top positions as they are.
      labels: ``[N]`` class ids.
      num_classes: K.
      rows: channels to keep (fewer if the layer has fewer live ones).
      k: top positions per channel.

    Returns:
      A :class:`ChannelPatches`. Channels whose class means are all 0 (dead) are never chosen;
      ties in selectivity go to the lower channel index.
    """
    from nm_hebb_jax.eval.filters import EPS, ClassMeanAccumulator, class_selectivity

    labels = np.asarray(labels)
    top = TopActivations(k)
    means = ClassMeanAccumulator(num_classes)
    start = 0
    for act in activation_batches:
        act = np.asarray(act, np.float32)
        top.update(act)
        means.update(np.maximum(act, 0.0), labels[start : start + len(act)])
        start += len(act)
    class_means = means.result()
    observed = ~np.isnan(class_means).all(axis=1)
    if observed.sum() >= 2:
        si = class_selectivity(class_means)
    else:  # one class only: no selectivity, rank by the strongest response
        si = np.zeros(class_means.shape[1])
    live = np.nan_to_num(class_means).max(axis=0) > EPS  # as filter_metrics counts live ones
    order = np.lexsort((np.arange(si.size), -np.where(live, si, -np.inf)))
    chosen = np.asarray([c for c in order if live[c]][:rows], np.int64)
    return ChannelPatches(
        channels=chosen,
        selectivity=si[chosen],
        num_channels=int(si.size),
        index=top.index[chosen],
        position=top.position[chosen],
        values=top.values[chosen],
    )
