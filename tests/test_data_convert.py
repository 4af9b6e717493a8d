"""``python -m nm_hebb_jax.data.convert`` on small generated inputs in every supported layout.

Each output is read back with the project's own reader (``load_npz_split``, ``build_dataset``)
and compared with the pixels and labels that were written into the input.
"""

from __future__ import annotations

import functools
import os
import pickle
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from nm_hebb_jax import data as data_lib
from nm_hebb_jax.data import class_names as names_lib
from nm_hebb_jax.data import convert as C
from tests.util import ROOT

# --------------------------------------------------------------------------------------------------
# Fixtures: the official CIFAR pickles in miniature
# --------------------------------------------------------------------------------------------------


def _cifar_rows(rng, n):
    """``(rows uint8 [n, 3072], images uint8 [n, 32, 32, 3])`` in the official row layout."""
    images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    rows = images.transpose(0, 3, 1, 2).reshape(n, 3072)  # red plane, green plane, blue plane
    return np.ascontiguousarray(rows), images


def _dump(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _fake_cifar10(root, rng, per_batch=3, n_test=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_x, train_y = [], []
    for i in range(1, 6):
        rows, images = _cifar_rows(rng, per_batch)
        labels = rng.integers(0, 10, per_batch).tolist()
        _dump(
            folder / f"data_batch_{i}",
            {b"batch_label": b"x", b"labels": labels, b"data": rows, b"filenames": [b"f"] * 3},
        )
        train_x.append(images)
        train_y += labels
    rows, test_x = _cifar_rows(rng, n_test)
    test_y = rng.integers(0, 10, n_test).tolist()
    _dump(folder / "test_batch", {b"labels": test_y, b"data": rows})
    names = [n.encode() for n in names_lib.CIFAR10_CLASSES]
    _dump(folder / "batches.meta", {b"label_names": names, b"num_cases_per_batch": per_batch})
    return folder, (np.concatenate(train_x), np.asarray(train_y)), (test_x, np.asarray(test_y))


def _fake_cifar100(root, rng, n_train=7, n_test=5):
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    expected = {}
    for split, n in (("train", n_train), ("test", n_test)):
        rows, images = _cifar_rows(rng, n)
        fine = rng.integers(0, 100, n).tolist()
        coarse = rng.integers(0, 20, n).tolist()
        _dump(folder / split, {b"fine_labels": fine, b"coarse_labels": coarse, b"data": rows})
        expected[split] = (images, np.asarray(fine), np.asarray(coarse))
    _dump(
        folder / "meta",
        {
            b"fine_label_names": [n.encode() for n in names_lib.CIFAR100_CLASSES],
            b"coarse_label_names": [n.encode() for n in names_lib.CIFAR100_COARSE_CLASSES],
        },
    )
    return folder, expected


def _npz_config(path, **overrides):
    cfg = {"source": "npz", "name": "custom", "path": str(path), "val_size": 0, "cache_dir": ""}
    cfg.update(overrides)
    return cfg


def test_cifar10_folder_parent_and_archive(tmp_path, capsys):
    rng = np.random.default_rng(0)
    folder, (x_train, y_train), (x_test, y_test) = _fake_cifar10(tmp_path / "dl", rng)
    out = tmp_path / "data" / "cifar10.npz"  # the parent folder is created
    assert C.main([str(folder), "--out", str(out)]) == 0
    line = capsys.readouterr().out.strip()
    assert "train 15, test 4 images of 32x32x3, 10 classes (from cifar10-python)" in line
    images, labels = data_lib.load_npz_split(str(out), "train", cache_dir="")
    np.testing.assert_array_equal(images, x_train)  # channel order and layout are right
    np.testing.assert_array_equal(labels, y_train)
    images, labels = data_lib.load_npz_split(str(out), "test", cache_dir="")
    np.testing.assert_array_equal(images, x_test)
    np.testing.assert_array_equal(labels, y_test)
    with np.load(out) as npz:
        assert npz["y_train"].dtype == np.int64
        assert tuple(npz["class_names"]) == names_lib.CIFAR10_CLASSES
    ds = data_lib.build_dataset(_npz_config(out, name="cifar10", eval_split="test"), seed=0)
    assert ds.num_classes == 10 and ds.split_sizes == {"train": 15, "test": 4}
    assert ds.class_names == list(names_lib.CIFAR10_CLASSES)

    # The folder holding cifar-10-batches-py, and the official archive, give the same file.
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    for source in (tmp_path / "dl", archive):
        other = tmp_path / f"from_{source.name}.npz"
        assert C.main([str(source), "--out", str(other)]) == 0
        with np.load(out) as a, np.load(other) as b:
            assert sorted(a.files) == sorted(b.files)
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key])


def test_cifar100_fine_and_coarse_labels(tmp_path):
    rng = np.random.default_rng(1)
    folder, expected = _fake_cifar100(tmp_path, rng)
    out = tmp_path / "cifar100.npz"
    summary = C.convert(str(folder), str(out))
    assert summary["kind"] == "cifar100-python" and summary["num_classes"] == 100
    with np.load(out) as npz:
        assert tuple(npz["class_names_coarse"]) == names_lib.CIFAR100_COARSE_CLASSES
        for split, (images, fine, coarse) in expected.items():
            np.testing.assert_array_equal(npz[f"x_{split}"], images)
            np.testing.assert_array_equal(npz[f"y_{split}"], fine)
            np.testing.assert_array_equal(npz[f"y_{split}_coarse"], coarse)
    fine_ds = data_lib.build_dataset(_npz_config(out, eval_split="test"), seed=0)
    assert fine_ds.num_classes == 100 and fine_ds.class_names[0] == "apple"
    coarse_ds = data_lib.build_dataset(
        _npz_config(out, eval_split="test", label_key="y_{split}_coarse"), seed=0
    )
    assert coarse_ds.num_classes == 20 and coarse_ds.class_names[0] == "aquatic_mammals"
    np.testing.assert_array_equal(coarse_ds.get_arrays("test")[1], expected["test"][2])


def test_cifar_pickle_with_code_is_refused_unrun(tmp_path):
    folder, *_ = _fake_cifar10(tmp_path, np.random.default_rng(2))
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    _dump(folder / "test_batch", {b"labels": [0], b"data": Evil()})
    with pytest.raises(C.ConvertError, match="not a CIFAR python pickle.*refusing to load"):
        C.convert(str(folder), str(tmp_path / "x.npz"))
    assert not marker.exists() and not (tmp_path / "x.npz").exists()


# --------------------------------------------------------------------------------------------------
# Folders of images
# --------------------------------------------------------------------------------------------------


def _blocky(rng, h, w, gray=False):
    """Coarse 8x8 blocks: JPEG keeps them within a few grey levels."""
    shape = (h // 8, w // 8) if gray else (h // 8, w // 8, 3)
    small = rng.integers(0, 4, shape).astype(np.uint8) * 80
    return np.kron(small, np.ones((8, 8) if gray else (8, 8, 1), np.uint8))


def _write(path, pixels, fmt):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))


def _decoded(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_folder_with_split_folders_keeps_the_files(tmp_path):
    rng = np.random.default_rng(3)
    root = tmp_path / "imgs"
    layout = {"train": {"cat": 3, "dog": 2, "emu": 2}, "val": {"cat": 1, "dog": 2, "emu": 1}}
    written = {}
    for split, classes in layout.items():
        for cls, n in classes.items():
            for i in range(n):
                fmt, ext = ("PNG", "png") if i % 2 else ("JPEG", "jpg")
                path = root / split / cls / ("sub" if i == 2 else "") / f"{i}.{ext}"
                _write(path, _blocky(rng, 16, 24, gray=(cls == "emu" and i == 0)), fmt)
                written.setdefault(split, []).append((path, cls))
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    out = tmp_path / "imgs.npz"
    summary = C.convert(str(root), str(out))
    assert summary["kind"] == "folder" and summary["encoding"] == "jpeg"
    assert summary["splits"] == {"train": 7, "validation": 4}  # val/ becomes 'validation'
    assert summary["image_shape"] == [16, 24, 3]
    with np.load(out) as npz:
        assert list(npz["class_names"]) == ["cat", "dog", "emu"]
        data, offsets = npz["train_jpeg_bytes"], npz["train_jpeg_offsets"]
        # The files' own bytes, in class order then path order.
        first = sorted(p for p, c in written["train"] if c == "cat")[0]
        assert data[offsets[0] : offsets[1]].tobytes() == first.read_bytes()
    ds = data_lib.build_dataset(_npz_config(out, eval_split="validation"), seed=0)
    assert ds.class_names == ["cat", "dog", "emu"] and ds.image_shape == (16, 24, 3)
    images, labels = ds.get_arrays("validation")
    assert labels.tolist() == [0, 1, 1, 2]
    expected = [
        _decoded(p)
        for c in ("cat", "dog", "emu")
        for p in sorted(q for q, k in written["val"] if k == c)
    ]
    np.testing.assert_array_equal(images, np.stack(expected))


def test_folder_of_classes_resized_to_pixels(tmp_path):
    rng = np.random.default_rng(4)
    root = tmp_path / "flowers"
    _write(root / "rose" / "a.png", _blocky(rng, 40, 64), "PNG")  # landscape
    _write(root / "rose" / "b.png", _blocky(rng, 48, 48), "PNG")
    _write(root / "tulip" / "c.png", _blocky(rng, 64, 32, gray=True), "PNG")  # portrait, grey
    with pytest.raises(C.ConvertError, match="mixes image sizes.*--image_size"):
        C.convert(str(root), str(tmp_path / "mixed.npz"))
    assert not (tmp_path / "mixed.npz").exists()
    out = tmp_path / "flowers.npz"
    summary = C.convert(str(root), str(out), image_size=16, split="all")
    assert summary["encoding"] == "pixels" and summary["splits"] == {"all": 3}
    with np.load(out) as npz:
        x = npz["x_all"]
        assert x.shape == (3, 16, 16, 3) and npz["y_all"].tolist() == [0, 0, 1]
        np.testing.assert_array_equal(x[2, ..., 0], x[2, ..., 1])  # grey joins RGB as 3 copies
    # b.png is square: its resize is plain bicubic 48 -> 16, no crop.
    with Image.open(root / "rose" / "b.png") as im:
        ref = np.asarray(im.convert("RGB").resize((16, 16), Image.Resampling.BICUBIC))
    np.testing.assert_array_equal(x[1], ref)


def test_tinyimagenet_layout_uses_the_official_label_order(tmp_path):
    rng = np.random.default_rng(5)
    root = tmp_path / "tiny-imagenet-200"
    wnids = [names_lib.TINYIMAGENET_WNIDS[i] for i in (7, 2)]
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    annotations = []
    for c, wnid in enumerate(wnids):
        for i in range(2):
            _write(
                root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", _blocky(rng, 64, 64), "JPEG"
            )
        name = f"val_{c}.JPEG"
        _write(root / "val" / "images" / name, _blocky(rng, 64, 64), "JPEG")
        annotations.append(f"{name}\t{wnid}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(reversed(annotations)) + "\n")
    out = tmp_path / "tin.npz"
    summary = C.convert(str(tmp_path), str(out))  # the folder holding tiny-imagenet-200 works too
    assert summary["splits"] == {"train": 4, "validation": 2} and summary["num_classes"] == 200
    ds = data_lib.build_dataset(
        _npz_config(out, name="tinyimagenet", eval_split="validation"), seed=0
    )
    assert ds.class_names == list(names_lib.TINYIMAGENET_CLASSES)
    assert ds.get_arrays("train")[1].tolist() == [7, 7, 2, 2]
    assert ds.get_arrays("validation")[1].tolist() == [2, 7]  # annotation-file order


# --------------------------------------------------------------------------------------------------
# TFDS
# --------------------------------------------------------------------------------------------------


@functools.cache
def _shapes_builder_class():
    """A tiny TFDS builder (registered once per process under ``convert_test_shapes``)."""
    import tensorflow_datasets as tfds

    class ConvertTestShapes(tfds.core.GeneratorBasedBuilder):
        """Six 8x8 images in three classes, with a coarse label set."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return self.dataset_info_from_configs(
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(8, 8, 3)),
                        "label": tfds.features.ClassLabel(names=["a", "b", "c"]),
                        "coarse_label": tfds.features.ClassLabel(names=["x", "y"]),
                        "id": tfds.features.Text(),
                    }
                ),
                supervised_keys=("image", "label"),
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(6), "test": self._generate_examples(3)}

        def _generate_examples(self, n):
            for i in range(n):
                image = np.full((8, 8, 3), 10 * i + n, np.uint8)
                image[0, 0] = (i, n, 255)
                yield f"{n}_{i}", {"image": image, "label": i % 3, "coarse_label": i % 2, "id": ""}

    return ConvertTestShapes


def _tiny_tfds(tmp_path, file_format):
    pytest.importorskip("tensorflow_datasets")
    builder = _shapes_builder_class()(data_dir=str(tmp_path / "tfds"), file_format=file_format)
    builder.download_and_prepare()
    return builder


@pytest.mark.parametrize("file_format", ["array_record", "tfrecord"])
def test_tfds_dataset_by_directory_and_by_name(tmp_path, file_format):
    builder = _tiny_tfds(tmp_path, file_format)
    out = tmp_path / "shapes.npz"
    summary = C.convert(str(builder.data_dir), str(out))  # the version folder: no class needed
    assert summary["kind"] == "tfds" and summary["splits"] == {"train": 6, "test": 3}
    with np.load(out) as npz:
        assert list(npz["class_names"]) == ["a", "b", "c"]
        assert list(npz["class_names_coarse"]) == ["x", "y"]
        for split, n in (("train", 6), ("test", 3)):
            x = npz[f"x_{split}"]
            index = x[:, 0, 0, 0].astype(np.int64)  # pixel (0, 0) holds the example's number
            assert x.shape == (n, 8, 8, 3) and sorted(index.tolist()) == list(range(n))
            np.testing.assert_array_equal(x[:, 1, 1, 0], 10 * index + n)
            np.testing.assert_array_equal(npz[f"y_{split}"], index % 3)
            np.testing.assert_array_equal(npz[f"y_{split}_coarse"], index % 2)
    by_name = tmp_path / "by_name.npz"
    C.convert(
        builder.name, str(by_name), kind="tfds", data_dir=str(tmp_path / "tfds"), encoding="jpeg"
    )
    ds = data_lib.build_dataset(_npz_config(by_name, eval_split="test"), seed=0)
    with np.load(out) as npz:  # the stored PNGs decode to the same pixels
        np.testing.assert_array_equal(ds.get_arrays("test")[0], npz["x_test"])


def test_tfds_not_prepared_is_one_line(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(C.ConvertError) as info:
        C.convert("cifar10", str(tmp_path / "c.npz"), kind="tfds", data_dir=str(tmp_path))
    msg = str(info.value)
    assert "\n" not in msg and "not prepared" in msg and "tfds build cifar10" in msg


# --------------------------------------------------------------------------------------------------
# Output handling and the command line
# --------------------------------------------------------------------------------------------------


def test_existing_output_is_kept_unless_overwrite(tmp_path, capsys):
    folder, *_ = _fake_cifar10(tmp_path, np.random.default_rng(6))
    out = tmp_path / "c10.npz"
    out.write_bytes(b"precious")
    assert C.main([str(folder), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "already exists" in err and "--overwrite" in err
    assert out.read_bytes() == b"precious"
    assert C.main([str(folder), "--out", str(out), "--overwrite"]) == 0
    assert data_lib.load_npz_split(str(out), "test", cache_dir="")[0].shape == (4, 32, 32, 3)
    assert sorted(os.listdir(tmp_path)) == ["c10.npz", "cifar-10-batches-py"]  # no temp file


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    folder, *_ = _fake_cifar10(tmp_path, np.random.default_rng(7))
    out_dir = tmp_path / "out"

    def broken_savez(f, **members):
        f.write(b"PK partial")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        C.convert(str(folder), str(out_dir / "c10.npz"))
    assert os.listdir(out_dir) == []  # neither the output nor the temporary file


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["{tmp}/missing", "--out", "{tmp}/o.npz"], "does not exist"),
        (["{tmp}", "--out", "{tmp}/o.txt"], "must end in .npz"),
        (["{tmp}", "--out", "{tmp}/o.npz", "--from", "cifar10-python"], "missing data_batch_1"),
        (["{tmp}/empty", "--out", "{tmp}/o.npz"], "no class folders with images"),
        (["{tmp}/loose", "--out", "{tmp}/o.npz"], "not in class folders"),
        (["{tmp}/broken", "--out", "{tmp}/o.npz", "--encoding", "pixels"], "not a readable image"),
        (["{tmp}/loose", "--out", "{tmp}/o.npz", "--image_size", "0"], "--image_size 0"),
    ],
)
def test_bad_input_is_one_line(tmp_path, capsys, args, fragment):
    (tmp_path / "empty").mkdir()
    _write(tmp_path / "loose" / "a.png", np.zeros((8, 8, 3), np.uint8), "PNG")
    (tmp_path / "broken" / "cls").mkdir(parents=True)
    (tmp_path / "broken" / "cls" / "x.jpg").write_bytes(b"not a jpeg")
    argv = [a.format(tmp=tmp_path) for a in args]
    assert C.main(argv) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("error: ") and "\n" not in err and fragment in err, err
    assert not (tmp_path / "o.npz").exists()


def test_module_runs_as_a_command(tmp_path):
    folder, *_ = _fake_cifar10(tmp_path, np.random.default_rng(8))
    out = tmp_path / "cifar10.npz"
    cmd = [sys.executable, "-m", "nm_hebb_jax.data.convert", str(folder), "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"wrote {out}") and out.exists()
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and again.stderr.strip().count("\n") == 0
