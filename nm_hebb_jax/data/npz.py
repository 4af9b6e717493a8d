"""Reader of the project's ``.npz`` image format, with one-line errors and decoded-image caches.

The format is documented in docs/data.md; ``python -m nm_hebb_jax.data.convert`` writes it.
It is long because a hostile file must fail with one line naming the problem before anything
large is read (``tests/test_hostile_input.py``): every member is checked from its header first.

Format, for a split ``S`` (``train``, ``test``, ...):

- pixels ``x_S``: uint8 ``[N, H, W, 3]`` (RGB), or grayscale ``[N, H, W]`` / ``[N, H, W, 1]``
  (replicated to 3 channels); **or** JPEG bytes ``S_jpeg_bytes`` uint8 ``[total]`` with
  ``S_jpeg_offsets`` int ``[N + 1]`` (image ``i`` is ``bytes[offsets[i]:offsets[i + 1]]``);
- labels ``y_S``: int ``[N]`` (other label sets use a suffix, e.g. ``y_S_coarse``);
- optional ``class_names`` str ``[C]`` (and ``coarse_class_names`` / ``class_names_coarse`` for a
  suffixed label set).

Every member is validated from its ``.npy`` header (and the small label/offset arrays) before any
pixel is read or decoded. Decoded images are cached in-process (a small LRU) and, for JPEG splits
and compressed pixel members (slow to inflate), on disk as
``<cache_dir>/<sha256(path, mtime, size, split)>.npy``, memory-mapped when read back.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import hashlib
import io
import logging
import lzma
import math
import os
import struct
import tempfile
import threading
import tokenize
import zipfile
import zlib

import numpy as np
from PIL import Image

from nm_hebb_jax.data.dataset import MAX_NUM_CLASSES
from nm_hebb_jax.data.errors import DataError
from nm_hebb_jax.errors import MissingFileError

Arrays = tuple[np.ndarray, np.ndarray]

DEFAULT_LABEL_KEY = "y_{split}"
_CACHE_VERSION = "v1"
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a zip member, an empty zip
_NPY_MAGIC = b"\x93NUMPY"
_LRU_SIZE = 3
_lru: collections.OrderedDict[tuple, np.ndarray] = collections.OrderedDict()
_lru_lock = threading.Lock()
# What reading a damaged archive or member can raise (zip structure, CRC, inflate/LZMA streams,
# unsupported or encrypted members, a header that declares an impossible array, a header whose
# dict numpy cannot parse: it tokenizes and literal_evals it).
_READ_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    tokenize.TokenError,
    EOFError,
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    NotImplementedError,
    RuntimeError,
    MemoryError,
    struct.error,
)


@dataclasses.dataclass(frozen=True)
class NpzSplitInfo:
    """What :func:`inspect_npz_split` learns about one split without reading its pixels.

    Attributes:
      path: the file.
      split: the split name.
      num_examples: N.
      encoding: ``'pixels'`` or ``'jpeg'``.
      pixel_shape: shape of ``x_S`` as stored (pixels only; ``None`` for JPEG).
      label_key: the member holding the labels.
      class_names: the class names that go with the label set, or ``None`` if the file has none.
      num_classes: C used for the range check (0 = only non-negativity was checked).
    """

    path: str
    split: str
    num_examples: int
    encoding: str
    pixel_shape: tuple[int, ...] | None
    label_key: str
    class_names: tuple[str, ...] | None
    num_classes: int


def default_cache_dir() -> str:
    """``$XDG_CACHE_HOME/nm_hebb_jax``, else ``~/.cache/nm_hebb_jax``."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "nm_hebb_jax")


def clear_cache() -> None:
    """Empties the in-process cache of decoded images (the on-disk cache is left alone)."""
    with _lru_lock:
        _lru.clear()


def resolve_label_key(label_key: str | None, split: str, train_split: str = "train") -> str:
    """The label member of ``split`` for a label-key setting.

    Args:
      label_key: ``None`` (= ``'y_{split}'``), a template with ``{split}`` such as
        ``'y_{split}_coarse'``, or a literal member name of the training split such as
        ``'y_train_coarse'`` (its first ``train_split`` is replaced by ``split``).
      split: the split whose labels are wanted.
      train_split: the source split used for training.

    Returns:
      The member name, e.g. ``'y_test_coarse'``.
    """
    key = label_key or DEFAULT_LABEL_KEY
    if "{split}" in key:
        return key.replace("{split}", split)
    prefix = f"y_{train_split}"
    if key.startswith(prefix):
        return f"y_{split}" + key[len(prefix) :]
    return key


def open_npz(path: str) -> np.lib.npyio.NpzFile:
    """Opens an ``.npz`` archive lazily (only its directory is read).

    Args:
      path: the file.

    Returns:
      The open ``NpzFile``; close it (or use it as a context manager).

    Raises:
      MissingFileError: the file does not exist (a FileNotFoundError).
      DataError: it is not a readable ``.npz`` archive.
    """
    if not os.path.exists(path):
        raise MissingFileError(f"npz file {path!r} does not exist: fix data.path")
    if os.path.isdir(path):
        raise DataError(f"npz path {path!r} is a directory: set data.path to the .npz file")
    try:
        with open(path, "rb") as f:
            magic = f.read(len(_NPY_MAGIC))
    except OSError as e:
        raise DataError(f"{path!r} cannot be read ({e.strerror}): fix data.path") from None
    if not magic.startswith(_ZIP_MAGIC) and magic != _NPY_MAGIC:
        # np.load would try it as a pickle and advise allow_pickle=True: never for a data file.
        raise DataError(
            f"{path!r} is not an .npz archive (it does not start with a zip header): "
            "re-create it with numpy.savez / numpy.savez_compressed, or convert the dataset with "
            "python -m nm_hebb_jax.data.convert"
        )
    try:
        npz = np.load(path, allow_pickle=False)
    except _READ_ERRORS as e:
        reason = _reason(e)
        raise DataError(
            f"{path!r} is not a readable .npz archive ({reason}): "
            "re-create it with numpy.savez / numpy.savez_compressed"
        ) from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise DataError(
            f"{path!r} is a single .npy array, not an .npz archive: "
            "re-create it with numpy.savez / numpy.savez_compressed"
        )
    return npz


def npz_splits(npz: np.lib.npyio.NpzFile) -> list[str]:
    """Names of the image splits in an open archive (members ``x_S`` or ``S_jpeg_bytes``)."""
    names = set()
    for key in npz.files:
        if key.startswith("x_") and len(key) > 2:
            names.add(key[2:])
        elif key.endswith("_jpeg_bytes") and len(key) > len("_jpeg_bytes"):
            names.add(key[: -len("_jpeg_bytes")])
    return sorted(names)


def npz_split_sizes(path: str) -> dict[str, int]:
    """Number of images of every split, from ``.npy`` headers only (splits it cannot size: -1).

    Args:
      path: the ``.npz`` file.

    Returns:
      split name -> N.
    """
    sizes = {}
    with open_npz(path) as npz:
        for split in npz_splits(npz):
            try:
                if f"x_{split}" in npz.files:
                    sizes[split] = _header(npz, f"x_{split}", path)[0][0]
                else:
                    sizes[split] = _header(npz, f"{split}_jpeg_offsets", path)[0][0] - 1
            except (KeyError, IndexError, ValueError, OSError, DataError):
                sizes[split] = -1
    return sizes


def _header(npz: np.lib.npyio.NpzFile, key: str, path: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of a member, from its ``.npy`` header only.

    The header is checked against the member's stored size, so a truncated member or a header
    that declares more data than the member holds is reported before anything is allocated.
    """
    try:
        info = npz.zip.getinfo(key + ".npy")
        with npz.zip.open(info) as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
            data_start = f.tell()
    except (KeyError, *_READ_ERRORS):
        arr = _read(npz, key, path)  # unusual header version or layout: read the member itself
        return tuple(arr.shape), arr.dtype
    shape, dtype = tuple(int(s) for s in shape), np.dtype(dtype)
    if not dtype.hasobject:
        declared = math.prod(shape) * dtype.itemsize
        stored = info.file_size - data_start
        if stored != declared:
            raise DataError(
                f"member {key!r} of {path!r} declares {dtype} {shape} ({declared} bytes) but holds "
                f"{stored} bytes: the file is truncated or corrupt, re-create it"
            )
    return shape, dtype


def _reason(e: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none).

    numpy's advice to load untrusted data with ``allow_pickle=True`` is never passed on.
    """
    lines = str(e).strip().splitlines()
    if "allow_pickle" in str(e) or "pickled" in str(e):
        return "it holds pickled Python objects, which are never loaded from a data file"
    return lines[0] if lines else type(e).__name__


def _read(npz: np.lib.npyio.NpzFile, key: str, path: str) -> np.ndarray:
    try:
        return npz[key]
    except _READ_ERRORS as e:
        reason = _reason(e)
        raise DataError(
            f"member {key!r} of {path!r} is unreadable ({reason}): re-create the file"
        ) from None


def _names_for(
    npz: np.lib.npyio.NpzFile, label_key: str, split: str, path: str
) -> tuple[str, ...] | None:
    """Class names that go with a label member (``class_names`` for ``y_S``; suffixed otherwise)."""
    suffix = label_key[len(f"y_{split}") :] if label_key.startswith(f"y_{split}") else None
    if suffix == "":
        candidates = ["class_names"]
    elif suffix:
        bare = suffix.lstrip("_")
        candidates = [f"class_names{suffix}", f"{bare}_class_names"]
    else:
        candidates = []
    for key in candidates:
        if key in npz.files:
            return tuple(str(n) for n in np.asarray(_read(npz, key, path)).reshape(-1))
    return None


def inspect_npz_split(
    path: str,
    split: str,
    *,
    label_key: str | None = None,
    num_classes: int = 0,
    train_split: str = "train",
) -> NpzSplitInfo:
    """Validates one split cheaply: headers, labels and JPEG offsets, never the pixels.

    Args:
      path: the ``.npz`` file.
      split: split name (``train``, ``test``, ...).
      label_key: see :func:`resolve_label_key`.
      num_classes: C for the label range check; 0 = the length of the matching class names if the
        file has them, else only non-negativity is checked.
      train_split: the training split's name (for literal label keys).

    Returns:
      An :class:`NpzSplitInfo`.

    Raises:
      FileNotFoundError, DataError: with a one-line message naming the problem and the fix.
    """
    key = resolve_label_key(label_key, split, train_split)
    with open_npz(path) as npz:
        splits = npz_splits(npz)
        if split not in splits:
            raise DataError(
                f"split {split!r} not found in {path!r} (splits found: "
                f"{', '.join(splits) or 'none'}; members: {', '.join(npz.files)}): "
                "set data.eval_split / data.train_split to one of them"
            )
        pixel_key, bytes_key = f"x_{split}", f"{split}_jpeg_bytes"
        offsets_key = f"{split}_jpeg_offsets"
        pixel_shape = None
        if pixel_key in npz.files:
            encoding = "pixels"
            shape, dtype = _header(npz, pixel_key, path)
            if dtype != np.uint8:
                raise DataError(
                    f"{pixel_key!r} in {path!r} has dtype {dtype}, expected uint8: "
                    "store pixels as uint8 in 0..255"
                )
            if len(shape) not in (3, 4) or (len(shape) == 4 and shape[-1] not in (1, 3)):
                raise DataError(
                    f"{pixel_key!r} in {path!r} has shape {shape}, expected [N, H, W, 3], "
                    "[N, H, W, 1] or [N, H, W]: store images NHWC"
                )
            n = shape[0]
            pixel_shape = shape
        else:
            encoding = "jpeg"
            if offsets_key not in npz.files:
                raise DataError(
                    f"{path!r} has {bytes_key!r} but no {offsets_key!r}: "
                    "add the int offsets [N + 1] of the JPEG bytes"
                )
            shape, dtype = _header(npz, bytes_key, path)
            if dtype != np.uint8 or len(shape) != 1:
                raise DataError(
                    f"{bytes_key!r} in {path!r} has dtype {dtype} and shape {shape}, expected "
                    "uint8 [total]: store the concatenated JPEG files as one uint8 vector"
                )
            offsets = _read(npz, offsets_key, path)
            if offsets.ndim != 1 or not np.issubdtype(offsets.dtype, np.integer):
                raise DataError(
                    f"{offsets_key!r} in {path!r} has dtype {offsets.dtype} and shape "
                    f"{offsets.shape}, expected int [N + 1]: store the start offsets plus the total"
                )
            n = offsets.shape[0] - 1
            offsets = offsets.astype(np.int64)  # unsigned offsets would wrap in np.diff
            if n > 0 and (
                offsets[0] != 0 or np.any(np.diff(offsets) <= 0) or offsets[-1] != shape[0]
            ):
                raise DataError(
                    f"{offsets_key!r} in {path!r} is not increasing from 0 to len({bytes_key}) = "
                    f"{shape[0]}: offsets[i]:offsets[i + 1] must delimit image i"
                )
        if n <= 0:
            raise DataError(
                f"split {split!r} in {path!r} is empty (0 images): add images or drop the split"
            )
        if key not in npz.files:
            raise DataError(
                f"labels {key!r} for split {split!r} missing from {path!r} (members: "
                f"{', '.join(npz.files)}): add them or set data.label_key"
            )
        labels = _read(npz, key, path)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(
                f"labels {key!r} in {path!r} have dtype {labels.dtype} and shape {labels.shape}, "
                "expected int [N]: store integer class ids"
            )
        if labels.shape[0] != n:
            raise DataError(
                f"{path!r} split {split!r} has {n} images but {labels.shape[0]} labels in {key!r}: "
                "the counts must match"
            )
        names = _names_for(npz, key, split, path)
    c = int(num_classes) if num_classes else (len(names) if names else 0)
    if not 0 <= c <= MAX_NUM_CLASSES:
        raise DataError(
            f"num_classes={c} for {path!r} must be in [0, {MAX_NUM_CLASSES}] (0 = from the class "
            "names or labels): fix data.num_classes or the class names"
        )
    lo, hi = int(labels.min()), int(labels.max())
    if not c and hi >= MAX_NUM_CLASSES:
        raise DataError(
            f"labels {key!r} in {path!r} reach {hi}, which would mean {hi + 1} classes (at most "
            f"{MAX_NUM_CLASSES}): fix the labels, or store class_names / set data.num_classes"
        )
    if lo < 0 or (c and hi >= c):
        bound = f"[0, {c})" if c else "[0, inf)"
        raise DataError(
            f"labels {key!r} in {path!r} span [{lo}, {hi}], outside {bound}: fix the labels or "
            "set data.num_classes"
        )
    return NpzSplitInfo(
        path=path,
        split=split,
        num_examples=int(n),
        encoding=encoding,
        pixel_shape=pixel_shape,
        label_key=key,
        class_names=names,
        num_classes=c,
    )


def peek_image_size(path: str, split: str) -> tuple[int, int]:
    """``(H, W)`` of a split's images without reading its pixels (JPEG: image 0's header only).

    Args:
      path: the ``.npz`` file.
      split: a split that :func:`inspect_npz_split` has validated.

    Returns:
      The image height and width.

    Raises:
      DataError: image 0 of a JPEG split is not a readable image.
    """
    with open_npz(path) as npz:
        if f"x_{split}" in npz.files:
            return tuple(_header(npz, f"x_{split}", path)[0][1:3])
        offsets = _read(npz, f"{split}_jpeg_offsets", path)
        try:
            with npz.zip.open(f"{split}_jpeg_bytes.npy") as f:
                if np.lib.format.read_magic(f) == (1, 0):
                    np.lib.format.read_array_header_1_0(f)
                else:
                    np.lib.format.read_array_header_2_0(f)
                head = f.read(int(offsets[1]))
            with Image.open(io.BytesIO(head)) as im:
                width, height = im.size
        except Exception as e:  # any failure to read untrusted bytes means bad data
            raise DataError(
                f"image 0 of split {split!r} of {path!r} is not a readable image ({_reason(e)}): "
                "re-encode it"
            ) from None
    return int(height), int(width)


def _decode_one(data: np.ndarray, offsets: np.ndarray, i: int, where: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data[offsets[i] : offsets[i + 1]])) as im:
            if im.mode != "RGB":
                im = im.convert("RGB")
            return np.asarray(im, dtype=np.uint8)
    except Exception as e:  # any failure to decode untrusted bytes means bad data
        reason = _reason(e)
        raise DataError(
            f"image {i} of {where} is not a decodable image ({reason}): re-encode it"
        ) from None


def decode_jpegs(data: np.ndarray, offsets: np.ndarray, *, where: str = "split") -> np.ndarray:
    """Decodes concatenated JPEG (or any Pillow-readable) files to RGB pixels, in threads.

    Args:
      data: uint8 [total] concatenated encoded files.
      offsets: int [N + 1]; image ``i`` is ``data[offsets[i]:offsets[i + 1]]``.
      where: a description for error messages.

    Returns:
      uint8 [N, H, W, 3].

    Raises:
      DataError: an image does not decode, or its size differs from the first image's.
    """
    n = offsets.shape[0] - 1
    first = _decode_one(data, offsets, 0, where)
    out = np.empty((n, *first.shape), dtype=np.uint8)
    out[0] = first

    def work(lo: int, hi: int) -> None:
        for i in range(lo, hi):
            img = _decode_one(data, offsets, i, where)
            if img.shape != first.shape:
                raise DataError(
                    f"image {i} of {where} is {img.shape[1]}x{img.shape[0]}, image 0 is "
                    f"{first.shape[1]}x{first.shape[0]}: resize all images to one size"
                )
            out[i] = img

    chunk = 2048
    workers = max(1, min(8, os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(work, lo, min(lo + chunk, n)) for lo in range(1, n, chunk)]
        for f in futures:
            f.result()
    return out


def _cache_key(path: str, split: str) -> tuple:
    st = os.stat(path)
    return (os.path.realpath(path), st.st_mtime_ns, st.st_size, split)


def _disk_cache_file(cache_dir: str, key: tuple) -> str:
    digest = hashlib.sha256(f"{_CACHE_VERSION}|{key!r}".encode()).hexdigest()[:32]
    return os.path.join(cache_dir, f"{digest}.npy")


def _read_disk_cache(file: str, n: int) -> np.ndarray | None:
    if not os.path.exists(file):
        return None
    try:
        arr = np.asarray(np.load(file, mmap_mode="r", allow_pickle=False))
    except (OSError, ValueError):
        return None
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[0] != n or arr.shape[-1] != 3:
        return None
    return arr


def _write_disk_cache(file: str, images: np.ndarray) -> None:
    directory = os.path.dirname(file)
    try:
        os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                np.save(f, images)
            os.replace(tmp, file)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    except OSError as e:
        logging.warning("nm_hebb_jax.data: could not write the decode cache %s (%s)", file, e)


def _is_compressed(path: str, key: str) -> bool:
    with open_npz(path) as npz:
        try:
            return npz.zip.getinfo(key + ".npy").compress_type != zipfile.ZIP_STORED
        except KeyError:
            return False


def _load_images(path: str, info: NpzSplitInfo, cache_dir: str | None) -> np.ndarray:
    key = _cache_key(path, info.split)
    with _lru_lock:
        if key in _lru:
            _lru.move_to_end(key)
            return _lru[key]
    split = info.split
    # Disk-cache what is slow to read: decoded JPEGs and compressed (e.g. LZMA) pixel members.
    cacheable = info.encoding == "jpeg" or _is_compressed(path, f"x_{split}")
    cache_dir = default_cache_dir() if cache_dir is None else cache_dir
    disk_file = None
    images = None
    if cacheable and cache_dir:
        disk_file = _disk_cache_file(os.path.expanduser(cache_dir), key)
        images = _read_disk_cache(disk_file, info.num_examples)
    if images is None:
        with open_npz(path) as npz:
            if info.encoding == "jpeg":
                data = _read(npz, f"{split}_jpeg_bytes", path)
                offsets = _read(npz, f"{split}_jpeg_offsets", path).astype(np.int64)
                images = decode_jpegs(data, offsets, where=f"split {split!r} of {path!r}")
            else:
                images = _read(npz, f"x_{split}", path)
        if images.ndim == 3:
            images = images[..., None]
        if images.shape[-1] == 1:
            images = np.repeat(images, 3, axis=-1)
        images = np.ascontiguousarray(images)
        if disk_file:
            _write_disk_cache(disk_file, images)
    images.flags.writeable = False
    with _lru_lock:
        _lru[key] = images
        while len(_lru) > _LRU_SIZE:
            _lru.popitem(last=False)
    return images


def load_npz_split(
    path: str,
    split: str,
    *,
    label_key: str | None = None,
    num_classes: int = 0,
    cache_dir: str | None = None,
    train_split: str = "train",
) -> Arrays:
    """Reads one split of an ``.npz`` file in the project's format.

    Everything is validated (see :func:`inspect_npz_split`) before pixels are read or decoded.

    Args:
      path: the ``.npz`` file.
      split: split name (``train``, ``test``, ...).
      label_key: label member or template (default ``'y_{split}'``), see
        :func:`resolve_label_key`.
      num_classes: C for the label range check (0 = from the file's class names, if any).
      cache_dir: on-disk cache of decoded JPEGs and inflated compressed pixels; ``None`` =
        :func:`default_cache_dir`, ``''`` = no disk cache.
      train_split: the training split's name (for literal label keys).

    Returns:
      ``(images, labels)``: uint8 [N, H, W, 3] (read-only; shared with the in-process cache) and
      int32 [N].

    Raises:
      FileNotFoundError, DataError: with a one-line message naming the problem and the fix.
    """
    info = inspect_npz_split(
        path, split, label_key=label_key, num_classes=num_classes, train_split=train_split
    )
    images = _load_images(path, info, cache_dir)
    with open_npz(path) as npz:
        labels = _read(npz, info.label_key, path).astype(np.int32)
    return images, labels
