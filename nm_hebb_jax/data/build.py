"""``build_dataset``: a :class:`Dataset` from the ``data`` group of a config.

Fields read (attribute access, or keys of a mapping), with their defaults:

==================  ===========  ==================================================================
field               default      meaning
==================  ===========  ==================================================================
``source``          ``'npz'``    ``'npz'``, ``'tfds'`` or ``'digits'``
``name``            by source    ``'cifar10'``, ``'cifar100'``, ``'tinyimagenet'``, ``'digits'`` or
                                 any name for npz (augmentation kind, published statistics, TFDS
                                 builder); ``'digits'`` for the digits source
``path``            required     the ``.npz`` file (npz source)
``data_dir``        ``None``     TFDS data directory (``None``/``''`` = ``~/tensorflow_datasets``)
``train_split``     ``'train'``  source split used for training (and the validation carve)
``val_size``        ``0``        examples carved from it for ``'val'`` (stratified); 0 = none
``val_seed``        ``0``        seed of the carve (independent of the training seed)
``train_subset``    ``0``        if > 0: train on a stratified subset of this many of the examples
                                 left after the carve (seeded by ``val_seed``); 0 = all
``drop_remainder``  ``False``    each training epoch is floor(N / B) full batches (PyTorch's
                                 ``drop_last``); False = epochs wrap into each other
``eval_split``      ``'val'``    split the trainer evaluates (``'val'``, ``'test'``, ...)
``augment``         ``True``     augmentation master switch
``label_key``       ``None``     ``None``/``''`` = the default: npz ``'y_{split}'`` (or e.g.
                                 ``'y_{split}_coarse'``); tfds ``'label'`` (or ``'coarse_label'``)
``image_size``      ``None``     digits: output size, 1..512 (``None`` = 32); other sources: must
                                 be ``None`` or equal the stored size (no resizing)
``num_classes``     ``0``        C, at most 1,000,000; 0 = from the class names / labels
``cache_dir``       ``None``     decoded-JPEG disk cache (``None`` = ``~/.cache/nm_hebb_jax``,
                                 ``''`` = off)
``norm_stats``      ``'auto'``   ``'auto'`` (published for cifar10/100, computed otherwise),
                                 ``'computed'``, ``'published'``
==================  ===========  ==================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from nm_hebb_jax.data import digits as digits_lib
from nm_hebb_jax.data import npz as npz_lib
from nm_hebb_jax.data.dataset import MAX_NUM_CLASSES, Dataset, LazySplit
from nm_hebb_jax.data.errors import DataError

SOURCES = ("npz", "tfds", "digits")

_MISSING = object()


def _field(config: Any, name: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        value = config.get(name, _MISSING)
    else:
        value = getattr(config, name, _MISSING)
    return default if value is _MISSING or value is None else value


def _check_image_size(image_size: Any, image_shape: tuple[int, ...], what: str) -> None:
    if image_size is not None and int(image_size) != image_shape[0]:
        raise DataError(
            f"data.image_size={image_size} but {what} images are {image_shape[0]}x"
            f"{image_shape[1]} (only the digits source resizes): set data.image_size=None"
        )


def build_dataset(
    data_config: Any, *, seed: int, process_index: int = 0, process_count: int = 1
) -> Dataset:
    """Builds the dataset described by a config's ``data`` group.

    Args:
      data_config: ``ml_collections.ConfigDict``, any attribute object or a mapping with the
        fields in the module docstring.
      seed: seed of the training stream (shuffling, augmentation, balanced sampling); the
        validation carve uses ``data.val_seed`` instead.
      process_index: this process's index (``jax.process_index()``).
      process_count: number of processes (``jax.process_count()``).

    Returns:
      The :class:`Dataset`.

    Raises:
      FileNotFoundError, DataError: with a one-line message naming the problem and the fix.
    """
    source = str(_field(data_config, "source", "npz"))
    if source not in SOURCES:
        raise DataError(f"data.source={source!r} must be one of {', '.join(SOURCES)}")
    name = str(_field(data_config, "name", "digits" if source == "digits" else ""))
    if not name:
        raise DataError(f"data.name is required for data.source={source!r} (e.g. 'cifar10')")
    train_split = str(_field(data_config, "train_split", "train"))
    eval_split = str(_field(data_config, "eval_split", "val"))
    label_key = _field(data_config, "label_key", None)
    image_size = _field(data_config, "image_size", None)
    num_classes = int(_field(data_config, "num_classes", 0))
    if not 0 <= num_classes <= MAX_NUM_CLASSES:
        raise DataError(
            f"data.num_classes={num_classes} must be in [0, {MAX_NUM_CLASSES}] "
            "(0 = from the class names or labels)"
        )
    common = dict(
        seed=seed,
        name=name,
        val_size=int(_field(data_config, "val_size", 0)),
        val_seed=int(_field(data_config, "val_seed", 0)),
        train_subset=int(_field(data_config, "train_subset", 0)),
        drop_remainder=bool(_field(data_config, "drop_remainder", False)),
        eval_split=eval_split,
        augment=bool(_field(data_config, "augment", True)),
        norm_stats=str(_field(data_config, "norm_stats", "auto")),
        process_index=process_index,
        process_count=process_count,
    )

    if source == "digits":
        if name != "digits":
            raise DataError(f"data.name={name!r} must be 'digits' for data.source='digits'")
        if train_split != "train":
            raise DataError(f"data.train_split={train_split!r}: the digits source has only 'train'")
        images, labels = digits_lib.load_digits_arrays(image_size)
        return Dataset(
            images,
            labels,
            class_names=digits_lib.DIGITS_CLASSES,
            num_classes=num_classes,
            **common,
        )

    if source == "tfds":
        from nm_hebb_jax.data import tfds_source

        spec = tfds_source.tfds_spec(name)
        others = [s for s in spec.splits if s not in (train_split, "train")]
        if eval_split not in ("val", "train") and eval_split not in spec.splits:
            raise DataError(
                f"data.eval_split={eval_split!r} not in tfds {name} (splits: "
                f"{', '.join(spec.splits)}, or 'val' carved with data.val_size)"
            )
        _check_image_size(image_size, spec.image_shape, f"tfds {name}")
        key = label_key or "label"
        arrays = tfds_source.load_tfds_splits(
            name,
            [train_split, *others],
            data_dir=_field(data_config, "data_dir", None) or None,
            label_key=key,
        )
        images, labels = arrays.pop(train_split)
        names = spec.label_keys[key]
        return Dataset(
            images,
            labels,
            class_names=names,
            num_classes=num_classes or len(names),
            extra_splits=arrays,
            **common,
        )

    # npz
    path = str(_field(data_config, "path", ""))
    if not path:
        raise DataError("data.path is required for data.source='npz': set it to the .npz file")
    cache_dir = _field(data_config, "cache_dir", None)
    kwargs = dict(label_key=label_key, train_split=train_split)
    info = npz_lib.inspect_npz_split(path, train_split, num_classes=num_classes, **kwargs)
    if info.pixel_shape is not None:
        _check_image_size(image_size, info.pixel_shape[1:], repr(path))
    c = num_classes or info.num_classes
    if not c:
        with npz_lib.open_npz(path) as npz:
            c = int(np.max(npz[info.label_key])) + 1
    sizes = npz_lib.npz_split_sizes(path)
    eval_shape = None
    if eval_split not in ("val", "train", train_split):
        npz_lib.inspect_npz_split(path, eval_split, num_classes=c, **kwargs)
        eval_shape = npz_lib.peek_image_size(path, eval_split)
    images, labels = npz_lib.load_npz_split(
        path, train_split, num_classes=c, cache_dir=cache_dir, **kwargs
    )
    _check_image_size(image_size, images.shape[1:], repr(path))
    if eval_shape is not None and eval_shape != images.shape[1:3]:
        raise DataError(
            f"data.eval_split={eval_split!r} of {path!r} has {eval_shape[0]}x{eval_shape[1]} "
            f"images, the training split {images.shape[1]}x{images.shape[2]}: use one image size"
        )

    def lazy(split: str) -> LazySplit:
        def load():
            return npz_lib.load_npz_split(path, split, num_classes=c, cache_dir=cache_dir, **kwargs)

        return LazySplit(num_examples=sizes[split], load=load)

    extra = {s: lazy(s) for s, n in sizes.items() if n > 0 and s not in (train_split, "train")}
    return Dataset(
        images,
        labels,
        class_names=info.class_names,
        num_classes=c,
        extra_splits=extra,
        **common,
    )
