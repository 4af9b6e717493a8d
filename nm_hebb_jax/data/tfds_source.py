"""Whole-split numpy arrays from prepared TFDS datasets (needs the ``[tfds]`` extra: TensorFlow).

``tensorflow_datasets`` is imported only inside these functions. Nothing is ever downloaded: an
unprepared dataset raises a one-line :class:`DataError` that says how to prepare it. Split names,
sizes and class names come from the table below, because TFDS mock data (and unprepared builders)
may have an empty ``builder.info.splits`` and no class names.
"""

from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np

from nm_hebb_jax.data import class_names as names_lib
from nm_hebb_jax.data.errors import DataError

Arrays = tuple[np.ndarray, np.ndarray]


@dataclasses.dataclass(frozen=True)
class TfdsSpec:
    """What we know about a TFDS dataset without asking TFDS.

    Attributes:
      builder: the TFDS builder name.
      splits: split name -> number of examples (of the real dataset).
      label_keys: feature name of a label set -> its class names.
      image_shape: (H, W, 3).
      prepare_hint: how to prepare it (for the not-prepared error).
    """

    builder: str
    splits: dict[str, int]
    label_keys: dict[str, tuple[str, ...]]
    image_shape: tuple[int, int, int]
    prepare_hint: str


TFDS_SPECS: dict[str, TfdsSpec] = {
    "cifar10": TfdsSpec(
        builder="cifar10",
        splits={"train": 50_000, "test": 10_000},
        label_keys={"label": names_lib.CIFAR10_CLASSES},
        image_shape=(32, 32, 3),
        prepare_hint="run `tfds build cifar10 --data_dir=DIR`",
    ),
    "cifar100": TfdsSpec(
        builder="cifar100",
        splits={"train": 50_000, "test": 10_000},
        label_keys={
            "label": names_lib.CIFAR100_CLASSES,
            "coarse_label": names_lib.CIFAR100_COARSE_CLASSES,
        },
        image_shape=(32, 32, 3),
        prepare_hint="run `tfds build cifar100 --data_dir=DIR`",
    ),
    "tinyimagenet": TfdsSpec(
        builder="tiny_imagenet200",
        splits={"train": 100_000, "validation": 10_000},
        label_keys={"label": names_lib.TINYIMAGENET_CLASSES},
        image_shape=(64, 64, 3),
        prepare_hint=(
            "run `python -m nm_hebb_jax.data.tinyimagenet --manual_dir=DIR_WITH_tiny-imagenet-200 "
            "--data_dir=DIR`"
        ),
    ),
}


def tfds_spec(name: str) -> TfdsSpec:
    """The :class:`TfdsSpec` of a dataset name, or a one-line :class:`DataError`."""
    if name not in TFDS_SPECS:
        raise DataError(
            f"data.name={name!r} is not available from data.source='tfds' (choose one of "
            f"{', '.join(TFDS_SPECS)}), or use data.source='npz'"
        )
    return TFDS_SPECS[name]


def _import_tfds():
    if importlib.util.find_spec("tensorflow") is None:
        raise DataError(
            "data.source='tfds' needs TensorFlow: pip install 'nm_hebb_jax[tfds]' "
            "(tensorflow-cpu), or use data.source='npz'"
        )
    import tensorflow_datasets as tfds

    return tfds


def builder_for(name: str, data_dir: str | None = None):
    """The TFDS builder of a dataset name (registers our TinyImageNet builder when needed).

    Args:
      name: ``'cifar10'``, ``'cifar100'`` or ``'tinyimagenet'``.
      data_dir: TFDS data directory (``None`` = TFDS's default, ``~/tensorflow_datasets``).

    Returns:
      A ``tfds.core.DatasetBuilder``.
    """
    spec = tfds_spec(name)
    tfds = _import_tfds()
    if name == "tinyimagenet":
        from nm_hebb_jax.data import tinyimagenet  # noqa: F401  (registers the builder)
    return tfds.builder(spec.builder, data_dir=data_dir)


def load_tfds_splits(
    name: str,
    splits: list[str],
    *,
    data_dir: str | None = None,
    label_key: str | None = None,
) -> dict[str, Arrays]:
    """Reads whole splits of a prepared TFDS dataset into memory.

    Args:
      name: ``'cifar10'``, ``'cifar100'`` or ``'tinyimagenet'``.
      splits: split names, e.g. ``['train', 'test']``.
      data_dir: TFDS data directory (``None`` = TFDS's default).
      label_key: label feature (``None`` = ``'label'``; CIFAR-100 also ``'coarse_label'``).

    Returns:
      split -> ``(images uint8 [N, H, W, 3], labels int32 [N])``.

    Raises:
      DataError: unknown name/split/label key, TensorFlow missing, or dataset not prepared.
    """
    spec = tfds_spec(name)
    label_key = label_key or "label"
    if label_key not in spec.label_keys:
        raise DataError(
            f"data.label_key={label_key!r} is not a label of tfds {name} (choose one of "
            f"{', '.join(spec.label_keys)})"
        )
    for split in splits:
        if split not in spec.splits:
            raise DataError(
                f"split {split!r} not in tfds {name} (splits: {', '.join(spec.splits)}): set "
                "data.train_split / data.eval_split to one of them"
            )
    builder = builder_for(name, data_dir)
    tfds = _import_tfds()
    out = {}
    for split in splits:
        try:
            ds = builder.as_dataset(split=split, shuffle_files=False)
        except AssertionError as e:
            if "could not find data" not in str(e):
                raise
            where = data_dir or "the default TFDS data_dir (~/tensorflow_datasets)"
            raise DataError(
                f"tfds dataset {name} is not prepared in {where}: {spec.prepare_hint} on a machine "
                "with the data, or set data.data_dir to where it is prepared"
            ) from None
        images, labels = [], []
        for batch in tfds.as_numpy(ds.batch(4096)):
            images.append(np.asarray(batch["image"], dtype=np.uint8))
            labels.append(np.asarray(batch[label_key]).astype(np.int32))
        if not images:
            raise DataError(f"tfds {name} split {split!r} is empty: re-prepare the dataset")
        x = np.concatenate(images)
        if x.ndim == 4 and x.shape[-1] == 1:
            x = np.repeat(x, 3, axis=-1)
        out[split] = (x, np.concatenate(labels))
    return out
