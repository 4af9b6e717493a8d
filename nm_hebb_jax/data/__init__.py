"""Input pipeline: whole datasets in host memory, stateless resumable batches, multi-host slices.

Entry point: ``build_dataset(config.data, seed=..., process_index=..., process_count=...)``. See
:mod:`nm_hebb_jax.data.build` for the config fields, :mod:`nm_hebb_jax.data.dataset` for the batch
semantics and :mod:`nm_hebb_jax.data.npz` for the ``.npz`` format (docs/data.md), which
``python -m nm_hebb_jax.data.convert`` (:mod:`nm_hebb_jax.data.convert`) writes from CIFAR pickles,
prepared TFDS datasets and folders of images. TensorFlow (the ``[tfds]`` extra) is needed only for
``data.source='tfds'`` and is imported only there.
"""

from nm_hebb_jax.data.augment import Augmentation
from nm_hebb_jax.data.build import build_dataset
from nm_hebb_jax.data.dataset import Dataset, LazySplit, stratified_split
from nm_hebb_jax.data.errors import DataError
from nm_hebb_jax.data.npz import clear_cache, inspect_npz_split, load_npz_split

__all__ = [
    "Augmentation",
    "DataError",
    "Dataset",
    "LazySplit",
    "build_dataset",
    "clear_cache",
    "inspect_npz_split",
    "load_npz_split",
    "stratified_split",
]
