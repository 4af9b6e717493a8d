"""The Hebbian CNN of Miconi 2021 ("Hebbian learning with gradients", arXiv 2107.01729).

:mod:`~nm_hebb_jax.hebbian.layers` (the Hebbian conv layer), :mod:`~nm_hebb_jax.hebbian.model`
(the 3-layer network), :mod:`~nm_hebb_jax.hebbian.train` (resumable unsupervised training),
:mod:`~nm_hebb_jax.hebbian.decode` (layer-wise linear readouts) and
:mod:`~nm_hebb_jax.hebbian.evaluate` (decoding + filter pictures of a run).
"""

from nm_hebb_jax.hebbian.layers import LayerSpec, init_layer, layer_forward, layer_step
from nm_hebb_jax.hebbian.model import HebbianCNN, from_config, quadrant_pool

__all__ = [
    "HebbianCNN",
    "LayerSpec",
    "from_config",
    "init_layer",
    "layer_forward",
    "layer_step",
    "quadrant_pool",
]
