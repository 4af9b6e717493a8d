"""nm_hebb_jax: NM-Hebb (arXiv 2508.19896) and Hebbian learning with gradients (arXiv 2107.01729).

Sub-packages: ``models`` (backbones with ``sow`` taps), ``losses`` (pure loss functions),
``objectives`` (composable loss transforms), ``neuromod`` (the gate ν_φ), ``data``, ``train``
(the two-phase trainer), ``eval`` (metrics, filters, pictures, :func:`load_run`).
"""

__version__ = "0.1.0"


def load_run(workdir, *, step=None, best=False):
    """Loads a trained run (config, model, variables); see :mod:`nm_hebb_jax.eval.run`."""
    from nm_hebb_jax.eval.run import load_run as _load_run

    return _load_run(workdir, step=step, best=best)
