"""The error type of the input pipeline (declared with the project's others in
:mod:`nm_hebb_jax.errors`): every message is one line that names the problem and how to fix it."""

from nm_hebb_jax.errors import DataError

__all__ = ["DataError"]
