"""Classification losses and metrics: softmax cross-entropy (optionally label-smoothed) and Top-1.

Both are per-example (optax style): they return one value per example and take an optional
per-example ``where=`` mask; masked examples give exactly 0 and receive no gradient, whatever their
logits hold (so padded rows may contain garbage, even NaN).
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import optax

from nm_hebb_jax.losses._utils import as_mask, compute_dtype

Array = jax.Array
ArrayLike = jax.typing.ArrayLike


def _check_logits_labels(fn_name: str, logits: Array, labels: Array) -> None:
    if logits.ndim < 1 or labels.shape != logits.shape[:-1]:
        raise ValueError(
            f"{fn_name}: labels shape {labels.shape} must equal logits shape {logits.shape} "
            "without its last (class) axis"
        )
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise TypeError(f"{fn_name}: labels must be integer class ids, got dtype {labels.dtype}")


def cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    label_smoothing: float | ArrayLike = 0.0,
    where: ArrayLike | None = None,
) -> Array:
    """Per-example softmax cross-entropy with integer labels and optional label smoothing.

    ``ℓ_n = −Σ_k t_nk log softmax(logits_n)_k`` with ``t_n = (1 − α)·onehot(y_n) + α/K``. With
    ``α = 0`` (a static Python zero) this is ``optax.softmax_cross_entropy_with_integer_labels``;
    otherwise the targets come from ``optax.smooth_labels`` and the loss from
    ``optax.softmax_cross_entropy``, so ``α`` may also be a traced array (a schedule). Computed in
    float32 (float64 under x64) even for bfloat16 logits.

    Args:
      logits: unnormalised class scores, shape ``[N, K]`` (any leading shape ``[..., K]`` works).
      labels: integer class ids in ``[0, K)``, shape ``[N]`` (the leading shape of ``logits``).
      label_smoothing: ``α`` in ``[0, 1]``; the mass moved uniformly onto all ``K`` classes.
      where: optional boolean mask of shape ``[N]``; ``False`` entries give 0 and no gradient, and
        their logits/labels are never read (padded examples may hold anything).

    Returns:
      Per-example losses, shape ``[N]``, float32.

    Example:
      >>> import jax.numpy as jnp
      >>> logits = jnp.array([[2.0, 0.0], [0.0, 0.0]])
      >>> labels = jnp.array([0, 1])
      >>> print(jnp.round(cross_entropy(logits, labels), 4))
      [0.1269 0.6931]
      >>> print(jnp.round(cross_entropy(logits, labels, where=jnp.array([True, False])), 4))
      [0.1269 0.    ]

    References:
      Szegedy et al., "Rethinking the Inception Architecture for Computer Vision", CVPR 2016
      (label smoothing); Müller et al., "When does label smoothing help?", NeurIPS 2019.
    """
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    _check_logits_labels("cross_entropy", logits, labels)
    static_alpha = isinstance(label_smoothing, numbers.Real)
    if static_alpha and not 0.0 <= float(label_smoothing) <= 1.0:
        raise ValueError(f"cross_entropy: label_smoothing must be in [0, 1], got {label_smoothing}")
    mask = as_mask(where, labels.shape, "cross_entropy")
    logits = logits.astype(compute_dtype(logits))
    if mask is not None:
        # Sanitise masked rows so that neither their value nor their gradient can be NaN.
        logits = jnp.where(mask[..., None], logits, 0.0)
        labels = jnp.where(mask, labels, 0)
    if static_alpha and float(label_smoothing) == 0.0:
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    else:
        num_classes = logits.shape[-1]
        one_hot = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
        targets = optax.smooth_labels(one_hot, jnp.asarray(label_smoothing, logits.dtype))
        loss = optax.softmax_cross_entropy(logits, targets)
    if mask is not None:
        loss = jnp.where(mask, loss, 0.0)
    return loss


def accuracy(logits: ArrayLike, labels: ArrayLike, *, where: ArrayLike | None = None) -> Array:
    """Per-example Top-1 correctness: 1.0 where ``argmax(logits) == label``, else 0.0.

    Ties go to the lowest class index (``jnp.argmax``). Take ``sum(acc) / sum(where)`` for the exact
    accuracy of a padded batch.

    Args:
      logits: class scores, shape ``[N, K]`` (any leading shape ``[..., K]`` works).
      labels: integer class ids, shape ``[N]``.
      where: optional boolean mask of shape ``[N]``; ``False`` entries give 0.

    Returns:
      Per-example 0/1 values, shape ``[N]``, float32.

    Example:
      >>> import jax.numpy as jnp
      >>> logits = jnp.array([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0]])
      >>> print(accuracy(logits, jnp.array([0, 1, 1])))
      [1. 1. 0.]
      >>> print(accuracy(logits, jnp.array([0, 1, 1]), where=jnp.array([True, False, True])))
      [1. 0. 0.]

    References:
      Standard Top-1 accuracy, e.g. Russakovsky et al., "ImageNet Large Scale Visual Recognition
      Challenge", IJCV 2015.
    """
    logits = jnp.asarray(logits)
    labels = jnp.asarray(labels)
    _check_logits_labels("accuracy", logits, labels)
    mask = as_mask(where, labels.shape, "accuracy")
    correct = jnp.argmax(logits, axis=-1) == labels
    if mask is not None:
        correct = correct & mask
    return correct.astype(jnp.float32)
