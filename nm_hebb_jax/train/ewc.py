"""Elastic-weight consolidation (EWC) in the trainer: the state, the Fisher and its refresh.

NM-Hebb consolidates with ``R_EWC = mean_i F̃_i (θ_i − θ*_i)²`` (docs/method.md, Phase 1,
"Consolidation"). The pieces, and where each lives:

- the penalty, a pure function of arrays: :func:`nm_hebb_jax.losses.ewc_penalty`;
- the loss term, read from ``state['ewc']`` by :func:`nm_hebb_jax.objectives.with_ewc`;
- the EWC state ``{'anchor': θ*, 'fisher': F}`` (a pytree beside the train state, saved in the same
  checkpoint), its initial value :func:`init_ewc_state`, and its refresh :func:`refresh` (this
  module): ``F`` is the empirical diagonal Fisher, the mean over ``ewc.fisher_examples`` training
  examples of the squared *per-example* CE gradient with BatchNorm in inference mode
  (:func:`fisher_diagonal` of :func:`make_fisher_fn`), and θ* the parameters at the refresh;
- when: online in phase 1, every ``ewc.refresh_epochs`` (:func:`refresh_due`, the interval from
  :func:`nm_hebb_jax.train.validate.durations`), and once at the start of phase 2, anchored at the
  end of phase 1 (:mod:`nm_hebb_jax.train.loop`).
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from nm_hebb_jax import losses
from nm_hebb_jax.losses._utils import compute_dtype

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
PyTree = Any
ExampleLossFn = Callable[..., Array]  # (params, example, *extra_args) -> scalar

#: ``refresh_index`` of the phase-2 anchor (the end of phase 1); phase 1's refreshes count from 1.
PHASE2_REFRESH = 1_000_000


def init_ewc_state(backbone_params: PyTree) -> dict:
    """EWC state before the first refresh: anchor = current params, Fisher = 0 (term is 0).

    The anchor is a copy: the train step donates the state, so the EWC state must not share
    its buffers (XLA rejects a call that donates a buffer and passes it again).
    """
    return {
        "anchor": jax.tree.map(jnp.copy, backbone_params),
        "fisher": jax.tree.map(jnp.zeros_like, backbone_params),
    }


def refresh_due(t: int, every: int) -> bool:
    """Whether phase 1 refreshes the EWC state before its phase-local step ``t``."""
    return t > 0 and t % every == 0


def make_fisher_fn(model) -> Callable:
    """Per-example CE loss ``(backbone_params, example, batch_stats) -> scalar`` for the Fisher.

    BatchNorm runs in inference mode (docs/method.md: per-example gradients, BN in inference mode).
    """

    def per_example_loss(backbone_params, example, batch_stats):
        logits, _ = model.apply(
            {"params": backbone_params, "batch_stats": batch_stats},
            example["image"][None],
            train=False,
        )
        return losses.cross_entropy(logits, example["label"][None])[0]

    return per_example_loss


def refresh(
    fisher_fn: ExampleLossFn,
    dataset,
    backbone_params: PyTree,
    batch_stats: PyTree,
    *,
    seed: int,
    refresh_index: int,
    num_examples: int,
    chunk_size: int,
) -> dict:
    """A new EWC state at ``backbone_params``: Fisher over a seeded sample, anchor = a copy.

    Args:
      fisher_fn: the per-example loss of :func:`make_fisher_fn` (the same object every call, so
        the Fisher's chunk step compiles once).
      dataset: the run's :class:`~nm_hebb_jax.data.Dataset` (its training split is sampled).
      backbone_params, batch_stats: the model at the refresh.
      seed: the run's seed.
      refresh_index: which refresh this is (phase 1: 1, 2, ...; phase 2: :data:`PHASE2_REFRESH`);
        with ``seed`` it fixes the sample, so a resumed run draws the same examples.
      num_examples: ``ewc.fisher_examples`` (at most the training split).
      chunk_size: ``ewc.chunk_size``, examples per vmapped chunk.

    Returns:
      ``{'anchor': ..., 'fisher': ...}`` on the host's default placement (the caller shards it).
    """
    images, labels = dataset.get_arrays("train")
    n = min(num_examples, len(labels))
    rng = np.random.default_rng([seed, 7, refresh_index])
    idx = np.sort(rng.choice(len(labels), size=n, replace=False))
    x = dataset.normalize(images[idx])
    y = labels[idx].astype(np.int32)
    bs = max(chunk_size, 64)
    batches = [{"image": x[i : i + bs], "label": y[i : i + bs]} for i in range(0, n, bs)]
    fisher = fisher_diagonal(
        fisher_fn, backbone_params, batches, chunk_size=chunk_size, extra_args=(batch_stats,)
    )
    anchor = jax.tree.map(jnp.copy, backbone_params)
    return {"anchor": anchor, "fisher": fisher}


@functools.partial(jax.jit, static_argnames=("loss_fn",))
def _accumulate_squared_grads(
    params: PyTree,
    acc: PyTree,
    chunk: PyTree,
    mask: Array,
    extra_args: tuple,
    *,
    loss_fn: ExampleLossFn,
) -> PyTree:
    """``acc + Σ_n mask_n · (∂ loss_fn(params, chunk_n)/∂params)²`` for one chunk.

    One jitted call per chunk, driven by a host loop: on XLA:CPU a convolution inside a
    ``lax.scan`` body runs far slower than at the top level of a computation (BENCHMARKS.md), so
    the chunks are not scanned.
    """
    in_axes = (None, 0) + (None,) * len(extra_args)
    grads = jax.vmap(jax.grad(loss_fn), in_axes=in_axes)(params, chunk, *extra_args)

    def add(a: Array, g: Array) -> Array:
        m_b = mask.reshape((mask.shape[0],) + (1,) * (g.ndim - 1))
        return a + jnp.sum(jnp.where(m_b, jnp.square(g.astype(a.dtype)), 0.0), axis=0)

    return jax.tree.map(add, acc, grads)


def _batch_size(batch: PyTree) -> int:
    leaves = jax.tree.leaves(batch)
    if not leaves:
        raise ValueError("fisher_diagonal: a batch has no array leaves")
    sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(
            f"fisher_diagonal: every leaf of a batch needs the same leading batch axis, "
            f"got leading sizes {sorted(str(s) for s in sizes)}"
        )
    return sizes.pop()


def _take_rows(x: ArrayLike, index: np.ndarray) -> ArrayLike:
    """Rows ``index`` of ``x``, on the host for NumPy inputs and on device otherwise."""
    return x[index] if isinstance(x, np.ndarray) else jnp.asarray(x)[index]


def fisher_diagonal(
    loss_fn: ExampleLossFn,
    params: PyTree,
    batches: Iterable[PyTree],
    *,
    chunk_size: int = 16,
    extra_args: tuple = (),
) -> PyTree:
    """Empirical diagonal Fisher: mean over all examples of the squared per-example gradient.

    ``F_i = (1/M) Σ_m (∂ℓ(θ, x_m)/∂θ_i)²`` over the ``M`` examples of all ``batches``. Per-example
    gradients come from ``jax.vmap(jax.grad(loss_fn))`` on chunks of ``chunk_size`` examples, one
    jitted call per chunk accumulating the sum of squares, so peak memory is about
    ``chunk_size × |θ|`` whatever the batch size. The per-chunk accumulation is jit-compiled once
    per ``(loss_fn, chunk_size, example shape)``: pass the *same* ``loss_fn`` object across
    calls to reuse it, and pass arrays that change between calls (e.g. BatchNorm statistics) through
    ``extra_args`` rather than capturing them in a new closure, which would recompile. Batches are
    padded (by repeating their first example) to a multiple of ``chunk_size`` and the padding is
    masked out, so a short last batch does not trigger a recompilation.

    Args:
      loss_fn: ``loss_fn(params, example, *extra_args) -> scalar`` for ONE example (no batch
        axis), e.g. the cross-entropy of a model applied with BatchNorm in inference mode.
      params: the parameters θ at which the Fisher is taken (pytree of float arrays).
      batches: iterable of pytrees whose leaves share a leading batch axis (e.g.
        ``{'image': [B, H, W, 3], 'label': [B]}``); batch sizes may differ.
      chunk_size: examples per vmapped chunk (memory/speed trade-off).
      extra_args: extra (non-differentiated, non-batched) pytree arguments of ``loss_fn``, e.g.
        ``(batch_stats,)``; traced, so new values do not trigger a recompilation.

    Returns:
      Pytree like ``params`` with the diagonal Fisher, float32 (float64 for float64 params).

    Raises:
      ValueError: if ``batches`` holds no example, or a batch's leaves disagree on the batch size.

    Example:
      >>> import jax.numpy as jnp
      >>> loss_fn = lambda p, ex: 0.5 * (p["w"] @ ex["x"] - ex["y"]) ** 2
      >>> params = {"w": jnp.array([1.0, 0.0])}
      >>> batch = {"x": jnp.array([[1.0, 2.0], [0.0, 1.0]]), "y": jnp.array([0.0, 1.0])}
      >>> # per-example grads (w·x − y) x: [1, 2] and [0, −1]  ->  F = ([1, 4] + [0, 1]) / 2
      >>> print(fisher_diagonal(loss_fn, params, [batch])["w"])
      [0.5 2.5]

    References:
      Kirkpatrick et al., "Overcoming catastrophic forgetting in neural networks", PNAS 2017;
      Kunstner et al., "Limitations of the empirical Fisher approximation for natural gradient
      descent", NeurIPS 2019 (empirical vs. true Fisher).
    """
    if not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise ValueError(f"fisher_diagonal: chunk_size must be a positive int, got {chunk_size!r}")
    params = jax.tree.map(jnp.asarray, params)
    extra_args = tuple(extra_args)
    acc = jax.tree.map(lambda p: jnp.zeros(p.shape, compute_dtype(p)), params)
    chunk = int(chunk_size)
    count = 0
    for batch in batches:
        n = _batch_size(batch)
        if n == 0:
            continue
        padded_size = -(-n // chunk) * chunk
        if padded_size > n:
            index = np.concatenate([np.arange(n), np.zeros(padded_size - n, np.int64)])
            batch = jax.tree.map(lambda x, index=index: _take_rows(x, index), batch)
        valid = np.arange(padded_size) < n
        for start in range(0, padded_size, chunk):
            part = jax.tree.map(lambda x, s=start: x[s : s + chunk], batch)
            acc = _accumulate_squared_grads(
                params,
                acc,
                part,
                jnp.asarray(valid[start : start + chunk]),
                extra_args,
                loss_fn=loss_fn,
            )
        count += n
    if count == 0:
        raise ValueError("fisher_diagonal: `batches` yielded no examples")
    return jax.tree.map(lambda a: a / count, acc)
