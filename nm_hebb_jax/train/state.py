"""Train state, initial parameters, optimiser and learning-rate schedule.

``TrainState`` holds params (``{'backbone', 'neuromod'[, 'centers']}``), batch statistics, optimiser
state, the global step, the run's base PRNG key (as raw key data, so orbax can save it) and the
hypergradient buffers of the neuromodulator. The EWC state ``{'anchor', 'fisher'}`` is a separate
pytree (docs/method.md: "separate state, saved in the checkpoint"), owned by
:mod:`nm_hebb_jax.train.ewc` (:func:`init_ewc_state` is re-exported here).
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from nm_hebb_jax.neuromod import Neuromodulator
from nm_hebb_jax.train.ewc import init_ewc_state

__all__ = [
    "TrainState",
    "init_ewc_state",
    "init_params",
    "make_optimizer",
    "make_schedule",
    "weight_decay_mask",
]

PyTree = Any
Array = jax.Array


@flax.struct.dataclass
class TrainState:
    """Everything a train step reads and writes (replicated over the mesh).

    Attributes:
      step: global step (int32 scalar), counted across both phases.
      params: ``{'backbone': ..., 'neuromod': ...}`` (+ ``'centers'`` [C, D] for center loss).
      batch_stats: BatchNorm running statistics.
      opt_state: optax state of the phase's optimiser.
      rng: base key data (uint32 [2]); step ``t`` uses ``fold_in(key, t)``.
      hyper: neuromodulator hypergradient buffers ``{'g_r', 's', 'valid'}`` ({} when unused).
    """

    step: Array
    params: PyTree
    batch_stats: PyTree
    opt_state: PyTree
    rng: Array
    hyper: PyTree


def weight_decay_mask(params: PyTree) -> PyTree:
    """True for backbone kernels (ndim > 1); False for BN scales/biases, biases, φ and centers."""

    def mask(path, x):
        top = path[0].key if hasattr(path[0], "key") else str(path[0])
        return top == "backbone" and x.ndim > 1

    return jax.tree_util.tree_map_with_path(mask, params)


def make_optimizer(
    config, schedule: optax.Schedule, *, train_neuromod: bool
) -> optax.GradientTransformation:
    """SGD (Nesterov) with decoupled-from-BN weight decay (docs/method.md training defaults).

    ``params['neuromod']`` is updated by this optimiser only when ``train_neuromod`` (gate learning
    ``'joint_prior'``); otherwise its gradient is zeroed here and the hypergradient (or nothing,
    for a fixed gate) updates it.
    """
    parts = []
    if config.optim.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(config.optim.grad_clip))
    parts.append(optax.add_decayed_weights(config.optim.weight_decay, mask=weight_decay_mask))
    parts.append(
        optax.sgd(schedule, momentum=config.optim.momentum, nesterov=config.optim.nesterov)
    )
    main = optax.chain(*parts)

    def labels(params):
        return {
            k: jax.tree.map(
                lambda _, k=k: "frozen" if (k == "neuromod" and not train_neuromod) else "main", v
            )
            for k, v in params.items()
        }

    return optax.multi_transform({"main": main, "frozen": optax.set_to_zero()}, labels)


def make_schedule(peak_lr: float, num_steps: int, warmup_steps: int) -> optax.Schedule:
    """Linear warm-up then cosine decay to 0 over ``num_steps`` (phase-local step count)."""
    num_steps = max(int(num_steps), 1)
    warmup_steps = int(min(max(warmup_steps, 0), num_steps - 1))
    if warmup_steps == 0:
        return optax.cosine_decay_schedule(peak_lr, num_steps)
    return optax.warmup_cosine_decay_schedule(0.0, peak_lr, warmup_steps, num_steps, 0.0)


def init_params(
    model,
    rng: Array,
    image_shape,
    *,
    num_classes: int,
    embed_dim: int,
    centers: bool,
    neuromod: Neuromodulator,
) -> tuple[PyTree, PyTree]:
    """Initialises ``(params, batch_stats)`` for the model, the neuromodulator and the centers."""
    k_model, k_nm = jax.random.split(rng)
    variables = model.init(k_model, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    phi = neuromod.init(k_nm, jnp.zeros((), jnp.float32))["params"]
    params = {"backbone": variables["params"], "neuromod": phi}
    if centers:
        params["centers"] = jnp.zeros((num_classes, embed_dim), jnp.float32)
    return params, variables.get("batch_stats", {})
