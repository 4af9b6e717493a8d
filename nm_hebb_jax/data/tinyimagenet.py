"""TFDS builder for TinyImageNet-200 (not in the TFDS catalogue), read from a manual download.

The standard layout (``tiny-imagenet-200.zip`` from http://cs231n.stanford.edu/, extracted)::

    tiny-imagenet-200/
      wnids.txt                      200 WordNet ids, one per line
      words.txt                      WordNet id -> names (not needed: names are in class_names.py)
      train/<wnid>/images/*.JPEG     500 images per class, 64x64
      val/images/*.JPEG              10,000 images
      val/val_annotations.txt        <file>\\t<wnid>\\t<x0>\\t<y0>\\t<x1>\\t<y1> per line

The manual directory may be that folder itself, contain it, or contain the zip. The test split has
no labels and is not built. Splits: ``train`` (100,000) and ``validation`` (10,000). Labels follow
the official ``wnids.txt`` order (``class_names.TINYIMAGENET_WNIDS``), the same as the project's
``tinyimagenet_train.npz``; a folder listing a subset of the ids (e.g. a test fixture) keeps those
label numbers. Images are stored as the original JPEG bytes; the few grayscale JPEGs decode to 3
identical channels (TFDS decodes with ``channels=3``).

Prepare once::

    python -m nm_hebb_jax.data.tinyimagenet --manual_dir=DIR --data_dir=~/tensorflow_datasets

or ``tfds build tiny_imagenet200 --imports=nm_hebb_jax.data.tinyimagenet --manual_dir=DIR``.
Without TFDS, ``python -m nm_hebb_jax.data.convert DIR --out tinyimagenet.npz`` reads the same
folder (through :func:`iter_split_files`) into the project's npz format (docs/data.md).
"""

from __future__ import annotations

import argparse

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from nm_hebb_jax.data.class_names import TINYIMAGENET_WNIDS
from nm_hebb_jax.errors import MissingFileError

IMAGE_SHAPE = (64, 64, 3)
_FOLDER = "tiny-imagenet-200"
_WNID_INDEX = {w: i for i, w in enumerate(TINYIMAGENET_WNIDS)}


def find_root(manual_dir: epath.PathLike, dl_manager=None) -> epath.Path:
    """Locates the extracted ``tiny-imagenet-200`` folder inside a manual directory.

    Args:
      manual_dir: the folder itself, a folder containing it, or one containing the zip.
      dl_manager: TFDS download manager, used to extract the zip if that is all there is.

    Returns:
      The folder holding ``wnids.txt``, ``train/`` and ``val/``.

    Raises:
      MissingFileError: nothing recognisable in ``manual_dir`` (a FileNotFoundError; one line).
    """
    manual_dir = epath.Path(manual_dir)
    for candidate in (manual_dir, manual_dir / _FOLDER):
        if (candidate / "wnids.txt").exists():
            return candidate
    archive = manual_dir / f"{_FOLDER}.zip"
    if archive.exists() and dl_manager is not None:
        extracted = epath.Path(dl_manager.extract(archive))
        for candidate in (extracted, extracted / _FOLDER):
            if (candidate / "wnids.txt").exists():
                return candidate
    raise MissingFileError(
        f"no TinyImageNet-200 in manual_dir {manual_dir} (expected wnids.txt, {_FOLDER}/ or "
        f"{_FOLDER}.zip): download http://cs231n.stanford.edu/{_FOLDER}.zip and put it there"
    )


def read_wnids(root: epath.Path) -> list[str]:
    """The WordNet ids listed in ``root/wnids.txt``, checked against the official 200."""
    wnids = [w.strip() for w in (root / "wnids.txt").read_text().splitlines() if w.strip()]
    unknown = [w for w in wnids if w not in _WNID_INDEX]
    if unknown:
        raise ValueError(
            f"{root}/wnids.txt lists ids outside TinyImageNet-200 ({', '.join(unknown[:5])}): "
            "use the official tiny-imagenet-200 folder"
        )
    return wnids


def iter_split_files(root: epath.Path, split: str, wnids: list[str]):
    """The labelled image files of a split of the folder layout, in a fixed order.

    Used by the TFDS builder and by ``python -m nm_hebb_jax.data.convert`` (npz output).

    Args:
      root: the folder holding ``wnids.txt`` (:func:`find_root`).
      split: ``'train'`` (``train/<wnid>/images/*.JPEG``, by wnid then file name) or
        ``'validation'`` (``val/images``, in the order of ``val/val_annotations.txt``).
      wnids: the ids to keep (:func:`read_wnids`).

    Yields:
      ``(file_name, path, wnid)``.
    """
    root = epath.Path(root)
    if split == "train":
        for wnid in wnids:
            for path in sorted((root / "train" / wnid / "images").iterdir()):
                if path.suffix.lower() in (".jpeg", ".jpg"):
                    yield path.name, path, wnid
        return
    if split != "validation":
        raise ValueError(f"split {split!r} of TinyImageNet-200: use 'train' or 'validation'")
    allowed = set(wnids)
    for line in (root / "val" / "val_annotations.txt").read_text().splitlines():
        fields = line.split("\t")
        if len(fields) >= 2 and fields[1] in allowed:
            yield fields[0], root / "val" / "images" / fields[0], fields[1]


def _image_value(path: epath.Path):
    """The original file when TFDS can store it as is, else an RGB uint8 array [64, 64, 3]."""
    with path.open("rb") as f, Image.open(f) as im:
        if im.size != IMAGE_SHAPE[:2]:
            raise ValueError(f"{path} is {im.size[0]}x{im.size[1]}, expected 64x64")
        if im.format == "JPEG" and im.mode in ("RGB", "L"):
            return path
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


class TinyImagenet200(tfds.core.GeneratorBasedBuilder):
    """TinyImageNet-200: 64x64 RGB images of 200 ImageNet classes."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Train and validation splits from the official folder layout."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
    Download http://cs231n.stanford.edu/{_FOLDER}.zip and place the zip, or the extracted
    `{_FOLDER}/` folder (wnids.txt, train/, val/), in the manual_dir.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description="TinyImageNet-200 (Stanford CS231n), 64x64, 200 classes.",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=IMAGE_SHAPE, encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(names=list(TINYIMAGENET_WNIDS)),
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="http://cs231n.stanford.edu/",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        root = find_root(dl_manager.manual_dir, dl_manager)
        wnids = read_wnids(root)
        return {
            "train": self._generate_examples(root=root, split="train", wnids=wnids),
            "validation": self._generate_examples(root=root, split="validation", wnids=wnids),
        }

    def _generate_examples(self, root: epath.Path, split: str, wnids: list[str]):
        for name, path, wnid in iter_split_files(root, split, wnids):
            yield name, {"image": _image_value(path), "label": wnid, "file_name": name}


def main(argv: list[str] | None = None) -> None:
    """Prepares the dataset: ``--manual_dir`` (required) and ``--data_dir`` (TFDS default)."""
    parser = argparse.ArgumentParser(description="Prepare TinyImageNet-200 for TFDS.")
    parser.add_argument("--manual_dir", required=True, help="folder with tiny-imagenet-200")
    parser.add_argument("--data_dir", default=None, help="TFDS data_dir (default TFDS)")
    args = parser.parse_args(argv)
    builder = TinyImagenet200(data_dir=args.data_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=args.manual_dir)
    )
    print(f"prepared {builder.name} in {builder.data_dir}: {builder.info.splits}")


if __name__ == "__main__":
    main()
