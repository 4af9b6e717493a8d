"""Private helpers shared by the loss modules: dtype promotion, masks, pytree checks."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
ArrayLike = jax.typing.ArrayLike
PyTree = Any


def compute_dtype(*arrays: ArrayLike) -> np.dtype:
    """The floating dtype to compute in: the inputs' common dtype, but at least float32.

    bfloat16/float16 inputs are computed in float32, float64 inputs (under x64) stay float64, and
    integer or boolean inputs are computed in float32.
    """
    dtype = jnp.result_type(*(jnp.asarray(a).dtype for a in arrays))
    if not jnp.issubdtype(dtype, jnp.floating):
        return np.dtype(jnp.float32)
    return np.dtype(jnp.promote_types(dtype, jnp.float32))


def as_mask(where: ArrayLike | None, shape: tuple[int, ...], fn_name: str) -> Array | None:
    """Validates a per-example ``where=`` mask and returns it as a boolean array (or None)."""
    if where is None:
        return None
    where = jnp.asarray(where)
    if where.shape != tuple(shape):
        raise ValueError(
            f"{fn_name}: `where` has shape {where.shape}, expected the per-example shape {shape}"
        )
    return where.astype(bool)


def check_same_structure(fn_name: str, **trees: PyTree) -> None:
    """Raises a one-line ValueError unless all pytrees share their treedef and leaf shapes."""
    names = list(trees)
    first = names[0]
    ref_def = jax.tree.structure(trees[first])
    ref_shapes = [jnp.shape(x) for x in jax.tree.leaves(trees[first])]
    for name in names[1:]:
        treedef = jax.tree.structure(trees[name])
        if treedef != ref_def:
            raise ValueError(
                f"{fn_name}: `{name}` and `{first}` must have the same pytree structure, "
                f"got {treedef} and {ref_def}"
            )
        shapes = [jnp.shape(x) for x in jax.tree.leaves(trees[name])]
        if shapes != ref_shapes:
            paths = [
                jax.tree_util.keystr(path)
                for path, _ in jax.tree_util.tree_leaves_with_path(trees[first])
            ]
            bad = next(i for i, (a, b) in enumerate(zip(shapes, ref_shapes, strict=True)) if a != b)
            raise ValueError(
                f"{fn_name}: leaf {paths[bad] or '<root>'} has shape {shapes[bad]} in `{name}` "
                f"but {ref_shapes[bad]} in `{first}`"
            )


def l2_normalize(x: Array, eps: float) -> Array:
    """``x / sqrt(‖x‖² + eps)`` along the last axis: finite value and gradient at ``x = 0``."""
    return x * jax.lax.rsqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + eps)


def pair_gram(z: Array) -> Array:
    """``z zᵀ`` at full float32 precision (no TF32/bf16 passes on accelerators)."""
    return jnp.matmul(z, z.T, precision=jax.lax.Precision.HIGHEST)
