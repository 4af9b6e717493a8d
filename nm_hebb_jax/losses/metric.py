"""Metric-learning losses on embeddings: NM-Hebb's Phase-2 pairwise loss and two comparators.

- ``pairwise_contrastive_loss``: the contrastive loss (Hadsell, Chopra & LeCun 2006) over all
  in-batch pairs of L2-normalised embeddings, NM-Hebb Phase 2 (docs/method.md) -- batch-level,
  scalar.
- ``center_loss``: Wen et al. 2016, per example.
- ``supervised_contrastive_loss``: Khosla et al. 2020 (L^sup_out) -- batch-level, scalar.

Pairwise distances use the Gram matrix ``z zᵀ`` (O(N²) memory, not O(N²D)) computed at full
float32 precision, so TF32/bf16 matmul passes on accelerators cannot perturb small distances. The
batch-level losses take ``where=`` to drop padded rows: the result equals the loss of the sliced
batch.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

from nm_hebb_jax.losses._utils import as_mask, compute_dtype, l2_normalize, pair_gram

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

_SUPCON_NORM_EPS = 1e-12


def _prepare(
    fn_name: str, embeddings: ArrayLike, labels: ArrayLike, where: ArrayLike | None
) -> tuple[Array, Array, Array | None]:
    """Validates shapes, casts to the compute dtype and zeroes masked rows/labels."""
    embeddings = jnp.asarray(embeddings)
    labels = jnp.asarray(labels)
    if embeddings.ndim != 2 or labels.shape != embeddings.shape[:1]:
        raise ValueError(
            f"{fn_name}: expected embeddings [N, D] and labels [N], got shapes "
            f"{embeddings.shape} and {labels.shape}"
        )
    mask = as_mask(where, labels.shape, fn_name)
    z = embeddings.astype(compute_dtype(embeddings))
    if mask is not None:
        # Padded rows may hold anything (even NaN): replace them before any arithmetic.
        z = jnp.where(mask[:, None], z, 0.0)
        labels = jnp.where(mask, labels, 0)
    return z, labels, mask


def _pair_masks(labels: Array, mask: Array | None) -> tuple[Array, Array]:
    """(same-label off-diagonal valid pairs, different-label valid pairs), both [N, N] bool."""
    n = labels.shape[0]
    same = labels[:, None] == labels[None, :]
    valid = ~jnp.eye(n, dtype=bool)
    if mask is not None:
        valid = valid & mask[:, None] & mask[None, :]
    return same & valid, ~same & valid


def pairwise_contrastive_loss(
    embeddings: ArrayLike,
    labels: ArrayLike,
    *,
    margin: float | ArrayLike = 1.0,
    normalize: bool = True,
    eps: float = 1e-12,
    where: ArrayLike | None = None,
) -> Array:
    """Contrastive loss over all in-batch pairs (NM-Hebb Phase 2, docs/method.md).

    With ``z = e / sqrt(‖e‖² + eps)`` (if ``normalize``) and ``d_ij = sqrt(‖z_i − z_j‖² + eps)``::

        L = mean_{i≠j, y_i=y_j} ‖z_i − z_j‖²  +  mean_{y_i≠y_j} max(0, m − d_ij)²

    over ordered pairs of valid examples (each unordered pair counted twice, which leaves the means
    unchanged). A part is 0 when the batch has no such pair. The eps in the norm and in the square
    root keep value and gradient finite for zero or identical embeddings. (The positive part uses
    the squared distance itself: ``d_ij² − eps``, identical up to the 1e-12 offset.)

    Args:
      embeddings: embeddings ``e``, shape ``[N, D]``.
      labels: integer class ids, shape ``[N]``.
      margin: ``m``, the distance beyond which negative pairs cost nothing.
      normalize: L2-normalise the embeddings inside the loss.
      eps: the epsilon in the norm and in the square root.
      where: optional boolean mask ``[N]``; ``False`` rows are excluded from every pair (the value
        equals the loss of the sliced batch) and receive no gradient.

    Returns:
      Scalar float32 loss.

    Example:
      >>> import jax.numpy as jnp
      >>> e = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
      >>> # positives (0,1): d² = 0; negatives (0,2), (1,2): d = √2 > m = 1 -> 0
      >>> print(f"{pairwise_contrastive_loss(e, jnp.array([0, 0, 1])):.4f}")
      0.0000
      >>> # m = 2: hinge (2 − √2)² = 0.3431 on every negative pair
      >>> print(f"{pairwise_contrastive_loss(e, jnp.array([0, 0, 1]), margin=2.0):.4f}")
      0.3431

    References:
      Hadsell, Chopra & LeCun, "Dimensionality Reduction by Learning an Invariant Mapping", CVPR
      2006; Miličević & Grbić, arXiv:2508.19896, 2025 (Phase 2).
    """
    z, labels, mask = _prepare("pairwise_contrastive_loss", embeddings, labels, where)
    if normalize:
        z = l2_normalize(z, eps)
    sq_norms = jnp.sum(jnp.square(z), axis=-1)
    sq = jnp.maximum(sq_norms[:, None] + sq_norms[None, :] - 2.0 * pair_gram(z), 0.0)
    positive, negative = _pair_masks(labels, mask)
    dist = jnp.sqrt(sq + eps)
    hinge = jnp.square(jnp.maximum(jnp.asarray(margin, z.dtype) - dist, 0.0))
    pos_term = jnp.sum(jnp.where(positive, sq, 0.0)) / jnp.maximum(jnp.sum(positive), 1)
    neg_term = jnp.sum(jnp.where(negative, hinge, 0.0)) / jnp.maximum(jnp.sum(negative), 1)
    return pos_term + neg_term


def center_loss(
    embeddings: ArrayLike,
    labels: ArrayLike,
    centers: ArrayLike,
    *,
    where: ArrayLike | None = None,
) -> Array:
    """Per-example center loss ``½ ‖z_i − c_{y_i}‖²`` on the raw (un-normalised) embeddings.

    The centers may be learned by gradient descent on this loss (their gradient is the paper's
    center update up to its rate α) or updated by the paper's rule outside the loss.

    Args:
      embeddings: embeddings ``z``, shape ``[N, D]``.
      labels: integer class ids in ``[0, K)``, shape ``[N]``.
      centers: class centers, shape ``[K, D]``.
      where: optional boolean mask ``[N]``; ``False`` rows give 0 and no gradient (to the
        embeddings or the centers).

    Returns:
      Per-example losses, shape ``[N]``, float32.

    Example:
      >>> import jax.numpy as jnp
      >>> z = jnp.array([[1.0, 2.0], [0.0, 0.0]])
      >>> centers = jnp.array([[1.0, 0.0], [3.0, 4.0]])
      >>> print(center_loss(z, jnp.array([0, 1]), centers))  # [½·4, ½·25]
      [ 2.  12.5]

    References:
      Wen, Zhang, Li & Qiao, "A Discriminative Feature Learning Approach for Deep Face
      Recognition", ECCV 2016.
    """
    z, labels, mask = _prepare("center_loss", embeddings, labels, where)
    centers = jnp.asarray(centers)
    if centers.ndim != 2 or centers.shape[1] != z.shape[1]:
        raise ValueError(
            f"center_loss: centers must have shape [num_classes, {z.shape[1]}], got {centers.shape}"
        )
    c = jnp.take(centers.astype(z.dtype), labels, axis=0)
    loss = 0.5 * jnp.sum(jnp.square(z - c), axis=-1)
    if mask is not None:
        loss = jnp.where(mask, loss, 0.0)
    return loss


def supervised_contrastive_loss(
    embeddings: ArrayLike,
    labels: ArrayLike,
    *,
    temperature: float | ArrayLike = 0.1,
    where: ArrayLike | None = None,
) -> Array:
    """Supervised contrastive loss L^sup_out (Khosla et al. 2020) on L2-normalised embeddings.

    For anchor ``i`` with positives ``P(i) = {p ≠ i : y_p = y_i}`` and ``A(i) = {a ≠ i}``::

        ℓ_i = −(1/|P(i)|) Σ_{p∈P(i)} log( exp(z_i·z_p/τ) / Σ_{a∈A(i)} exp(z_i·z_a/τ) )

    and the loss is the mean of ``ℓ_i`` over anchors with ``|P(i)| > 0`` (0 if there is none).
    The log-sum-exp is shifted by the (stop-gradient) row maximum. ``optax.ntxent`` is not reused:
    its denominator keeps only the negatives plus the one positive of each pair and it averages over
    pairs rather than anchors, so it equals L^sup_out only when every anchor has exactly one
    positive; it also has no mask and returns NaN without positives.

    Args:
      embeddings: embeddings, shape ``[N, D]`` (normalised inside the loss).
      labels: integer class ids, shape ``[N]``.
      temperature: ``τ > 0``.
      where: optional boolean mask ``[N]``; ``False`` rows are neither anchors, positives nor
        denominator terms (the value equals the loss of the sliced batch) and get no gradient.

    Returns:
      Scalar float32 loss.

    Example:
      >>> import jax.numpy as jnp
      >>> e = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
      >>> # each anchor: positive at cos 1, two negatives at cos 0 -> log(1 + 2 e^{−1/τ})
      >>> loss = supervised_contrastive_loss(e, jnp.array([0, 0, 1, 1]), temperature=1.0)
      >>> print(f"{loss:.4f}")
      0.5514

    References:
      Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020 (Eq. 2, L^sup_out).
    """
    if isinstance(temperature, numbers.Real) and not float(temperature) > 0.0:
        raise ValueError(f"supervised_contrastive_loss: temperature must be > 0, got {temperature}")
    z, labels, mask = _prepare("supervised_contrastive_loss", embeddings, labels, where)
    z = l2_normalize(z, _SUPCON_NORM_EPS)
    logits = pair_gram(z) / jnp.asarray(temperature, z.dtype)
    positive, negative = _pair_masks(labels, mask)
    others = positive | negative
    row_max = jnp.max(jnp.where(others, logits, -jnp.inf), axis=1, keepdims=True)
    row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
    # Zero the excluded entries before exp so that no inf can meet a zero cotangent (NaN grads).
    shifted = jnp.where(others, logits - row_max, 0.0)
    denom = jnp.sum(jnp.where(others, jnp.exp(shifted), 0.0), axis=1)
    log_denom = jnp.log(jnp.where(jnp.any(others, axis=1), denom, 1.0))
    log_prob = shifted - log_denom[:, None]
    num_pos = jnp.sum(positive, axis=1)
    anchor_loss = -jnp.sum(jnp.where(positive, log_prob, 0.0), axis=1) / jnp.maximum(num_pos, 1)
    is_anchor = num_pos > 0
    return jnp.sum(jnp.where(is_anchor, anchor_loss, 0.0)) / jnp.maximum(jnp.sum(is_anchor), 1)
