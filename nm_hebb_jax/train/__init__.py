"""The two-phase NM-Hebb trainer: state, steps, sharding, checkpoints, loop."""

from nm_hebb_jax.train.ewc import init_ewc_state
from nm_hebb_jax.train.hypergradient import init_hyper, make_phi_optimizer
from nm_hebb_jax.train.state import TrainState, make_optimizer

__all__ = [
    "TrainState",
    "init_ewc_state",
    "init_hyper",
    "make_optimizer",
    "make_phi_optimizer",
    "train_and_evaluate",
]


def train_and_evaluate(config, workdir, **kwargs):
    """See :func:`nm_hebb_jax.train.loop.train_and_evaluate`."""
    from nm_hebb_jax.train.loop import train_and_evaluate as _run

    return _run(config, workdir, **kwargs)
