"""Tests of the TFDS source (mock data) and the TinyImageNet builder (a fake folder layout)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

pytest.importorskip(
    "tensorflow", reason="TensorFlow (the [tfds] extra: pip install -e '.[tfds]') is not installed"
)
tfds = pytest.importorskip("tensorflow_datasets")

from nm_hebb_jax import data as data_lib  # noqa: E402
from nm_hebb_jax.data import class_names  # noqa: E402


def _config(**overrides) -> dict:
    cfg = {
        "source": "tfds",
        "name": "cifar10",
        "data_dir": "",
        "train_split": "train",
        "val_size": 0,
        "val_seed": 0,
        "eval_split": "test",
        "augment": True,
        "label_key": "",
        "num_classes": 0,
    }
    cfg.update(overrides)
    return cfg


def test_tfds_cifar10_mock():
    with tfds.testing.mock_data(num_examples=40):
        ds = data_lib.build_dataset(_config(val_size=10, eval_split="test"), seed=0)
    assert ds.num_classes == 10 and ds.class_names == list(class_names.CIFAR10_CLASSES)
    assert ds.image_shape == (32, 32, 3)
    assert ds.split_sizes == {"train": 30, "val": 10, "test": 40}
    assert ds.stats_source == "published"
    images, labels = ds.get_arrays("train")
    assert images.dtype == np.uint8 and labels.dtype == np.int32
    assert labels.min() >= 0 and labels.max() < 10
    batch = ds.train_batch(0, batch_size=8)
    assert batch["image"].shape == (8, 32, 32, 3) and batch["image"].dtype == np.float32
    batches = list(ds.eval_batches("test", batch_size=16))
    assert sum(int(b["mask"].sum()) for b in batches) == 40


def test_tfds_cifar100_coarse_mock():
    with tfds.testing.mock_data(num_examples=12):
        ds = data_lib.build_dataset(
            _config(name="cifar100", label_key="coarse_label", eval_split="train"), seed=0
        )
    assert ds.num_classes == 20 and ds.class_names[0] == "aquatic_mammals"
    assert ds.get_arrays("train")[1].max() < 20


def test_tfds_errors_are_one_line(tmp_path):
    cases = [
        (_config(data_dir=str(tmp_path)), ["not prepared", "tfds build cifar10", "data.data_dir"]),
        (_config(eval_split="validation"), ["'validation' not in tfds cifar10"]),
        (_config(name="mnist"), ["data.name='mnist'"]),
        (_config(label_key="fine"), ["data.label_key='fine'"]),
    ]
    for cfg, fragments in cases:
        with pytest.raises(data_lib.DataError) as info:
            data_lib.build_dataset(cfg, seed=0)
        msg = str(info.value)
        assert "\n" not in msg, msg
        for fragment in fragments:
            assert fragment in msg, msg


def _write_jpeg(path, rng, gray=False):
    shape = (64, 64) if gray else (64, 64, 3)
    img = rng.integers(0, 256, size=shape, dtype=np.uint8)
    img = (img // 64 * 64).astype(np.uint8)  # coarse blocks: JPEG round trip stays close
    Image.fromarray(img).save(path, format="JPEG", quality=95)


def _decode_like_pil(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _fake_tiny_imagenet(root, rng, wnids, n_train=3, n_val=2):
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("".join(f"{w}\tname of {w}\n" for w in wnids))
    annotations = []
    for c, wnid in enumerate(wnids):
        images = root / "train" / wnid / "images"
        images.mkdir(parents=True)
        (root / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
        for i in range(n_train):
            _write_jpeg(images / f"{wnid}_{i}.JPEG", rng, gray=(c == 0 and i == 0))
        for i in range(n_val):
            name = f"val_{c * n_val + i}.JPEG"
            annotations.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (root / "val" / "images").mkdir(parents=True)
    for line in annotations:
        _write_jpeg(root / "val" / "images" / line.split("\t")[0], rng)
    (root / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")


def test_tinyimagenet_builder_on_fake_folder(tmp_path):
    from nm_hebb_jax.data import tinyimagenet

    rng = np.random.default_rng(0)
    wnids = [class_names.TINYIMAGENET_WNIDS[i] for i in (5, 0, 17)]
    manual = tmp_path / "manual"
    _fake_tiny_imagenet(manual / "tiny-imagenet-200", rng, wnids)
    data_dir = tmp_path / "tfds"
    tinyimagenet.main(["--manual_dir", str(manual), "--data_dir", str(data_dir)])

    ds = data_lib.build_dataset(
        _config(name="tinyimagenet", data_dir=str(data_dir), eval_split="validation"), seed=0
    )
    assert ds.num_classes == 200 and ds.class_names[0] == "Egyptian cat"
    assert ds.image_shape == (64, 64, 3)
    assert ds.split_sizes == {"train": 9, "validation": 6}
    assert ds.augmentation == data_lib.Augmentation(pad=8, flip=True)

    builder = tinyimagenet.TinyImagenet200(data_dir=str(data_dir))
    for split, folder in (("train", None), ("validation", "val")):
        rows = list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))
        by_name = {r["file_name"].decode(): r for r in rows}
        images, labels = ds.get_arrays(split)
        assert sorted(labels.tolist()) == sorted(int(r["label"]) for r in rows)
        assert set(labels.tolist()) == {0, 5, 17}
        for name, row in by_name.items():
            wnid = class_names.TINYIMAGENET_WNIDS[int(row["label"])]
            path = (
                manual / "tiny-imagenet-200" / "val" / "images" / name
                if folder
                else manual / "tiny-imagenet-200" / "train" / wnid / "images" / name
            )
            expected = _decode_like_pil(path)
            assert row["image"].shape == (64, 64, 3)
            diff = np.abs(row["image"].astype(np.int64) - expected.astype(np.int64))
            assert diff.mean() < 2.0, (name, diff.mean())
    # The grayscale JPEG of the fixture decodes to three identical channels.
    train_rows = tfds.as_numpy(builder.as_dataset(split="train", shuffle_files=False))
    by_name = {r["file_name"].decode(): r["image"] for r in train_rows}
    gray = by_name[f"{wnids[0]}_0.JPEG"]
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 1], gray[..., 2])


def test_tinyimagenet_builder_missing_folder(tmp_path):
    from nm_hebb_jax.data import tinyimagenet

    with pytest.raises(FileNotFoundError) as info:
        tinyimagenet.find_root(tmp_path)
    assert "\n" not in str(info.value) and "tiny-imagenet-200.zip" in str(info.value)


def test_tinyimagenet_rejects_unknown_wnids(tmp_path):
    from nm_hebb_jax.data import tinyimagenet

    (tmp_path / "wnids.txt").write_text("n99999999\n")
    with pytest.raises(ValueError, match="outside TinyImageNet-200"):
        tinyimagenet.read_wnids(tinyimagenet.find_root(tmp_path))
