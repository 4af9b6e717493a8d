"""Tests of nm_hebb_jax.data on generated .npz files and scikit-learn's digits (no TensorFlow)."""

from __future__ import annotations

import io
import os

import ml_collections
import numpy as np
import pytest
from PIL import Image

from nm_hebb_jax import data as data_lib
from nm_hebb_jax.data import npz as npz_lib
from nm_hebb_jax.data.augment import Augmentation, row_keys

HW = 8
CLASSES = ("cat", "dog", "frog")


def _images(n: int, rng: np.random.Generator, hw: int = HW) -> np.ndarray:
    return rng.integers(0, 256, size=(n, hw, hw, 3), dtype=np.uint8)


def _labels(counts: list[int]) -> np.ndarray:
    return np.concatenate([np.full(c, i, dtype=np.int64) for i, c in enumerate(counts)])


def _jpeg_members(images: np.ndarray, split: str) -> dict[str, np.ndarray]:
    blobs = []
    for img in images:
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        blobs.append(np.frombuffer(buf.getvalue(), dtype=np.uint8))
    offsets = np.concatenate([[0], np.cumsum([b.size for b in blobs])]).astype(np.int64)
    return {f"{split}_jpeg_bytes": np.concatenate(blobs), f"{split}_jpeg_offsets": offsets}


def _pil_decode(members: dict[str, np.ndarray], split: str) -> np.ndarray:
    data, offsets = members[f"{split}_jpeg_bytes"], members[f"{split}_jpeg_offsets"]
    out = []
    for i in range(offsets.size - 1):
        with Image.open(io.BytesIO(data[offsets[i] : offsets[i + 1]].tobytes())) as im:
            out.append(np.asarray(im.convert("RGB")))
    return np.stack(out)


@pytest.fixture
def pixel_npz(tmp_path):
    """A pixel-format file: train (3 unbalanced classes, 60 images) and test (21 images)."""
    rng = np.random.default_rng(0)
    labels = _labels([30, 18, 12])
    path = tmp_path / "pix.npz"
    np.savez_compressed(
        path,
        x_train=_images(labels.size, rng),
        y_train=labels,
        x_test=_images(21, rng),
        y_test=rng.integers(0, 3, size=21),
        class_names=np.array(CLASSES),
    )
    return str(path)


def _config(path: str, **overrides) -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict(
        {
            "source": "npz",
            "name": "cifar10",
            "path": path,
            "data_dir": "",
            "train_split": "train",
            "val_size": 0,
            "val_seed": 0,
            "eval_split": "test",
            "augment": True,
            "label_key": "",
            "image_size": None,
            "num_classes": 0,
            "cache_dir": "",
            "norm_stats": "auto",
        }
    )
    cfg.update(overrides)
    return cfg


def _one_line_error(exc_type, fn, *fragments):
    with pytest.raises(exc_type) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg, msg
    for fragment in fragments:
        assert fragment in msg, msg
    return msg


# ----------------------------------------------------------------------------- formats & shapes


def test_pixels_shapes_dtypes_and_normalisation(pixel_npz):
    ds = data_lib.build_dataset(
        _config(pixel_npz, name="custom", val_size=12, eval_split="val"), seed=1
    )
    assert ds.num_classes == 3 and ds.class_names == list(CLASSES)
    assert ds.image_shape == (HW, HW, 3)
    assert ds.split_sizes == {"train": 48, "val": 12, "test": 21}
    assert ds.train_size == 48 and ds.stats_source == "computed"
    images, labels = ds.get_arrays("train")
    assert images.dtype == np.uint8 and images.shape == (48, HW, HW, 3)
    assert labels.dtype == np.int32 and labels.shape == (48,)
    x = images.astype(np.float64) / 255.0
    np.testing.assert_allclose(ds.mean, x.mean(axis=(0, 1, 2)), atol=1e-6)
    np.testing.assert_allclose(ds.std, x.std(axis=(0, 1, 2)), atol=1e-6)
    batch = ds.train_batch(3, batch_size=16, augment=False)
    assert batch["image"].dtype == np.float32 and batch["image"].shape == (16, HW, HW, 3)
    assert batch["label"].dtype == np.int32 and batch["label"].shape == (16,)
    rows = ds.stream_indices(3, batch_size=16)
    expected = (images[rows] / 255.0 - ds.mean) / ds.std
    np.testing.assert_allclose(batch["image"], expected, atol=1e-5)
    np.testing.assert_array_equal(batch["label"], labels[rows])


def test_published_statistics_for_cifar(pixel_npz):
    ds = data_lib.build_dataset(_config(pixel_npz), seed=0)
    assert ds.stats_source == "published"
    np.testing.assert_allclose(ds.mean, [0.4914, 0.4822, 0.4465])
    computed = data_lib.build_dataset(_config(pixel_npz, norm_stats="computed"), seed=0)
    assert computed.stats_source == "computed"


def test_jpeg_variant_and_disk_cache(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    members = _jpeg_members(_images(10, rng, hw=16), "train")
    path = str(tmp_path / "jpeg.npz")
    np.savez(path, y_train=np.arange(10) % 2, **members)
    reference = _pil_decode(members, "train")
    cache = tmp_path / "cache"
    data_lib.clear_cache()
    images, labels = data_lib.load_npz_split(path, "train", cache_dir=str(cache))
    np.testing.assert_array_equal(images, reference)
    np.testing.assert_array_equal(labels, np.arange(10) % 2)
    assert labels.dtype == np.int32 and images.dtype == np.uint8
    assert len(os.listdir(cache)) == 1

    data_lib.clear_cache()

    def no_decode(*args, **kwargs):
        raise AssertionError("decoded again despite the disk cache")

    monkeypatch.setattr(npz_lib, "decode_jpegs", no_decode)
    cached, _ = data_lib.load_npz_split(path, "train", cache_dir=str(cache))
    np.testing.assert_array_equal(cached, reference)
    assert not cached.flags.writeable
    monkeypatch.undo()

    data_lib.clear_cache()
    off = tmp_path / "off"
    data_lib.load_npz_split(path, "train", cache_dir="")
    assert not off.exists() and len(os.listdir(cache)) == 1


def test_grayscale_is_replicated(tmp_path):
    rng = np.random.default_rng(2)
    gray = rng.integers(0, 256, size=(6, HW, HW), dtype=np.uint8)
    for i, x in enumerate((gray, gray[..., None])):
        path = str(tmp_path / f"gray{i}.npz")
        np.savez(path, x_train=x, y_train=np.zeros(6, np.int64))
        images, _ = data_lib.load_npz_split(path, "train", cache_dir="")
        assert images.shape == (6, HW, HW, 3)
        for c in range(3):
            np.testing.assert_array_equal(images[..., c], gray)


def test_coarse_label_key(tmp_path):
    rng = np.random.default_rng(3)
    path = str(tmp_path / "c100.npz")
    np.savez(
        path,
        x_train=_images(20, rng),
        y_train=np.arange(20) % 10,
        y_train_coarse=np.arange(20) % 4,
        class_names=np.array([f"fine{i}" for i in range(10)]),
        coarse_class_names=np.array([f"coarse{i}" for i in range(4)]),
    )
    for key in ("y_{split}_coarse", "y_train_coarse"):
        ds = data_lib.build_dataset(
            _config(path, name="cifar100", label_key=key, eval_split="train"), seed=0
        )
        assert ds.num_classes == 4 and ds.class_names == [f"coarse{i}" for i in range(4)]
    fine = data_lib.build_dataset(_config(path, name="cifar100", eval_split="train"), seed=0)
    assert fine.num_classes == 10


# ----------------------------------------------------------------------------- validation carve


def test_val_carve_stratified_disjoint_and_seeded(pixel_npz):
    counts = np.array([30, 18, 12])

    def carve(val_seed, seed=0):
        ds = data_lib.build_dataset(
            _config(pixel_npz, val_size=13, val_seed=val_seed, eval_split="val"), seed=seed
        )
        return ds.get_arrays("train"), ds.get_arrays("val")

    (tr_x, tr_y), (va_x, va_y) = carve(0)
    assert va_y.size == 13 and tr_y.size == 47
    per_class = np.bincount(va_y, minlength=3)
    assert np.all(np.abs(per_class - 13 * counts / counts.sum()) < 1)
    # Disjoint and complete: the images are random, so every image is unique.
    keys = lambda x: {img.tobytes() for img in x}
    assert not keys(tr_x) & keys(va_x)
    all_x, _ = data_lib.load_npz_split(pixel_npz, "train", cache_dir="")
    assert keys(tr_x) | keys(va_x) == keys(all_x)
    (_, _), (va_x_again, _) = carve(0, seed=5)  # the training seed does not move the carve
    np.testing.assert_array_equal(va_x, va_x_again)
    (_, _), (va_x_other, _) = carve(1)
    assert keys(va_x_other) != keys(va_x)


def test_stratified_split_proportions():
    labels = np.repeat(np.arange(7), [50, 3, 17, 9, 100, 1, 20])
    for val_size in (1, 10, 33, 150):
        tr, va = data_lib.stratified_split(labels, val_size, seed=3)
        assert va.size == val_size and tr.size + va.size == labels.size
        assert np.intersect1d(tr, va).size == 0
        per_class = np.bincount(labels[va], minlength=7)
        quota = val_size * np.bincount(labels) / labels.size
        assert np.all(np.abs(per_class - quota) < 1)


# ----------------------------------------------------------------------------- training stream


def test_train_batch_deterministic_and_resumable(pixel_npz):
    cfg = _config(pixel_npz, val_size=6, eval_split="val")
    a = data_lib.build_dataset(cfg, seed=7)
    run = [a.train_batch(s, batch_size=16) for s in range(9)]
    b = data_lib.build_dataset(cfg, seed=7)  # a fresh process resuming at step 6
    for s in (6, 7, 8):
        resumed = b.train_batch(s, batch_size=16)
        np.testing.assert_array_equal(resumed["image"], run[s]["image"])
        np.testing.assert_array_equal(resumed["label"], run[s]["label"])
    again = a.train_batch(2, batch_size=16)
    np.testing.assert_array_equal(again["image"], run[2]["image"])
    other = data_lib.build_dataset(cfg, seed=8).train_batch(2, batch_size=16)
    assert not np.array_equal(other["image"], run[2]["image"])


@pytest.mark.parametrize("balanced", [False, True])
@pytest.mark.parametrize("process_count", [2, 4])
def test_process_slices_concatenate_to_global_batch(pixel_npz, balanced, process_count):
    cfg = _config(pixel_npz)
    single = data_lib.build_dataset(cfg, seed=3)
    shards = [
        data_lib.build_dataset(cfg, seed=3, process_index=p, process_count=process_count)
        for p in range(process_count)
    ]
    for step in (0, 5, 11):
        full = single.train_batch(step, batch_size=16, balanced=balanced)
        parts = [s.train_batch(step, batch_size=16, balanced=balanced) for s in shards]
        assert parts[0]["image"].shape == (16 // process_count, HW, HW, 3)
        for key in ("image", "label"):
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), full[key])


def test_epoch_covers_every_example_once(pixel_npz):
    ds = data_lib.build_dataset(_config(pixel_npz, val_size=12, eval_split="val"), seed=4)
    images, labels = ds.get_arrays("train")  # 48 examples
    assert ds.steps_per_epoch(16) == 3 and ds.steps_per_epoch(20) == 3
    seen = np.concatenate([ds.stream_indices(s, batch_size=16) for s in range(3)])
    np.testing.assert_array_equal(np.sort(seen), np.arange(48))
    # Batch size 20 does not divide 48: positions 0..47 still cover every example once, and the
    # third batch wraps into epoch 1.
    rows = np.concatenate([ds.stream_indices(s, batch_size=20) for s in range(3)])
    np.testing.assert_array_equal(np.sort(rows[:48]), np.arange(48))
    assert not np.array_equal(ds.stream_indices(3, batch_size=16), seen[:16])  # new permutation
    batches = [ds.train_batch(s, batch_size=16, augment=False) for s in range(3)]
    got = np.concatenate([b["image"] for b in batches])
    np.testing.assert_allclose(got, ds.normalize(images[seen]), atol=1e-6)
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), labels[seen])


def test_drop_remainder_epochs_are_full_batches_of_their_own_permutation(pixel_npz):
    ds = data_lib.build_dataset(
        _config(pixel_npz, val_size=12, eval_split="val", drop_remainder=True), seed=4
    )  # 48 training examples, batch 20: 2 full batches an epoch, 8 examples skipped
    assert ds.steps_per_epoch(20) == 2
    for epoch in range(3):
        rows = np.concatenate([ds.stream_indices(2 * epoch + i, batch_size=20) for i in (0, 1)])
        assert rows.size == 40 and np.unique(rows).size == 40  # no repeats inside an epoch
        np.testing.assert_array_equal(rows, ds._permutation(epoch)[:40])
    # Resuming at any step gives the same rows, and the multi-process slices concatenate.
    again = data_lib.build_dataset(
        _config(pixel_npz, val_size=12, eval_split="val", drop_remainder=True), seed=4
    )
    np.testing.assert_array_equal(
        again.stream_indices(5, batch_size=20), ds.stream_indices(5, batch_size=20)
    )
    _one_line_error(
        data_lib.DataError, lambda: ds.stream_indices(0, batch_size=64), "batch_size=64", "48"
    )


def test_train_subset_is_stratified_seeded_and_disjoint_from_val(pixel_npz):
    cfg = _config(pixel_npz, val_size=12, eval_split="val", train_subset=24)
    ds = data_lib.build_dataset(cfg, seed=4)
    full = data_lib.build_dataset(_config(pixel_npz, val_size=12, eval_split="val"), seed=4)
    assert ds.train_size == 24 and ds.split_sizes["val"] == 12
    # The validation split does not depend on the subset; the subset is within the training rest.
    np.testing.assert_array_equal(ds._splits["val"].index, full._splits["val"].index)
    assert set(ds._splits["train"].index) < set(full._splits["train"].index)
    # Stratified: classes 30/18/12 of 60 -> 24 rows keep the proportions (12/7.2/4.8 -> ±1).
    counts = np.bincount(ds.get_arrays("train")[1], minlength=3)
    assert counts.sum() == 24 and np.all(np.abs(counts - np.array([12, 7.2, 4.8])) < 1)
    # Seeded by val_seed and independent of the training seed.
    same = data_lib.build_dataset(cfg, seed=9)
    np.testing.assert_array_equal(same._splits["train"].index, ds._splits["train"].index)
    other = data_lib.build_dataset(
        _config(pixel_npz, val_size=12, eval_split="val", train_subset=24, val_seed=1), seed=4
    )
    assert not np.array_equal(other._splits["train"].index, ds._splits["train"].index)
    _one_line_error(
        data_lib.DataError,
        lambda: data_lib.build_dataset(
            _config(pixel_npz, val_size=12, eval_split="val", train_subset=49), seed=4
        ),
        "data.train_subset=49",
        "48",
    )


def test_augmentation_is_crop_and_flip(pixel_npz):
    ds = data_lib.build_dataset(_config(pixel_npz), seed=2)
    assert ds.augmentation == Augmentation(pad=4, flip=True)
    images, _ = ds.get_arrays("train")
    rows = ds.stream_indices(1, batch_size=32)
    batch = ds.train_batch(1, batch_size=32)
    raw = np.rint((batch["image"] * ds.std + ds.mean) * 255).astype(np.int64)
    padded = np.pad(images[rows], ((0, 0), (4, 4), (4, 4), (0, 0))).astype(np.int64)
    flips = 0
    for i in range(32):
        matches = [
            (dy, dx, f)
            for dy in range(9)
            for dx in range(9)
            for f in (False, True)
            if np.array_equal(
                (lambda c: c[:, ::-1] if f else c)(padded[i, dy : dy + HW, dx : dx + HW]), raw[i]
            )
        ]
        assert matches, f"row {i} is not a padded crop (+ flip) of its source image"
        flips += matches[0][2]
    assert 0 < flips < 32
    plain = ds.train_batch(1, batch_size=32, augment=False)
    np.testing.assert_allclose(plain["image"], ds.normalize(images[rows]), atol=1e-6)
    off = data_lib.build_dataset(_config(pixel_npz, augment=False), seed=2)
    assert off.augmentation is None
    np.testing.assert_array_equal(off.train_batch(1, batch_size=32)["image"], plain["image"])


def test_augmentation_vectorised_matches_per_row_definition():
    rng = np.random.default_rng(0)
    images = _images(5, rng, hw=6)
    keys = row_keys(11, 1, 3, np.arange(5))
    augment = Augmentation(pad=2, flip=True)
    out = augment(images, keys)
    for i in range(5):  # row i alone, with its own key, gives the same result
        np.testing.assert_array_equal(augment(images[i : i + 1], keys[i : i + 1])[0], out[i])


# ----------------------------------------------------------------------------- balanced batches


def test_balanced_p_by_k(tmp_path):
    rng = np.random.default_rng(5)
    counts = [12, 12, 12, 12, 12, 12, 12, 12, 12, 2]  # class 9 has fewer than K examples
    labels = _labels(counts)
    path = str(tmp_path / "ten.npz")
    np.savez(path, x_train=_images(labels.size, rng), y_train=labels)
    ds = data_lib.build_dataset(_config(path, name="custom", eval_split="train"), seed=0)
    train_x, train_y = ds.get_arrays("train")
    seen_nine = False
    for step in range(30):
        batch = ds.train_batch(step, batch_size=16, balanced=True, k_per_class=4, augment=False)
        y = batch["label"]
        groups = y.reshape(4, 4)  # P = min(10, 16 // 4) = 4 classes x K = 4, consecutive rows
        assert np.all(groups == groups[:, :1]) and np.unique(groups[:, 0]).size == 4
        rows, row_labels = ds.balanced_indices(step, batch_size=16, k_per_class=4)
        np.testing.assert_array_equal(train_y[rows], y)
        np.testing.assert_array_equal(row_labels, y)
        np.testing.assert_allclose(batch["image"], ds.normalize(train_x[rows]), atol=1e-6)
        for g in range(4):
            grp = rows[4 * g : 4 * g + 4]
            if train_y[grp[0]] == 9:
                seen_nine = True  # with replacement: only 2 distinct images
                assert np.unique(grp).size <= 2
            else:
                assert np.unique(grp).size == 4  # without replacement
    assert seen_nine
    # Per-process slices hold complete classes when B / P is a multiple of K.
    half = data_lib.build_dataset(
        _config(path, name="custom", eval_split="train"), seed=0, process_index=1, process_count=2
    )
    local = half.train_batch(3, batch_size=16, balanced=True)["label"]
    assert local.shape == (8,) and np.all(local.reshape(2, 4) == local.reshape(2, 4)[:, :1])


def test_balanced_few_classes_fill_remainder(pixel_npz):
    ds = data_lib.build_dataset(_config(pixel_npz), seed=0)  # C = 3
    y = ds.train_batch(0, batch_size=16, balanced=True, k_per_class=4)["label"]
    # C * K = 12 < 16: K = 16 // 3 = 5, rows 0..14 are 3 groups of 5, row 15 an extra example of
    # the first class.
    groups = y[:15].reshape(3, 5)
    assert np.all(groups == groups[:, :1]) and np.unique(groups[:, 0]).size == 3
    assert y[15] == y[0]


# ----------------------------------------------------------------------------- evaluation


@pytest.mark.parametrize("batch_size", [4, 8, 21, 32])
def test_eval_batches_cover_split_once(pixel_npz, batch_size):
    ds = data_lib.build_dataset(_config(pixel_npz), seed=0)
    images, labels = ds.get_arrays("test")
    assert images.shape == (21, HW, HW, 3)
    batches = list(ds.eval_batches("test", batch_size=batch_size))
    assert len(batches) == ds.num_batches("test", batch_size) == -(-21 // batch_size)
    image = np.concatenate([b["image"] for b in batches])
    label = np.concatenate([b["label"] for b in batches])
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.dtype == bool and mask.sum() == 21 and np.all(mask[:21]) and not np.any(mask[21:])
    np.testing.assert_allclose(image[:21], ds.normalize(images), atol=1e-6)
    np.testing.assert_array_equal(label[:21], labels)
    assert np.all(image[21:] == 0) and np.all(label[21:] == 0)
    # Two processes: each gets its half of every global batch.
    if batch_size % 2 == 0:
        shards = [
            data_lib.build_dataset(_config(pixel_npz), seed=0, process_index=p, process_count=2)
            for p in range(2)
        ]
        per_process = [list(s.eval_batches("test", batch_size=batch_size)) for s in shards]
        for i, full in enumerate(batches):
            for key in ("image", "label", "mask"):
                np.testing.assert_array_equal(
                    np.concatenate([per_process[0][i][key], per_process[1][i][key]]), full[key]
                )


# ----------------------------------------------------------------------------- digits


def test_digits_offline():
    ds = data_lib.build_dataset(
        {"source": "digits", "val_size": 297, "image_size": 16, "eval_split": "val"}, seed=0
    )
    assert ds.num_classes == 10 and ds.class_names == [str(i) for i in range(10)]
    assert ds.image_shape == (16, 16, 3) and ds.split_sizes == {"train": 1500, "val": 297}
    assert ds.augmentation == Augmentation(pad=1, flip=False)
    images, labels = ds.get_arrays("val")
    assert images.max() == 255 and np.all(images[..., 0] == images[..., 2])
    assert np.all(np.abs(np.bincount(labels, minlength=10) - 29.7) < 2)
    batch = ds.train_batch(0, batch_size=64)
    assert batch["image"].shape == (64, 16, 16, 3) and np.isfinite(batch["image"]).all()
    default = data_lib.build_dataset({"source": "digits", "eval_split": "train"}, seed=0)
    assert default.image_shape == (32, 32, 3)


# ----------------------------------------------------------------------------- errors


def test_errors_are_one_line(tmp_path, pixel_npz):
    rng = np.random.default_rng(6)

    def build(path, **kw):
        kw.setdefault("eval_split", "train")
        return lambda: data_lib.build_dataset(_config(str(path), **kw), seed=0)

    _one_line_error(FileNotFoundError, build(tmp_path / "nope.npz"), "does not exist", "data.path")

    text = tmp_path / "text.npz"
    text.write_text("hello\nworld\n")
    msg = _one_line_error(data_lib.DataError, build(text), "is not an .npz archive")
    assert "allow_pickle" not in msg  # numpy's advice for pickles, never for a data file

    _one_line_error(
        data_lib.DataError,
        build(pixel_npz, eval_split="valid"),
        "'valid' not found",
        "splits found: test, train",
    )

    def write(name, **members):
        path = tmp_path / f"{name}.npz"
        np.savez(path, **members)
        return path

    x = _images(6, rng)
    y = np.arange(6) % 3
    _one_line_error(
        data_lib.DataError, build(write("nolabels", x_train=x)), "labels 'y_train'", "missing"
    )
    _one_line_error(
        data_lib.DataError,
        build(write("float", x_train=x.astype(np.float32), y_train=y)),
        "dtype float32",
        "uint8",
    )
    _one_line_error(
        data_lib.DataError, build(write("rank", x_train=x[:, :, 0, 0], y_train=y)), "shape (6, 8)"
    )
    _one_line_error(
        data_lib.DataError,
        build(write("count", x_train=x, y_train=y[:5])),
        "6 images but 5 labels",
    )
    _one_line_error(
        data_lib.DataError,
        build(write("range", x_train=x, y_train=y + 2, class_names=np.array(CLASSES))),
        "outside [0, 3)",
    )
    _one_line_error(
        data_lib.DataError,
        build(write("empty", x_train=x[:0], y_train=y[:0])),
        "empty (0 images)",
    )
    bad_jpeg = {"train_jpeg_bytes": np.zeros(12, np.uint8), "train_jpeg_offsets": np.array([0, 12])}
    _one_line_error(
        data_lib.DataError,
        build(write("badjpeg", y_train=np.zeros(1, np.int64), **bad_jpeg)),
        "not a decodable image",
    )
    _one_line_error(data_lib.DataError, build(pixel_npz, eval_split="val"), "data.val_size > 0")
    _one_line_error(
        data_lib.DataError, build(pixel_npz, val_size=60), "data.val_size=60", "[0, 60)"
    )
    _one_line_error(data_lib.DataError, build(pixel_npz, source="hdf5"), "data.source")
    _one_line_error(data_lib.DataError, build(pixel_npz, image_size=32), "data.image_size=32")
    ds = data_lib.build_dataset(_config(pixel_npz), seed=0, process_index=0, process_count=3)
    _one_line_error(ValueError, lambda: ds.train_batch(0, batch_size=16), "process_count=3")
