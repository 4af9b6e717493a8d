r"""Converts the image datasets users hold into the project's ``.npz`` format (docs/data.md).

::

    python -m nm_hebb_jax.data.convert cifar-10-batches-py --out data/cifar10.npz
    python -m nm_hebb_jax.data.convert cifar-100-python.tar.gz --out data/cifar100.npz
    python -m nm_hebb_jax.data.convert ~/tensorflow_datasets/cifar10/3.0.2 --out data/c10.npz
    python -m nm_hebb_jax.data.convert cifar10 --from tfds --data_dir DIR --out data/c10.npz
    python -m nm_hebb_jax.data.convert tiny-imagenet-200 --out data/tinyimagenet.npz
    python -m nm_hebb_jax.data.convert my_images --out data/mine.npz --image_size 64

Sources (``--from``, detected from ``SOURCE`` when omitted):

- ``cifar10-python``: the official CIFAR-10 python pickles, the ``cifar-10-batches-py`` folder
  (``data_batch_1..5``, ``test_batch``, ``batches.meta``), a folder holding it, or the
  ``cifar-10-python.tar.gz`` archive itself. Splits ``train`` (50,000) and ``test`` (10,000).
- ``cifar100-python``: ``cifar-100-python`` (``train``, ``test``, ``meta``) likewise; fine labels
  as ``y_<split>`` with ``class_names``, coarse labels as ``y_<split>_coarse`` with
  ``class_names_coarse``.
- ``tfds``: a prepared TFDS dataset: its version folder (the one holding ``dataset_info.json``),
  or a name with ``--data_dir`` (never downloads). Every split; the ``Image`` feature (``image``
  first) and every ``ClassLabel`` feature (``label`` as ``y_<split>``, ``coarse_label`` as
  ``y_<split>_coarse``, ...).
- ``folder``: an ImageNet-style folder, ``ROOT/<class>/**/<image>`` (one split, ``--split``,
  default ``train``) or ``ROOT/{train,val,test}/<class>/**/<image>`` (``val`` and
  ``validation`` become the split ``validation``, so that the trainer's carved ``val`` split keeps
  its name); classes are the sorted folder names. The TinyImageNet-200 layout (``wnids.txt``,
  ``train/<wnid>/images``, ``val/val_annotations.txt``) is recognised and read with the helpers of
  :mod:`nm_hebb_jax.data.tinyimagenet` (official label order, names from ``class_names.py``).

Encoding (``--encoding``): ``pixels`` stores ``x_<split>`` uint8 ``[N, H, W, C]``; ``jpeg`` stores
the encoded files as they are (JPEG or PNG, ``<split>_jpeg_bytes`` + ``<split>_jpeg_offsets``;
decoded once by the reader and cached). ``auto`` (default) is ``jpeg`` for folders read without
``--image_size`` and ``pixels`` otherwise. ``--image_size S`` resizes every image's shorter side
to ``S`` (bicubic) and centre-crops ``S x S``; without it all images of a source must share one
size.

The output is written to a temporary file beside ``--out`` and renamed into place, so a killed
conversion leaves no partial file; an existing file is refused unless ``--overwrite``. Mistakes
(missing or malformed input, an existing output, images of several sizes) are one line on stderr
and exit status 2.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import os
import pickle
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from nm_hebb_jax.data import class_names as names_lib
from nm_hebb_jax.data import npz as npz_lib
from nm_hebb_jax.data.errors import DataError

KINDS = ("cifar10-python", "cifar100-python", "tfds", "folder")
ENCODINGS = ("auto", "pixels", "jpeg")
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"}
)
# Split folders of an ImageNet-style layout and the npz split each becomes.
FOLDER_SPLITS = {"train": "train", "val": "validation", "validation": "validation", "test": "test"}

Members = dict[str, np.ndarray]


class ConvertError(DataError):
    """A conversion that cannot proceed; the message is one line naming the problem and the fix."""


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------


def check_output(out: str, *, overwrite: bool = False) -> str:
    """The absolute output path, checked before any work: ``.npz`` suffix, not an existing file.

    Raises:
      ConvertError: wrong suffix, a directory, or an existing file without ``overwrite``.
    """
    path = os.path.abspath(os.path.expanduser(out))
    if not path.endswith(".npz"):
        raise ConvertError(f"--out {out!r} must end in .npz")
    if os.path.isdir(path):
        raise ConvertError(f"--out {out!r} is a directory: give a file name ending in .npz")
    if os.path.exists(path) and not overwrite:
        raise ConvertError(
            f"{out!r} already exists: pass --overwrite to replace it, or choose another --out"
        )
    return path


def write_npz(
    members: Members, out: str, *, overwrite: bool = False, compress: bool = False
) -> str:
    """Writes ``members`` as an ``.npz`` file atomically (temporary file, then rename).

    Args:
      members: member name -> array (no object arrays).
      out: the output path (``.npz``); parent folders are created.
      overwrite: replace an existing file (else it is refused, also if it appeared meanwhile).
      compress: ``numpy.savez_compressed`` instead of ``numpy.savez``.

    Returns:
      The absolute path written.
    """
    path = check_output(out, overwrite=overwrite)
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            (np.savez_compressed if compress else np.savez)(f, **members)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # fails if the file appeared meanwhile: never overwrite
            except FileExistsError:
                raise ConvertError(
                    f"{out!r} appeared during the conversion: pass --overwrite to replace it"
                ) from None
            except OSError:  # a file system without hard links
                if os.path.exists(path):
                    raise ConvertError(
                        f"{out!r} appeared during the conversion: pass --overwrite to replace it"
                    ) from None
                os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


# --------------------------------------------------------------------------------------------------
# CIFAR python pickles
# --------------------------------------------------------------------------------------------------

_CIFAR = {
    "cifar10-python": {
        "folder": "cifar-10-batches-py",
        "archive": "cifar-10-python.tar.gz",
        "splits": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]},
        "meta": "batches.meta",
    },
    "cifar100-python": {
        "folder": "cifar-100-python",
        "archive": "cifar-100-python.tar.gz",
        "splits": {"train": ["train"], "test": ["test"]},
        "meta": "meta",
    },
}

# What the official pickles may reference (numpy arrays); anything else is refused unread.
_SAFE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and numpy arrays only (no arbitrary code)."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        if module.startswith("numpy.core"):
            module = module.replace("numpy.core", "numpy._core", 1)  # numpy 2 moved it
        return super().find_class(module, name)


def _unpickle(data: bytes, where: str) -> dict:
    try:
        obj = _NumpyOnlyUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as e:  # any failure to read untrusted bytes means a bad file
        raise ConvertError(f"{where} is not a CIFAR python pickle ({_reason(e)})") from None
    if not isinstance(obj, dict):
        raise ConvertError(f"{where} is not a CIFAR python pickle (no dict inside)")
    return {k.decode() if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _reason(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _cifar_reader(kind: str, source: str) -> tuple[Callable[[str], bytes], str]:
    """``(read(member) -> bytes, description)`` for a CIFAR folder, its parent, or its archive."""
    spec = _CIFAR[kind]
    needed = [*spec["splits"]["train"], *spec["splits"]["test"], spec["meta"]]
    if os.path.isfile(source):
        try:
            archive = tarfile.open(source)
        except (tarfile.TarError, OSError) as e:
            raise ConvertError(
                f"{source!r} is not a readable tar archive ({_reason(e)}): pass the "
                f"{spec['archive']} download or its extracted {spec['folder']}/ folder"
            ) from None
        names = {os.path.basename(m.name): m for m in archive.getmembers() if m.isfile()}
        missing = [n for n in needed if n not in names]
        if missing:
            raise ConvertError(
                f"{source!r} lacks {', '.join(missing)}: pass the official {spec['archive']}"
            )

        def read_member(name: str) -> bytes:
            return archive.extractfile(names[name]).read()

        return read_member, source
    for folder in (source, os.path.join(source, spec["folder"])):
        if all(os.path.isfile(os.path.join(folder, n)) for n in needed):

            def read_file(name: str, folder=folder) -> bytes:
                with open(os.path.join(folder, name), "rb") as f:
                    return f.read()

            return read_file, folder
    missing = [n for n in needed if not os.path.isfile(os.path.join(source, n))]
    raise ConvertError(
        f"{source!r} is not a {spec['folder']} folder (missing {', '.join(missing)}): pass the "
        f"extracted {spec['folder']}/ folder or the {spec['archive']} archive"
    )


def _cifar_images(batch: dict, where: str) -> np.ndarray:
    data = np.asarray(batch.get("data"))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise ConvertError(
            f"{where}: 'data' is {data.dtype} {data.shape}, expected uint8 [N, 3072] (CIFAR rows)"
        )
    # Each row is the red, green and blue 32x32 planes in turn (row-major).
    return np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))


def _cifar_labels(batch: dict, key: str, n: int, num_classes: int, where: str) -> np.ndarray:
    if key not in batch:
        raise ConvertError(f"{where} has no {key!r}: is it the right CIFAR version?")
    labels = np.asarray(batch[key], dtype=np.int64)
    if labels.shape != (n,) or labels.min() < 0 or labels.max() >= num_classes:
        raise ConvertError(
            f"{where}: {key!r} must be {n} ids in [0, {num_classes}), got shape {labels.shape}"
        )
    return labels


def _names(meta: dict, key: str, where: str) -> list[str]:
    if key not in meta:
        raise ConvertError(f"{where} has no {key!r}: is it the right CIFAR version?")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in meta[key]]


def read_cifar_python(kind: str, source: str) -> Members:
    """The npz members of the official CIFAR-10 or CIFAR-100 python version.

    Args:
      kind: ``'cifar10-python'`` or ``'cifar100-python'``.
      source: the extracted folder, a folder holding it, or the ``.tar.gz`` archive.

    Returns:
      ``x_train``, ``y_train``, ``x_test``, ``y_test``, ``class_names`` (and for CIFAR-100
      ``y_train_coarse``, ``y_test_coarse``, ``class_names_coarse``).
    """
    spec = _CIFAR[kind]
    read, where = _cifar_reader(kind, source)
    meta = _unpickle(read(spec["meta"]), f"{where}/{spec['meta']}")
    if kind == "cifar10-python":
        label_sets = {"": ("labels", _names(meta, "label_names", where))}
    else:
        label_sets = {
            "": ("fine_labels", _names(meta, "fine_label_names", where)),
            "_coarse": ("coarse_labels", _names(meta, "coarse_label_names", where)),
        }
    members: Members = {}
    for split, files in spec["splits"].items():
        images, labels = [], {suffix: [] for suffix in label_sets}
        for name in files:
            batch = _unpickle(read(name), f"{where}/{name}")
            x = _cifar_images(batch, f"{where}/{name}")
            images.append(x)
            for suffix, (key, names) in label_sets.items():
                labels[suffix].append(
                    _cifar_labels(batch, key, len(x), len(names), f"{where}/{name}")
                )
        members[f"x_{split}"] = np.concatenate(images)
        for suffix in label_sets:
            members[f"y_{split}{suffix}"] = np.concatenate(labels[suffix])
    for suffix, (_, names) in label_sets.items():
        members[f"class_names{suffix}"] = np.asarray(names)
    return members


# --------------------------------------------------------------------------------------------------
# Images: decoding, resizing, packing
# --------------------------------------------------------------------------------------------------


def _decode(data: bytes, where: str, image_size: int | None) -> np.ndarray:
    """RGB (or grayscale ``[H, W, 1]``) uint8 pixels of an encoded image, resized if asked."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return _pixels(im, image_size)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise ConvertError(f"{where} is not a readable image ({_reason(e)})") from None


def _pixels(im: Image.Image, image_size: int | None) -> np.ndarray:
    """``im`` as uint8 ``[H, W, 3]`` (RGB) or ``[H, W, 1]`` (grayscale), resized if asked."""
    if im.mode not in ("RGB", "L"):
        im = im.convert("RGB")
    if image_size:
        im = _resize_center_crop(im, image_size)
    x = np.asarray(im, dtype=np.uint8)
    return x[..., None] if x.ndim == 2 else x


def _resize_center_crop(im: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size`` (bicubic), then the central ``size x size`` crop."""
    w, h = im.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    im = im.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return im.crop((left, top, left + size, top + size))


def _image_header(data: bytes, where: str) -> tuple[tuple[int, int], str]:
    """``((width, height), mode)`` of an encoded image from its header."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.size, im.mode
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise ConvertError(f"{where} is not a readable image ({_reason(e)})") from None


def _pack_pixels(pixels: Sequence[np.ndarray], names: Sequence[str], split: str) -> np.ndarray:
    """Stacks decoded images of one size; grayscale joins RGB as 3 equal channels."""
    shapes = {p.shape[:2] for p in pixels}
    if len(shapes) > 1:
        first = pixels[0].shape
        other = next(i for i, p in enumerate(pixels) if p.shape[:2] != first[:2])
        raise ConvertError(
            f"split {split!r} mixes image sizes ({names[0]} is {first[1]}x{first[0]}, "
            f"{names[other]} is {pixels[other].shape[1]}x{pixels[other].shape[0]}): pass "
            "--image_size S to resize them all to S x S"
        )
    if len({p.shape[-1] for p in pixels}) > 1:
        pixels = [np.repeat(p, 3, axis=-1) if p.shape[-1] == 1 else p for p in pixels]
    return np.stack(pixels)


def _pack_encoded(
    blobs: Sequence[bytes], names: Sequence[str], split: str
) -> tuple[np.ndarray, np.ndarray]:
    """``(bytes, offsets)`` of encoded images, after checking that all have one size."""
    sizes = [_image_header(b, n)[0] for b, n in zip(blobs, names, strict=True)]
    if len(set(sizes)) > 1:
        other = next(i for i, s in enumerate(sizes) if s != sizes[0])
        raise ConvertError(
            f"split {split!r} mixes image sizes ({names[0]} is {sizes[0][0]}x{sizes[0][1]}, "
            f"{names[other]} is {sizes[other][0]}x{sizes[other][1]}): pass --image_size S to "
            "resize them all to S x S"
        )
    offsets = np.zeros(len(blobs) + 1, np.int64)
    offsets[1:] = np.cumsum([len(b) for b in blobs])
    return np.frombuffer(b"".join(blobs), np.uint8).copy(), offsets


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConvertError(f"cannot read {path} ({_reason(e)})") from None


def _parallel(fn: Callable, items: Iterable) -> list:
    """``[fn(i) for i in items]`` in threads (Pillow and file reads release the GIL)."""
    items = list(items)
    if len(items) < 64:
        return [fn(i) for i in items]
    workers = max(1, min(8, os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items, chunksize=64))


def _split_members(
    split: str,
    files: Sequence[str],
    labels: np.ndarray,
    *,
    encoding: str,
    image_size: int | None,
) -> Members:
    """The members of one split read from image files."""
    if not files:
        raise ConvertError(f"split {split!r} has no images")
    if encoding == "jpeg":
        blobs = _parallel(_read_bytes, files)
        data, offsets = _pack_encoded(blobs, files, split)
        out = {f"{split}_jpeg_bytes": data, f"{split}_jpeg_offsets": offsets}
    else:
        pixels = _parallel(lambda p: _decode(_read_bytes(p), p, image_size), files)
        out = {f"x_{split}": _pack_pixels(pixels, files, split)}
    out[f"y_{split}"] = np.asarray(labels, np.int64)
    return out


# --------------------------------------------------------------------------------------------------
# Folders of images
# --------------------------------------------------------------------------------------------------


def _is_image(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _class_files(class_dir: str) -> list[str]:
    """Image files anywhere below ``class_dir``, sorted by relative path."""
    found = []
    for root, dirs, files in os.walk(class_dir):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [os.path.join(root, f) for f in files if _is_image(f)]
    return sorted(found)


def _subdirs(path: str) -> list[str]:
    return sorted(
        d
        for d in os.listdir(path)
        if not d.startswith(".") and os.path.isdir(os.path.join(path, d))
    )


def _find_tinyimagenet(root: str):
    """The TinyImageNet-200 folder inside ``root`` (``wnids.txt``), or None."""
    from nm_hebb_jax.data import tinyimagenet

    for candidate in (root, os.path.join(root, "tiny-imagenet-200")):
        if os.path.isfile(os.path.join(candidate, "wnids.txt")):
            return tinyimagenet.find_root(candidate)
    return None


def read_tinyimagenet_folder(root, *, encoding: str, image_size: int | None) -> Members:
    """The npz members of a TinyImageNet-200 folder (splits ``train`` and ``validation``)."""
    from nm_hebb_jax.data import tinyimagenet

    try:
        wnids = tinyimagenet.read_wnids(root)
    except ValueError as e:
        raise ConvertError(_reason(e)) from None
    index = {w: i for i, w in enumerate(names_lib.TINYIMAGENET_WNIDS)}
    members: Members = {}
    for split in ("train", "validation"):
        try:
            rows = list(tinyimagenet.iter_split_files(root, split, wnids))
        except OSError as e:
            raise ConvertError(
                f"{root} is not a complete TinyImageNet-200 folder ({_reason(e)})"
            ) from None
        files = [os.fspath(path) for _, path, _ in rows]
        labels = np.asarray([index[w] for _, _, w in rows], np.int64)
        members.update(
            _split_members(split, files, labels, encoding=encoding, image_size=image_size)
        )
    members["class_names"] = np.asarray(names_lib.TINYIMAGENET_CLASSES)
    members["wnids"] = np.asarray(names_lib.TINYIMAGENET_WNIDS)
    return members


def read_folder(
    root: str, *, encoding: str = "auto", image_size: int | None = None, split: str = "train"
) -> Members:
    """The npz members of an ImageNet-style folder of images.

    Args:
      root: ``ROOT/<class>/**/<image>``, ``ROOT/{train,val,test}/<class>/**/<image>``, or the
        TinyImageNet-200 layout.
      encoding: ``'auto'`` (= ``'jpeg'`` without ``image_size``, else ``'pixels'``),
        ``'pixels'`` or ``'jpeg'`` (the files' own bytes, JPEG or PNG).
      image_size: resize (shorter side, bicubic) and centre-crop every image to this size.
      split: the split name of a layout without split folders.

    Returns:
      Member name -> array, with ``class_names`` (the sorted class folder names).
    """
    if encoding == "auto":
        encoding = "pixels" if image_size else "jpeg"
    if encoding == "jpeg" and image_size:
        raise ConvertError("--image_size needs --encoding pixels (resized images are pixels)")
    tin = _find_tinyimagenet(root)
    if tin is not None:
        return read_tinyimagenet_folder(tin, encoding=encoding, image_size=image_size)
    top = _subdirs(root)
    if "train" in top and all(d in FOLDER_SPLITS for d in top):
        if "val" in top and "validation" in top:
            raise ConvertError(f"{root} has both val/ and validation/: keep one of them")
        split_dirs = {FOLDER_SPLITS[d]: os.path.join(root, d) for d in top}
    else:
        split_dirs = {split: root}
    per_split = {}
    for name, folder in split_dirs.items():
        classes = {c: _class_files(os.path.join(folder, c)) for c in _subdirs(folder)}
        classes = {c: f for c, f in classes.items() if f}
        if not classes:
            loose = [f for f in os.listdir(folder) if _is_image(f)]
            hint = " (its images are not in class folders: no labels)" if loose else ""
            raise ConvertError(
                f"{folder} has no class folders with images{hint}: lay images out as "
                "<class>/<image>"
            )
        per_split[name] = classes
    class_list = sorted(set().union(*(set(c) for c in per_split.values())))
    index = {c: i for i, c in enumerate(class_list)}
    members: Members = {}
    for name, classes in per_split.items():
        files = [f for c in sorted(classes) for f in classes[c]]
        labels = np.asarray([index[c] for c in sorted(classes) for _ in classes[c]], np.int64)
        members.update(
            _split_members(name, files, labels, encoding=encoding, image_size=image_size)
        )
    members["class_names"] = np.asarray(class_list)
    return members


# --------------------------------------------------------------------------------------------------
# TFDS
# --------------------------------------------------------------------------------------------------


def _tfds_builder(source: str, data_dir: str | None):
    import tensorflow_datasets as tfds

    from nm_hebb_jax.data import tinyimagenet  # noqa: F401  (registers tiny_imagenet200)

    if os.path.isfile(os.path.join(source, "dataset_info.json")):
        try:
            return tfds.builder_from_directory(source)
        except Exception as e:  # a damaged dataset_info.json or an unknown feature type
            raise ConvertError(f"{source} is not a readable TFDS dataset ({_reason(e)})") from None
    if os.path.isdir(source):
        raise ConvertError(
            f"{source} holds no dataset_info.json: pass a prepared TFDS dataset's version folder "
            "(e.g. ~/tensorflow_datasets/cifar10/3.0.2) or its name with --data_dir"
        )
    try:
        builder = tfds.builder(source, data_dir=data_dir)
    except Exception as e:  # tfds raises several types for unknown names
        raise ConvertError(f"no TFDS dataset named {source!r} ({_reason(e)})") from None
    if not builder.is_prepared():
        where = data_dir or "the default TFDS data_dir (~/tensorflow_datasets)"
        raise ConvertError(
            f"TFDS dataset {source!r} is not prepared in {where}: run `tfds build {source} "
            "--data_dir=DIR` where it can download, then pass --data_dir=DIR"
        )
    return builder


def _tfds_records(builder, split: str, decoders):
    """Examples of a split as numpy dicts: array_record without TF, tfrecord through TF."""
    import tensorflow_datasets as tfds

    fmt = getattr(builder.info, "file_format", None)
    fmt = str(getattr(fmt, "value", fmt) or "")  # a tfds FileFormat enum, a string, or None
    if "array_record" in fmt:
        source = builder.as_data_source(split=split, decoders=decoders)
        return (source[i] for i in range(len(source)))
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        raise ConvertError(
            f"{builder.name} is stored as {fmt or 'tfrecord'}, which needs TensorFlow to read: "
            "pip install 'nm_hebb_jax[tfds]'"
        ) from None
    ds = builder.as_dataset(split=split, shuffle_files=False, decoders=decoders)
    return tfds.as_numpy(ds)


def read_tfds(
    source: str,
    *,
    data_dir: str | None = None,
    encoding: str = "auto",
    image_size: int | None = None,
) -> Members:
    """The npz members of a prepared TFDS dataset (every split).

    Args:
      source: a prepared dataset's version folder (holding ``dataset_info.json``) or a name.
      data_dir: TFDS data directory for a name (``None`` = TFDS's default).
      encoding: ``'auto'`` = ``'pixels'``; ``'jpeg'`` keeps the stored encoded images (only
        without ``image_size``).
      image_size: resize (shorter side, bicubic) and centre-crop every image to this size.
    """
    import tensorflow_datasets as tfds

    if encoding == "auto":
        encoding = "pixels"
    if encoding == "jpeg" and image_size:
        raise ConvertError("--image_size needs --encoding pixels (resized images are pixels)")
    builder = _tfds_builder(source, data_dir)
    features = builder.info.features
    images = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
    labels = [k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
    if not images or not labels:
        raise ConvertError(
            f"TFDS {builder.name} needs an Image and a ClassLabel feature (has "
            f"{', '.join(features.keys())})"
        )
    image_key = "image" if "image" in images else images[0]
    main = "label" if "label" in labels else labels[0]
    suffixes = {main: ""}
    for k in labels:
        if k != main:
            suffixes[k] = "_" + (k[: -len("_label")] if k.endswith("_label") else k)
    skip = {image_key: tfds.decode.SkipDecoding()} if encoding == "jpeg" else None
    members: Members = {}
    for split in builder.info.splits.keys():
        blobs, pixels, names = [], [], []
        label_values = {k: [] for k in labels}
        for i, example in enumerate(_tfds_records(builder, split, skip)):
            where = f"example {i} of TFDS {builder.name} split {split!r}"
            value = example[image_key]
            if encoding == "jpeg":
                blobs.append(bytes(value))
            elif image_size:
                x = np.asarray(value, np.uint8)
                pixels.append(
                    _pixels(Image.fromarray(x[..., 0] if x.shape[-1] == 1 else x), image_size)
                )
            else:
                pixels.append(np.asarray(value, np.uint8))
            names.append(where)
            for k in labels:
                label_values[k].append(int(example[k]))
        if not names:
            continue
        if encoding == "jpeg":
            data, offsets = _pack_encoded(blobs, names, split)
            members[f"{split}_jpeg_bytes"], members[f"{split}_jpeg_offsets"] = data, offsets
        else:
            members[f"x_{split}"] = _pack_pixels(pixels, names, split)
        for k, suffix in suffixes.items():
            members[f"y_{split}{suffix}"] = np.asarray(label_values[k], np.int64)
    if not members:
        raise ConvertError(f"TFDS {builder.name} has no examples in any split")
    for k, suffix in suffixes.items():
        members[f"class_names{suffix}"] = np.asarray(features[k].names)
    return members


# --------------------------------------------------------------------------------------------------
# Entry points
# --------------------------------------------------------------------------------------------------


def detect_kind(source: str) -> str:
    """The ``--from`` kind a source looks like (see the module docstring)."""
    base = os.path.basename(os.path.normpath(source))
    if os.path.isfile(source):
        for kind, spec in _CIFAR.items():
            if base == spec["archive"]:
                return kind
        raise ConvertError(f"cannot tell what {source!r} holds: pass --from ({', '.join(KINDS)})")
    if not os.path.isdir(source):
        raise ConvertError(
            f"{source!r} does not exist (for a TFDS dataset by name pass --from tfds)"
        )
    for kind, spec in _CIFAR.items():
        for folder in (source, os.path.join(source, spec["folder"])):
            if os.path.isfile(os.path.join(folder, spec["meta"])):
                return kind
    if os.path.isfile(os.path.join(source, "dataset_info.json")):
        return "tfds"
    return "folder"


def convert(
    source: str,
    out: str,
    *,
    kind: str = "auto",
    data_dir: str | None = None,
    encoding: str = "auto",
    image_size: int | None = None,
    split: str = "train",
    overwrite: bool = False,
    compress: bool = False,
) -> dict:
    """Converts a dataset to the project's npz format and checks the result with the reader.

    Args:
      source: see the module docstring.
      out: the ``.npz`` to write.
      kind: ``'auto'`` or one of :data:`KINDS`.
      data_dir: TFDS data directory (``kind='tfds'`` with a name).
      encoding: ``'auto'``, ``'pixels'`` or ``'jpeg'``.
      image_size: resize and centre-crop every image to ``S x S`` (folders, TFDS).
      split: split name for a folder without split folders.
      overwrite: replace an existing ``out``.
      compress: store members deflate-compressed.

    Returns:
      ``{'path', 'kind', 'splits': {split: N}, 'image_shape', 'num_classes', 'encoding',
      'bytes'}``.

    Raises:
      ConvertError: with a one-line message.
    """
    path = check_output(out, overwrite=overwrite)  # fail before reading anything
    source = os.path.expanduser(source)
    if encoding not in ENCODINGS:
        raise ConvertError(f"--encoding {encoding!r}: use one of {', '.join(ENCODINGS)}")
    if image_size is not None and not 1 <= int(image_size) <= 4096:
        raise ConvertError(f"--image_size {image_size} must be in [1, 4096]")
    if kind == "auto":
        kind = detect_kind(source)
    if kind not in KINDS:
        raise ConvertError(f"--from {kind!r}: use one of {', '.join(KINDS)}")
    if kind != "tfds" and not os.path.exists(source):
        raise ConvertError(f"{source!r} does not exist")
    if kind in _CIFAR:
        if image_size or encoding == "jpeg":
            raise ConvertError("CIFAR pickles hold 32x32 pixels: drop --image_size / --encoding")
        members = read_cifar_python(kind, source)
    elif kind == "tfds":
        members = read_tfds(source, data_dir=data_dir, encoding=encoding, image_size=image_size)
    else:
        members = read_folder(source, encoding=encoding, image_size=image_size, split=split)
    path = write_npz(members, path, overwrite=overwrite, compress=compress)
    splits, shape, encodings = {}, None, set()
    with npz_lib.open_npz(path) as npz:
        names = sorted(npz_lib.npz_splits(npz), key=lambda n: (n != "train", n))
    for name in names:
        info = npz_lib.inspect_npz_split(path, name)  # the reader accepts what we wrote
        splits[name] = info.num_examples
        encodings.add(info.encoding)
        shape = shape or (info.pixel_shape[1:] if info.pixel_shape else None)
        if shape is None:
            shape = (*npz_lib.peek_image_size(path, name), 3)
    return {
        "path": path,
        "kind": kind,
        "splits": splits,
        "image_shape": list(shape),
        "num_classes": int(len(members["class_names"])),
        "encoding": "/".join(sorted(encodings)),
        "bytes": os.path.getsize(path),
    }


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m nm_hebb_jax.data.convert``."""
    parser = argparse.ArgumentParser(
        prog="python -m nm_hebb_jax.data.convert",
        description="Convert CIFAR pickles, a prepared TFDS dataset or a folder of images into "
        "the project's npz format (docs/data.md).",
    )
    parser.add_argument("source", help="folder, archive, TFDS version folder or TFDS name")
    parser.add_argument("--out", required=True, help="the .npz file to write")
    parser.add_argument("--from", dest="kind", default="auto", choices=("auto", *KINDS))
    parser.add_argument("--data_dir", default=None, help="TFDS data_dir (with a TFDS name)")
    parser.add_argument("--encoding", default="auto", choices=ENCODINGS)
    parser.add_argument("--image_size", type=int, default=None, help="resize + crop to S x S")
    parser.add_argument("--split", default="train", help="split name of a folder of classes")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--compress", action="store_true", help="deflate-compress the members")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the converter; returns the exit status (0, or 2 after a one-line error)."""
    args = build_parser().parse_args(argv)
    try:
        summary = convert(
            args.source,
            args.out,
            kind=args.kind,
            data_dir=args.data_dir,
            encoding=args.encoding,
            image_size=args.image_size,
            split=args.split,
            overwrite=args.overwrite,
            compress=args.compress,
        )
    except (DataError, FileNotFoundError) as e:
        print(f"error: {_reason(e)}", file=sys.stderr)
        return 2
    sizes = ", ".join(f"{k} {v:,}" for k, v in summary["splits"].items())
    h, w, c = summary["image_shape"]
    print(
        f"wrote {summary['path']} ({summary['bytes'] / 2**20:.1f} MiB, {summary['encoding']}): "
        f"{sizes} images of {h}x{w}x{c}, {summary['num_classes']} classes (from {summary['kind']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
