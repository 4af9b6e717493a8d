"""nm_hebb_jax: NM-Hebb (arXiv 2508.19896) and Hebbian learning with gradients (arXiv 2107.01729) in JAX."""

__version__ = "0.1.0"
