"""Hostile input, property-based: bad ``.npz`` files, bad config values and sparse classes.

Each property states what must happen to generated input: ``build_run`` (which validates a config
and builds data and model without compiling) either builds, when the input is valid, or raises a
:class:`RunError` whose message is one line naming the problem (and never passes on numpy's advice
to load a file with ``allow_pickle=True``); no other exception escapes and no XLA compilation
happens first. ``Dataset.train_batch`` either returns a valid batch or raises a one-line
:class:`DataError`. Input that builds but cannot mean what the user wants (nothing to train, a
zero learning rate, a training split with one class) is refused too (section 4), and so is
resuming a workdir with other settings (section 5).

Data files are tiny and written to a fresh ``tempfile.TemporaryDirectory()`` per example
(hypothesis examples and function-scoped ``tmp_path`` fixtures do not mix). Config values
that used to pass ``build_run`` and fail only later are checked by
``test_config_values_fail_before_compilation`` (see ``LATE_FAILURES``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import tempfile
import zipfile

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from nm_hebb_jax import data as data_lib
from nm_hebb_jax.data import DataError, Dataset
from nm_hebb_jax.data.dataset import MAX_NUM_CLASSES, stratified_split
from nm_hebb_jax.models import MODEL_NAMES
from nm_hebb_jax.train import resume
from nm_hebb_jax.train import sharding as S
from nm_hebb_jax.train.loop import RunError, build_run
from nm_hebb_jax.train.methods import METHODS
from tests.util import load_config

MESH = S.make_mesh(jax.devices()[:1])
COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)
ANY = "either builds or raises a one-line RunError"  # expectation when validity is unknowable
# What a truncated or garbage file may be reported as (a few random bytes can form a valid empty
# zip archive, whose splits are then missing).
TRUNCATED = ("not a readable .npz", "not an .npz archive", "truncated or corrupt", "unreadable")
TRUNCATED += ("not found", "missing")

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------------ helpers


@contextlib.contextmanager
def _compilations():
    """Collects the JAX compile events (lowering, backend compile) recorded in the block."""
    events: list[str] = []

    def listener(event, duration, **kwargs):
        if event in COMPILE_EVENTS:
            events.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)


def _assert_one_line(message: str, error) -> None:
    alternatives = (error,) if isinstance(error, str) else tuple(error)
    assert message.strip(), "empty error message"
    assert "\n" not in message and "\r" not in message, f"multi-line message: {message!r}"
    assert "Traceback" not in message, message
    assert "allow_pickle" not in message, message  # never advise unpickling untrusted data
    if alternatives != (ANY,):
        assert any(a in message for a in alternatives), f"{message!r} names none of {alternatives}"


def check_build(config, error=None):
    """``build_run`` on one device against an expectation, asserting nothing was compiled.

    Args:
      config: the config.
      error: ``None`` = must build; a string (or tuple of alternatives) = must raise a one-line
        RunError containing it; ``ANY`` = either.

    Returns:
      The ``Run``, or ``None`` when it raised.
    """
    run = message = None
    with _compilations() as compiled:
        try:
            run = build_run(config, mesh=MESH)
        except RunError as e:
            message = str(e)
    assert not compiled, f"build_run compiled before reporting: {compiled}"
    if run is not None:
        assert error in (None, ANY), f"built, but expected a RunError naming {error!r}"
        return run
    assert error is not None, f"expected a build, got RunError: {message}"
    _assert_one_line(message, error)
    return None


def _set(config, dotted: str, value) -> None:
    *groups, field = dotted.split(".")
    node = config
    for group in groups:
        node = getattr(node, group)
    setattr(node, field, value)


def _images(seed: int, n: int, hw: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, hw, hw, 3), dtype=np.uint8)


def _encode(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _jpeg_members(split: str, images: np.ndarray) -> dict[str, np.ndarray]:
    files = [_encode(im) for im in images]
    offsets = np.concatenate([[0], np.cumsum([len(f) for f in files])]).astype(np.int64)
    data = np.frombuffer(b"".join(files), np.uint8).copy()
    return {f"{split}_jpeg_bytes": data, f"{split}_jpeg_offsets": offsets}


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(array), allow_pickle=True)
    return buf.getvalue()


def _zip_bytes(members: dict[str, np.ndarray], compressed: bool) -> bytes:
    """What ``np.savez`` / ``np.savez_compressed`` would write (object arrays pickled)."""
    buf = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(buf, "w", compression=method) as zf:
        for key, array in members.items():
            zf.writestr(f"{key}.npy", _npy_bytes(array))
    return buf.getvalue()


def _decode_oracle(data: np.ndarray, offsets: np.ndarray, image_size: int):
    """What reading a JPEG split must report: ``None`` (valid) or the words of the error."""
    first = None
    for i in range(len(offsets) - 1):
        try:
            with Image.open(io.BytesIO(data[offsets[i] : offsets[i + 1]].tobytes())) as im:
                shape = np.asarray(im.convert("RGB")).shape
        except Exception:
            return "not a decodable image"
        if first is None:
            first = shape
        elif shape != first:
            return "resize all images to one size"
    return None if first[:2] == (image_size, image_size) else "data.image_size"


# ------------------------------------------------------------------------ 1. hostile npz files


@dataclasses.dataclass
class NpzCase:
    """One generated ``.npz`` file and what building a run on it must do."""

    members: dict[str, np.ndarray]
    compressed: bool
    image_size: int
    val_size: int
    num_classes: int  # expected C of a valid build
    train_size: int
    error: object = None  # None = valid, else the words of the RunError (or ANY)
    raw: bytes | None = None  # the file's bytes instead of ``members``
    overrides: dict = dataclasses.field(default_factory=dict)


PIXEL_KINDS = ("pixel_rank", "pixel_dtype", "channels")
JPEG_KINDS = (
    "offsets_not_increasing",
    "offsets_out_of_range",
    "offsets_dtype",
    "offsets_missing",
    "bytes_dtype",
    "corrupt_jpeg",
)
COMMON_KINDS = (
    "valid",
    "label_count",
    "label_negative",
    "label_too_big",
    "label_dtype",
    "label_rank",
    "labels_missing",
    "empty",
    "image_size",
    "num_classes",
    "val_size",
    "eval_split_shape",
    "eval_split_missing",
    "truncated",
    "garbage",
    "bitflip",
    "header_lies",
)


@st.composite
def npz_cases(draw, kind: str) -> NpzCase:
    n = draw(st.integers(2, 8))
    c = draw(st.integers(2, 4))
    hw = draw(st.sampled_from([8, 16]))
    if kind in PIXEL_KINDS:
        encoding = "pixels"
    elif kind in JPEG_KINDS:
        encoding = "jpeg"
    else:
        encoding = draw(st.sampled_from(["pixels", "jpeg"]))
    images = _images(draw(st.integers(0, 2**32 - 1)), n, hw)
    labels = np.array(draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    labels = labels.astype(draw(st.sampled_from([np.int64, np.int32, np.uint8, np.int16])))
    with_names = draw(st.booleans())
    members: dict[str, np.ndarray] = {}
    if encoding == "pixels":
        layout = draw(st.sampled_from(["rgb", "gray", "gray1"]))
        x = {"rgb": images, "gray": images[..., 0], "gray1": images[..., :1]}[layout]
        members["x_train"] = np.ascontiguousarray(x)
    else:
        members.update(_jpeg_members("train", images))
    members["y_train"] = labels
    if with_names:
        members["class_names"] = np.array([f"class{i}" for i in range(c)])
    case = NpzCase(
        members=members,
        compressed=draw(st.booleans()),
        image_size=hw,
        val_size=draw(st.integers(1, n - 1)),
        num_classes=c if with_names else int(labels.max()) + 1,
        train_size=n,
    )

    if kind == "valid":
        pass
    elif kind == "pixel_rank":
        rank = draw(st.sampled_from([1, 2, 5, 6]))
        shape = {1: (-1,), 2: (n, -1), 5: (n, hw, hw, 3, 1), 6: (n, 1, hw, hw, 3, 1)}[rank]
        members["x_train"] = images.reshape(shape)
        case.error = "shape"
    elif kind == "pixel_dtype":
        dtype = draw(
            st.sampled_from(
                [np.float16, np.float32, np.float64, np.int8, np.int16, np.int32, np.int64]
                + [np.uint16, np.bool_, np.complex64, "<U3", object]
            )
        )
        members["x_train"] = members["x_train"].astype(dtype)
        case.error = "dtype"
    elif kind == "channels":
        channels = draw(st.sampled_from([2, 4, 5, 6]))
        members["x_train"] = np.repeat(images[..., :1], channels, axis=-1)
        case.error = "shape"
    elif kind == "offsets_not_increasing":
        offsets = members["train_jpeg_offsets"].copy()
        i = draw(st.integers(1, n - 1))
        offsets[i] = draw(st.sampled_from([offsets[i + 1], offsets[i - 1], offsets[i + 1] + 3]))
        members["train_jpeg_offsets"] = offsets.astype(draw(st.sampled_from(["<i8", "<u8"])))
        case.error = "not increasing"
    elif kind == "offsets_out_of_range":
        offsets = members["train_jpeg_offsets"].copy()
        where = draw(st.sampled_from(["first", "last", "negative"]))
        if where == "first":
            offsets[0] = draw(st.integers(1, int(offsets[1]) - 1))
        elif where == "last":
            offsets[-1] += draw(st.integers(1, 10**12))
        else:
            offsets[draw(st.integers(0, n))] = draw(st.integers(-(2**62), -1))
        members["train_jpeg_offsets"] = offsets
        case.error = "not increasing"
    elif kind == "offsets_dtype":
        offsets = members["train_jpeg_offsets"]
        members["train_jpeg_offsets"] = draw(
            st.sampled_from([offsets.astype(np.float64), offsets[:, None], offsets.astype(str)])
        )
        case.error = "train_jpeg_offsets"
    elif kind == "offsets_missing":
        del members["train_jpeg_offsets"]
        case.error = "train_jpeg_offsets"
    elif kind == "bytes_dtype":
        data = members["train_jpeg_bytes"]
        members["train_jpeg_bytes"] = draw(
            st.sampled_from([data.astype(np.int16), data.astype(np.float32), data[None, :]])
        )
        case.error = "train_jpeg_bytes"
    elif kind == "corrupt_jpeg":
        data = members["train_jpeg_bytes"].copy()
        offsets = members["train_jpeg_offsets"].copy()
        i = draw(st.integers(0, n - 1))
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        if draw(st.booleans()):  # overwrite bytes of image i (its header or its scan data)
            for pos, value in draw(
                st.lists(st.tuples(st.integers(lo, hi - 1), st.integers(0, 255)), max_size=8)
            ):
                data[pos] = value
        else:  # cut image i short
            keep = draw(st.integers(1, hi - lo - 1))
            data = np.concatenate([data[: lo + keep], data[hi:]])
            offsets[i + 1 :] -= hi - lo - keep
        members["train_jpeg_bytes"], members["train_jpeg_offsets"] = data, offsets
        case.error = _decode_oracle(data, offsets, hw)
    elif kind == "label_count":
        delta = draw(st.integers(-n, 3).filter(lambda d: d != 0))
        members["y_train"] = np.resize(labels, n + delta)
        case.error = "labels"
    elif kind == "label_negative":
        bad = labels.astype(np.int64)
        bad[draw(st.integers(0, n - 1))] = draw(st.integers(-(2**63), -1))
        members["y_train"] = bad
        case.error = "outside"
    elif kind == "label_too_big":
        value = draw(st.integers(c, c + 20) | st.integers(MAX_NUM_CLASSES, 2**64 - 1))
        bad = labels.astype(np.uint64 if value >= 2**63 else np.int64)
        bad[draw(st.integers(0, n - 1))] = value
        members["y_train"] = bad
        if with_names:
            case.error = "outside"
        elif value >= MAX_NUM_CLASSES:
            case.error = "classes"
        else:
            case.num_classes = value + 1
    elif kind == "label_dtype":
        dtype = draw(
            st.sampled_from([np.float32, np.float64, np.bool_, np.complex64, "<U4", object])
        )
        members["y_train"] = labels.astype(dtype)
        case.error = "y_train"
    elif kind == "label_rank":
        members["y_train"] = draw(st.sampled_from([labels[:, None], labels[None, :], labels[0]]))
        case.error = "y_train"
    elif kind == "labels_missing":
        y = members.pop("y_train")
        if draw(st.booleans()):
            members["labels"] = y
        case.error = "y_train"
    elif kind == "empty":
        if encoding == "pixels":
            members["x_train"] = members["x_train"][:0]
        else:
            members["train_jpeg_bytes"] = members["train_jpeg_bytes"][:0]
            members["train_jpeg_offsets"] = draw(
                st.sampled_from([np.zeros(1, np.int64), np.zeros(0, np.int64)])
            )
        members["y_train"] = labels[:0]
        case.error = "empty"
    elif kind == "image_size":
        case.image_size = draw(st.integers(1, 64).filter(lambda s: s != hw))
        case.error = "data.image_size"
    elif kind == "num_classes":
        nc = draw(
            st.integers(-3, 2 * c + 2)
            | st.sampled_from([-(2**40), MAX_NUM_CLASSES + 1, 2**40, 2**62])
        )
        case.overrides["data.num_classes"] = nc
        if nc < 0 or nc > MAX_NUM_CLASSES:
            case.error = "data.num_classes"
        elif 0 < nc <= int(labels.max()):
            case.error = "outside"
        elif nc > 0:
            case.num_classes = nc
    elif kind == "val_size":
        case.val_size = draw(st.integers(-(2**40), 0) | st.integers(n, 2**40))
        case.error = "val_size"
    elif kind == "eval_split_shape":
        m = draw(st.integers(1, 4))
        test_hw = draw(st.sampled_from([hw, 8, 16, 12]))
        test_images = _images(draw(st.integers(0, 2**32 - 1)), m, test_hw)
        if draw(st.booleans()):
            members["x_test"] = test_images
        else:
            members.update(_jpeg_members("test", test_images))
        members["y_test"] = np.zeros(m, np.int64)
        case.overrides["eval.split"] = "test"
        case.error = None if test_hw == hw else "eval_split"
    elif kind == "eval_split_missing":
        case.overrides["eval.split"] = draw(st.sampled_from(["test", "valid", "holdout"]))
        case.error = "not found"
    elif kind == "truncated":
        raw = _zip_bytes(members, case.compressed)
        case.raw = raw[: draw(st.integers(0, len(raw) - 1))]
        case.error = TRUNCATED
    elif kind == "garbage":
        prefix = draw(st.sampled_from([b"", b"PK\x03\x04", b"PK\x05\x06", b"\x93NUMPY\x01\x00"]))
        case.raw = prefix + draw(st.binary(max_size=300))
        case.error = TRUNCATED
    elif kind == "bitflip":
        raw = bytearray(_zip_bytes(members, case.compressed))
        for pos, value in draw(
            st.lists(st.tuples(st.integers(0, 2**32), st.integers(0, 255)), min_size=1, max_size=6)
        ):
            raw[pos % len(raw)] = value
        case.raw = bytes(raw)
        case.error = ANY
    elif kind == "header_lies":
        key = draw(st.sampled_from(sorted(k for k in members if k != "class_names")))
        npy = _npy_bytes(members[key])
        data_len = members[key].nbytes
        cut = draw(st.integers(1, max(1, data_len)))
        lied = npy[: len(npy) - cut] if data_len else npy + b"\0" * cut
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for k, array in members.items():
                zf.writestr(f"{k}.npy", lied if k == key else _npy_bytes(array))
        case.raw = buf.getvalue()
        # Pixel and JPEG-byte headers are checked against the stored size; labels and offsets are
        # read whole, and a short read is reported as an unreadable member.
        case.error = ("truncated or corrupt", "unreadable")
    else:
        raise AssertionError(kind)
    return case


def _write_case(case: NpzCase, path: str) -> None:
    with open(path, "wb") as f:
        f.write(case.raw if case.raw is not None else _zip_bytes(case.members, case.compressed))


def _train_classes(case: NpzCase) -> int:
    """Classes with an example in the training portion of a valid case (after the carve)."""
    labels = np.asarray(case.members["y_train"]).astype(np.int64)
    train_index, _ = stratified_split(labels, case.val_size, seed=0)
    return np.unique(labels[train_index]).size


def _npz_config(path: str, case: NpzCase):
    config = load_config("quickstart")  # ':smoke': the tiny ResNet
    config.data.source = "npz"
    config.data.name = "custom"
    config.data.path = path
    config.data.cache_dir = ""
    config.data.image_size = case.image_size
    config.data.val_size = case.val_size
    # At most the training examples left after the carve (a larger batch is refused).
    config.batch_size = max(1, min(8, case.train_size - case.val_size))
    config.phase2.k_per_class = min(4, config.batch_size)
    for key, value in case.overrides.items():
        _set(config, key, value)
    return config


@pytest.mark.parametrize("kind", PIXEL_KINDS + JPEG_KINDS + COMMON_KINDS)
@settings(max_examples=8, **SETTINGS)
@given(data=st.data())
def test_hostile_npz_files_fail_fast_with_one_line(kind, data):
    case = data.draw(npz_cases(kind), label="case")
    data_lib.clear_cache()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data.npz")
        _write_case(case, path)
        error = case.error
        if error is None and _train_classes(case) < 2:  # valid, but one class to learn
            error = "class only"
        run = check_build(_npz_config(path, case), error)
        if run is not None and error is None:
            ds = run.dataset
            assert run.num_classes == ds.num_classes == case.num_classes
            assert ds.image_shape == (case.image_size, case.image_size, 3)
            assert ds.train_size == case.train_size - case.val_size
            assert ds.split_sizes["val"] == case.val_size


@pytest.mark.parametrize("compressed", [False, True])
def test_unparsable_npy_header_is_a_one_line_error(compressed):
    """A bit flip in a member's header dict makes numpy's header parser raise TokenError (or
    SyntaxError): found by the bitflip property above, kept here as a fixed case."""
    members = {"x_train": _images(0, 40, 8), "y_train": np.arange(40) % 4}
    npy = bytearray(_npy_bytes(members["x_train"]))
    npy[npy.index(b"{")] = 0x15  # numpy's header tokenizer: TokenError; the zip CRC stays valid
    buf = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(buf, "w", compression=method) as zf:
        zf.writestr("x_train.npy", bytes(npy))
        zf.writestr("y_train.npy", _npy_bytes(members["y_train"]))
    raw = buf.getvalue()
    case = NpzCase(members, compressed, 8, 8, 4, 40, error=TRUNCATED, raw=bytes(raw))
    data_lib.clear_cache()
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data.npz")
        _write_case(case, path)
        check_build(_npz_config(path, case), case.error)


# ------------------------------------------------------------------------ 2. hostile configs


def _text():
    return st.text(max_size=12)


# field -> (strategy of values, expectation for a value: None = builds, else the RunError's words).
# The base is configs/quickstart.py:smoke (digits, 1,797 examples, batch 32, phase2.k_per_class 4).
CONFIG_FIELDS = {
    # quickstart:smoke: 1,797 digits, 200 carved for validation, batch 32; a batch larger than
    # the training examples is refused
    "batch_size": (
        st.integers(-(2**40), 0) | st.integers(4, 4096),
        lambda v: None if 0 < v <= 1797 - 200 else "batch_size",
    ),
    "data.val_size": (
        st.integers(-(2**40), 2**40) | st.integers(-2, 1800) | st.integers(1760, 1770),
        lambda v: None if 1 <= v <= 1797 - 32 else ("batch_size" if 1 <= v < 1797 else "val_size"),
    ),
    "phase2.k_per_class": (st.integers(1, 32), lambda v: None),
    "hebb.layers": (
        st.lists(_text() | st.sampled_from(["stem", "stage1_block0/conv1"]), max_size=3).map(tuple),
        lambda v: None if set(v) <= {"stem", "stage1_block0/conv1"} else "conv layer",
    ),
    "model.name": (
        _text() | st.sampled_from(MODEL_NAMES),
        lambda v: None if v in MODEL_NAMES else "model",  # :smoke: the tiny variant of any
    ),
    "method": (_text() | st.sampled_from(METHODS), lambda v: None if v in METHODS else "method"),
    "data.source": (
        _text() | st.sampled_from(["digits", "npz", "tfds"]),
        lambda v: {"digits": None, "npz": "data.path", "tfds": "data.name"}.get(v, "data.source"),
    ),
    "nm.gate_learning": (
        _text() | st.sampled_from(["hypergradient", "joint_prior", "fixed"]),
        lambda v: None if v in ("hypergradient", "joint_prior", "fixed") else "nm.gate_learning",
    ),
    "hebb.activation": (
        _text() | st.sampled_from(["post", "pre", "maxpool"]),
        lambda v: None if v in ("post", "pre", "maxpool") else "activation",
    ),
    "hebb.stop_gradient": (st.sampled_from(["none", "activations", "weights"]), lambda v: None),
    "model.dtype": (
        _text() | st.sampled_from(["float32", "bfloat16"]),
        lambda v: None if v in ("float32", "bfloat16") else "model.dtype",
    ),
    "eval.split": (
        _text() | st.sampled_from(["val", "train"]),
        lambda v: None if v in ("val", "train") else "eval_split",
    ),
    "data.norm_stats": (
        _text() | st.sampled_from(["auto", "computed", "published"]),
        lambda v: {"auto": None, "computed": None, "published": "published"}.get(v, "norm_stats"),
    ),
    "data.num_classes": (
        st.integers(-5, 40) | st.sampled_from([-(2**40), MAX_NUM_CLASSES + 1, 2**62]),
        lambda v: (
            "data.num_classes"
            if v < 0 or v > MAX_NUM_CLASSES
            else ("outside" if 1 <= v <= 9 else None)
        ),
    ),
    "data.image_size": (
        st.integers(-(2**40), 0) | st.sampled_from([1, 8, 16, 513, 2**20, 2**40]),
        lambda v: None if 1 <= v <= 512 else "data.image_size",
    ),
    "optim.base_lr": (st.floats(1e-6, 10.0), lambda v: None),
    "phase1.num_steps": (st.integers(-1, 10**6), lambda v: None),
    "phase2.num_steps": (st.integers(-1, 10**6), lambda v: None),
    "phase1.epochs": (st.floats(0.0, 1e3), lambda v: None),
}

# Values that would only fail later if build_run let them through (ZeroDivisionError in the loop,
# a numpy/JAX error after phase 1 was compiled and trained, or silent garbage from a NaN learning
# rate): each must be a one-line RunError before compilation (validate.check_numbers).
_bad_float = st.sampled_from([math.nan, math.inf, -math.inf]) | st.floats(-1e6, -1e-9)
LATE_FAILURES = {
    "phase2.k_per_class": (st.integers(-(2**40), 0) | st.integers(33, 2**40), "k_per_class"),
    "batch_size": (st.integers(1, 3), "k_per_class"),  # below phase2.k_per_class = 4
    "hebb.stop_gradient": (
        _text().filter(lambda v: v not in ("none", "activations", "weights")),
        "stop_gradient",
    ),
    "optim.base_lr": (_bad_float, "base_lr"),
    "phase1.num_steps": (st.integers(-(2**40), -2), "num_steps"),
    "phase2.num_steps": (st.integers(-(2**40), -2), "num_steps"),
    "phase1.epochs": (_bad_float, "epochs"),  # with phase1.num_steps = -1
    "phase2.lr_factor": (_bad_float, "lr_factor"),
    "optim.warmup_epochs": (_bad_float, "warmup_epochs"),
    "eval.batch_size": (st.integers(-(2**40), 0), "eval.batch_size"),
    "log.every_steps": (st.integers(-(2**40), 0), "every_steps"),
    "log.eval_every_steps": (st.integers(-(2**40), 0), "every_steps"),
    "ckpt.every_steps": (st.integers(-(2**40), 0), "every_steps"),
    "ewc.fisher_examples": (st.integers(-(2**40), 0), "fisher_examples"),
    "ewc.chunk_size": (st.integers(-(2**40), 0), "chunk_size"),
    "ewc.refresh_epochs": (_bad_float, "refresh_epochs"),
}


def _config_with(field: str, value):
    config = load_config("quickstart")
    if field == "phase1.epochs":
        config.phase1.num_steps = -1
    _set(config, field, value)
    return config


@pytest.mark.parametrize("field", sorted(CONFIG_FIELDS))
@settings(max_examples=10, **SETTINGS)
@given(data=st.data())
def test_one_bad_config_value_fails_fast_with_one_line(field, data):
    strategy, expect = CONFIG_FIELDS[field]
    value = data.draw(strategy, label=field)
    check_build(_config_with(field, value), expect(value))


@pytest.mark.parametrize("field", sorted(LATE_FAILURES))
@settings(max_examples=3, **SETTINGS)
@given(data=st.data())
def test_config_values_fail_before_compilation(field, data):
    strategy, words = LATE_FAILURES[field]
    value = data.draw(strategy, label=field)
    check_build(_config_with(field, value), words)


@settings(max_examples=40, **SETTINGS)
@given(data=st.data())
def test_many_bad_config_values_fail_fast_with_one_line(data):
    fields = data.draw(
        st.lists(st.sampled_from(sorted(CONFIG_FIELDS)), min_size=2, max_size=6, unique=True)
    )
    config = load_config("quickstart")
    for field in fields:
        value = data.draw(CONFIG_FIELDS[field][0], label=field)
        if field == "batch_size" and value > 0:
            value = max(value, config.phase2.k_per_class)
        if field == "phase2.k_per_class":
            value = min(value, config.batch_size)
        _set(config, field, value)
    if "phase1.epochs" in fields:
        config.phase1.num_steps = -1
    check_build(config, ANY)


# ----------------------------------------------------------- 3. sparse classes in P x K batches


@st.composite
def sparse_datasets(draw) -> dict:
    """``Dataset`` arguments: classes with 0, 1 or a few training examples (after the carve)."""
    c = draw(st.integers(1, 10))
    counts = draw(st.lists(st.sampled_from([0, 0, 1, 1, 2, 3, 6]), min_size=c, max_size=c))
    assume(sum(counts) >= 1)
    labels = np.repeat(np.arange(c), counts)
    labels = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).permutation(labels)
    n = labels.shape[0]
    return dict(
        images=_images(draw(st.integers(0, 2**32 - 1)), n, 8),
        labels=labels,
        seed=draw(st.integers(0, 2**63 - 1)),
        num_classes=c + draw(st.integers(0, 3)),  # some classes have no example at all
        val_size=draw(st.integers(0, n - 1)),  # the carve may take a class's only example
        eval_split="train",
        process_count=draw(st.sampled_from([1, 1, 2, 3])),
    )


def _data_error(call) -> str | None:
    """``None`` if ``call()`` returns, else the message of the one-line DataError it raised."""
    try:
        call()
    except DataError as e:
        _assert_one_line(str(e), ANY)
        return str(e)
    return None


@settings(max_examples=150, **SETTINGS)
@given(
    args=sparse_datasets(),
    batch_size=st.integers(-2, 40),
    k=st.integers(-2, 45),
    step=st.integers(0, 2**40),
    balanced=st.booleans(),
    augment=st.booleans(),
)
def test_batches_with_absent_or_single_example_classes(
    args, batch_size, k, step, balanced, augment
):
    procs = args["process_count"]
    datasets = [Dataset(**args, process_index=p) for p in range(procs)]
    slices = []
    for ds in datasets:
        message = _data_error(
            lambda ds=ds: slices.append(
                ds.train_batch(
                    step, batch_size=batch_size, augment=augment, balanced=balanced, k_per_class=k
                )
            )
        )
        if batch_size <= 0 or batch_size % procs:
            assert message is not None and "batch_size" in message, message
            return
        if balanced and not 1 <= k <= batch_size:
            assert message is not None and "k_per_class" in message, message
            return
        assert message is None, message
    ds = datasets[0]
    images = np.concatenate([b["image"] for b in slices])
    labels = np.concatenate([b["label"] for b in slices])
    assert images.shape == (batch_size, 8, 8, 3) and images.dtype == np.float32
    assert np.isfinite(images).all()
    assert labels.shape == (batch_size,) and labels.dtype == np.int32
    train_labels = ds.get_arrays("train")[1]
    present = np.unique(train_labels)
    assert set(labels.tolist()) <= set(present.tolist())  # never a class without examples
    if not balanced:
        np.testing.assert_array_equal(
            labels, train_labels[ds.stream_indices(step, batch_size=batch_size)]
        )
        return
    rows, row_labels = ds.balanced_indices(step, batch_size=batch_size, k_per_class=k)
    np.testing.assert_array_equal(row_labels, labels)
    np.testing.assert_array_equal(train_labels[rows], labels)
    # P x K: P = min(classes present, B // K) classes; with too few classes, K = B // present.
    if present.size * k >= batch_size:
        p, k_eff = batch_size // k, k
    else:
        p, k_eff = present.size, batch_size // present.size
    classes, counts = np.unique(labels, return_counts=True)
    assert classes.size == p
    assert counts.min() >= k_eff and counts.sum() == batch_size
    # The first P * K rows are P runs of K rows of one class each.
    head = labels[: p * k_eff].reshape(p, k_eff)
    assert (head == head[:, :1]).all() and np.unique(head[:, 0]).size == p


@settings(max_examples=60, **SETTINGS)
@given(
    n=st.integers(0, 6),
    image_shape=st.sampled_from([(8, 8, 3), (8, 8), (8, 8, 1), (8, 8, 4), (8,), (8, 8, 3, 1)]),
    image_dtype=st.sampled_from([np.uint8, np.float32, np.int64, np.bool_]),
    label_dtype=st.sampled_from([np.int64, np.int64, np.float32, np.bool_, "<U2"]),
    label_delta=st.sampled_from([0, 0, 0, -1, 1]),
    label_shift=st.sampled_from([0, 0, -1, 5, MAX_NUM_CLASSES, 2**40]),
    num_classes=st.integers(-2, 10) | st.just(MAX_NUM_CLASSES + 1),
)
def test_dataset_arrays_are_validated(
    n, image_shape, image_dtype, label_dtype, label_delta, label_shift, num_classes
):
    images = np.zeros((n, *image_shape), image_dtype)
    values = np.arange(max(n + label_delta, 0)) % 3 + label_shift
    labels = values.astype(label_dtype)
    inferred = num_classes <= 0
    valid = (
        image_dtype is np.uint8
        and image_shape == (8, 8, 3)
        and n > 0
        and label_delta == 0
        and label_dtype is np.int64
        and values.min() >= 0
        and (
            values.max() + 1 <= MAX_NUM_CLASSES
            if inferred
            else values.max() < num_classes <= MAX_NUM_CLASSES
        )
    )
    message = _data_error(
        lambda: Dataset(images, labels, seed=0, num_classes=num_classes, eval_split="train")
    )
    assert (message is None) == valid, message


# ------------------------------------------------- 4. input that builds but means nothing


def test_nothing_to_train_a_zero_learning_rate_or_one_class_is_refused(tmp_path):
    c = load_config("quickstart")
    c.phase1.num_steps = c.phase2.num_steps = 0
    check_build(c, "phase1 and phase2 both have 0 steps: nothing would be trained")
    c.init_from = str(tmp_path)  # 0 steps with init_from: evaluates another run's parameters
    check_build(c, None)
    c = load_config("quickstart")
    c.phase1.num_steps, c.phase1.epochs = -1, 0.0
    c.phase2.num_steps, c.phase2.epochs = -1, 0.0
    check_build(c, "nothing would be trained")
    c = load_config("quickstart")
    c.optim.base_lr = 0.0
    check_build(c, "optim.base_lr=0 trains nothing")
    c = load_config("quickstart")
    c.phase2.lr_factor = 0.0
    check_build(c, "phase2.lr_factor=0 makes the 4 steps of phase 2 train nothing")
    c.phase2.num_steps = 0  # no phase 2: its learning rate does not matter
    check_build(c, None)
    # A file whose labels cover one class while it declares ten.
    rng = np.random.default_rng(0)
    path = str(tmp_path / "one_class.npz")
    np.savez(
        path,
        x_train=rng.integers(0, 256, (60, 8, 8, 3), dtype=np.uint8),
        y_train=np.full(60, 3),
        class_names=np.array([f"c{i}" for i in range(10)]),
    )
    case = NpzCase({}, False, 8, 10, 10, 60)
    check_build(
        _npz_config(path, case),
        f"the training split of custom ({path}) has examples of 1 class only (label 3) of the "
        "10 it declares",
    )


@pytest.mark.parametrize(
    "content",
    [
        b"this is not a zip file",
        b"\x80\x04\x95\x10\x00\x00\x00\x00\x00\x00\x00]\x94(K\x01K\x02e.",  # a pickle
        b"",
    ],
)
def test_a_file_that_is_not_an_npz_archive_is_named_without_unpickling_advice(tmp_path, content):
    path = tmp_path / "data.npz"
    path.write_bytes(content)
    case = NpzCase({}, False, 8, 10, 10, 60)
    check_build(_npz_config(str(path), case), "is not an .npz archive")


def test_an_object_array_member_is_refused_without_unpickling_advice(tmp_path):
    path = tmp_path / "objects.npz"
    np.savez(path, x_train=np.array([{"a": 1}] * 4, dtype=object), y_train=np.arange(4) % 2)
    case = NpzCase({}, False, 8, 1, 2, 4)
    check_build(_npz_config(str(path), case), ("pickled Python objects", "x_train"))


# ------------------------------------------------- 5. resuming a workdir with other settings


@settings(max_examples=25, **SETTINGS)
@given(
    changes=st.dictionaries(
        st.sampled_from(
            [
                "seed",
                "method",
                "data.val_size",
                "data.path",
                "model.name",
                "optim.base_lr",
                "hebb.weight",
                "phase1.num_steps",
                "phase2.epochs",
                "log.every_steps",
                "ckpt.every_steps",
                "eval.batch_size",
                "cpu_tuning",
                "debug.kill_at_step",
                "distributed.process_id",
                "skip_nonfinite",
                "resume_override",
                "data.cache_dir",
            ]
        ),
        st.integers(1, 10**6),
        max_size=5,
    )
)
def test_resume_refuses_changed_settings_except_durations_logging_and_eval(changes):
    """config_changes is exactly the changed fields outside MAY_CHANGE_ON_RESUME."""
    saved = resume.config_dict(load_config("quickstart"))
    new = resume.config_dict(load_config("quickstart"))
    for field, value in changes.items():
        group, _, name = field.rpartition(".")
        (new[group] if group else new)[name] = value
    refused = {f for f, _, _ in resume.config_changes(saved, new)}
    may_change = (
        "phase1.",
        "phase2.",
        "log.",
        "ckpt.",
        "eval.",
        "cpu_tuning",
        "debug.",
        "distributed.",
        "skip_nonfinite",
        "resume_override",
        "data.cache_dir",
    )
    expected = {
        f for f, v in changes.items() if not f.startswith(may_change) and _get(saved, f) != v
    }
    assert refused == expected


def _get(tree: dict, field: str):
    for part in field.split("."):
        tree = tree[part]
    return tree


def test_resume_comparison_ignores_fields_one_side_lacks():
    saved = resume.config_dict(load_config("quickstart"))
    new = resume.config_dict(load_config("quickstart"))
    del saved["nm"]["hidden"]  # a field added to the schema after the checkpoint was written
    new["nm"]["hidden"] = 99
    new["seed"] = 5
    assert resume.config_changes(saved, new) == [("seed", 0, 5)]
