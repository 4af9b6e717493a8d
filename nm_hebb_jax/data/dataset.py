"""In-memory image dataset with a stateless, resumable, multi-host training stream.

Split names of a :class:`Dataset`: ``'train'`` is the training portion (the source's training
split minus the carved validation examples), ``'val'`` the carved validation split (when
``val_size > 0``), and every other split of the source under its own name (``'test'``, ...; when
the training split is not the source's ``'train'``, the source's ``'train'`` is not exposed).

Training stream. Epoch ``e`` visits the training portion in the order of a permutation seeded by
``(seed, e)``; the global batch of step ``s`` is the positions ``[s * B, (s + 1) * B)`` of the
concatenated permutations (an epoch boundary inside a batch simply wraps into the next epoch);
with ``drop_remainder`` epoch ``e`` is instead the ``floor(N / B)`` full batches of its own
permutation. Either way a batch is a pure function of ``(seed, step)``: resuming at any step needs
no iterator state.
Process ``p`` of ``P`` gets rows ``[p * B / P, (p + 1) * B / P)`` of the global batch, and every
row's augmentation is drawn from ``(seed, step, global row)``, so the per-process slices
concatenate to the single-process batch exactly.

Class-balanced batches (phase 2): see :meth:`Dataset.train_batch`.

Why one module of this size: the carve, the epoch permutations, the process slices, the P×K
sampler and the padded evaluation batches all index the same arrays with the same seeds, and the
guarantees above (a batch is a function of the seed and step, processes concatenate to the
single-process batch) hold only if they stay together.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence

import numpy as np

from nm_hebb_jax.data import augment as aug_lib
from nm_hebb_jax.data.errors import DataError

Arrays = tuple[np.ndarray, np.ndarray]
Batch = dict[str, np.ndarray]

# SeedSequence tags keeping the different random streams of one seed independent.
_TAG_PERMUTATION = 0x7E12
_TAG_BALANCED = 0xBA1A
_TAG_VAL = 0x0C11
_TAG_SUBSET = 0x5B5E

# Largest number of classes a dataset may declare or imply (a label such as 10**12 would otherwise
# make the per-class tables, the class names and the classifier unboundedly large).
MAX_NUM_CLASSES = 1_000_000


@dataclasses.dataclass(frozen=True)
class LazySplit:
    """A split whose arrays are loaded on first use.

    Attributes:
      num_examples: N, known without loading.
      load: zero-argument function returning ``(images uint8 [N, H, W, 3], labels int [N])``.
    """

    num_examples: int
    load: Callable[[], Arrays]


class _SplitView:
    """Rows ``index`` (all rows if ``None``) of an images/labels pair, loaded lazily if needed."""

    def __init__(
        self,
        source: Arrays | LazySplit,
        index: np.ndarray | None = None,
        *,
        what: str = "split",
        image_shape: tuple[int, ...] | None = None,
    ):
        self._source = source
        self.index = index
        self._what = what
        self._image_shape = image_shape
        self._arrays: Arrays | None = None
        if not isinstance(source, LazySplit):
            self._arrays = self._validate(*source)

    def __len__(self) -> int:
        if self.index is not None:
            return int(self.index.shape[0])
        if self._arrays is None:
            return int(self._source.num_examples)
        return int(self._arrays[1].shape[0])

    def arrays(self) -> Arrays:
        if self._arrays is None:
            self._arrays = self._validate(*self._source.load())
        return self._arrays

    def _validate(self, images: np.ndarray, labels: np.ndarray) -> Arrays:
        images, labels = _check_arrays(images, labels, self._what)
        if self._image_shape is not None and images.shape[1:] != self._image_shape:
            raise DataError(
                f"{self._what} has images of shape {images.shape[1:]}, the training split "
                f"{self._image_shape}: use one image size"
            )
        return images, labels

    def labels(self) -> np.ndarray:
        labels = self.arrays()[1]
        return labels if self.index is None else labels[self.index]

    def gather(self, rows: np.ndarray) -> Arrays:
        """Images uint8 [R, H, W, 3] and labels int32 [R] of view rows ``rows``."""
        images, labels = self.arrays()
        src = rows if self.index is None else self.index[rows]
        return images[src], labels[src].astype(np.int32)

    def materialize(self) -> Arrays:
        images, labels = self.arrays()
        if self.index is None:
            return images, labels.astype(np.int32)
        return images[self.index], labels[self.index].astype(np.int32)


def _check_arrays(images: np.ndarray, labels: np.ndarray, what: str) -> Arrays:
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise DataError(
            f"{what} images have dtype {images.dtype} and shape {images.shape}, expected uint8 "
            "[N, H, W, 3]: convert them before building the Dataset"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{what} has {images.shape[0]} images but labels of shape {labels.shape}: "
            "pass int labels [N]"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise DataError(
            f"{what} labels have dtype {labels.dtype}, expected int: pass integer class ids"
        )
    if images.shape[0] == 0:
        raise DataError(f"{what} is empty (0 images): provide at least one image")
    return images, labels


def stratified_split(
    labels: np.ndarray, val_size: int, *, seed: int, tag: int = _TAG_VAL
) -> tuple[np.ndarray, np.ndarray]:
    """Carves a stratified validation subset.

    Class ``c`` with ``n_c`` of the ``N`` examples gives ``floor(val_size * n_c / N)`` or one more
    (largest remainders, ties broken by the seed), so every class's validation count is within 1
    of proportional and the total is exactly ``val_size``; which examples is drawn from ``seed``.

    Args:
      labels: int [N].
      val_size: number of validation examples, ``0 <= val_size < N``.
      seed: the validation seed.
      tag: stream tag mixed into the seed (another carve from the same seed is independent).

    Returns:
      ``(train_index, val_index)``: disjoint sorted int64 arrays covering ``range(N)``.

    Raises:
      DataError: ``val_size`` out of range.
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    if not 0 <= val_size < n:
        raise DataError(
            f"data.val_size={val_size} must be in [0, {n}) for a training split of {n} examples: "
            "lower it"
        )
    if val_size == 0:
        return np.arange(n, dtype=np.int64), np.zeros((0,), dtype=np.int64)
    rng = np.random.default_rng([seed % 2**63, tag])
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quota = val_size * counts / n
    take = np.floor(quota).astype(np.int64)
    remainder = int(val_size - take.sum())
    tiebreak = rng.permutation(classes.shape[0])
    order = np.lexsort((tiebreak, -(quota - take)))
    take[order[:remainder]] += 1
    val_parts = []
    for c in range(classes.shape[0]):
        members = np.flatnonzero(inverse == c)
        val_parts.append(rng.permutation(members)[: take[c]])
    val_index = np.sort(np.concatenate(val_parts)).astype(np.int64)
    mask = np.ones(n, dtype=bool)
    mask[val_index] = False
    return np.flatnonzero(mask).astype(np.int64), val_index


class Dataset:
    """An in-memory image classification dataset (host-side numpy).

    Attributes:
      name: dataset name (selects augmentation and published statistics).
      num_classes: C.
      image_shape: (H, W, 3).
      class_names: list of C names.
      train_size: number of examples in the training portion.
      split_sizes: dict split name -> number of examples.
      eval_split: the split the config evaluates on (``data.eval_split``).
      mean: float32 [3], per-channel mean in [0, 1] units.
      std: float32 [3], per-channel standard deviation in [0, 1] units.
      stats_source: ``'published'`` (standard CIFAR-10/100 training-set statistics) or
        ``'computed'`` (exact statistics of the training portion).
      augmentation: the :class:`~nm_hebb_jax.data.augment.Augmentation` applied by
        :meth:`train_batch`, or ``None`` when augmentation is off.
      seed: the seed of the training stream.
      process_index: this process (p).
      process_count: number of processes (P).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        seed: int,
        name: str = "custom",
        class_names: Sequence[str] | None = None,
        num_classes: int = 0,
        val_size: int = 0,
        val_seed: int = 0,
        train_subset: int = 0,
        drop_remainder: bool = False,
        extra_splits: Mapping[str, Arrays | LazySplit] | None = None,
        eval_split: str = "val",
        augment: bool = True,
        norm_stats: str = "auto",
        process_index: int = 0,
        process_count: int = 1,
    ):
        """Builds a dataset from the arrays of its training split.

        Args:
          images: uint8 [N, H, W, 3], the source's training split (the dataset keeps a reference;
            do not modify it afterwards).
          labels: int [N] in ``[0, C)``.
          seed: seed of the training stream (permutations, augmentation, balanced sampling).
          name: ``'cifar10'``, ``'cifar100'``, ``'tinyimagenet'``, ``'digits'`` or any other name
            (generic augmentation, computed statistics).
          class_names: C names (default: ``'0'``, ``'1'``, ...).
          num_classes: C; 0 = ``len(class_names)`` if given, else ``max(label) + 1``.
          val_size: examples carved from the training split for ``'val'`` (stratified by
            ``val_seed``); 0 = none.
          val_seed: seed of the validation carve (independent of ``seed``).
          train_subset: if > 0, the training portion is a stratified subset of this many of the
            examples left after the validation carve (drawn from ``val_seed``, independently of
            the carve); 0 = all of them.
          drop_remainder: each epoch of the training stream is ``floor(N / B)`` full batches of
            its permutation (the last ``N mod B`` examples of the permutation are skipped, as
            PyTorch's ``drop_last=True``); False: epochs wrap into each other (no example skipped).
          extra_splits: other splits by name, as arrays or :class:`LazySplit`.
          eval_split: the split evaluated by the trainer; must exist.
          augment: master switch for augmentation in :meth:`train_batch`.
          norm_stats: ``'auto'`` (published statistics for cifar10/cifar100, computed otherwise),
            ``'computed'`` or ``'published'``.
          process_index: this process's index p.
          process_count: number of processes P.

        Raises:
          DataError: inconsistent arrays or settings (one-line message).
        """
        images, labels = _check_arrays(images, labels, f"{name} training split")
        extra_splits = dict(extra_splits or {})
        if not 0 <= process_index < process_count:
            raise DataError(
                f"process_index={process_index} must be in [0, process_count={process_count})"
            )
        if val_size > 0 and "val" in extra_splits:
            raise DataError(
                f"data.val_size={val_size} carves a split named 'val' but {name} already has one: "
                "set data.val_size=0 to use the source's 'val' split"
            )
        if "train" in extra_splits:
            raise DataError("'train' names the training portion; rename the extra split")
        labels = np.asarray(labels)
        if class_names is not None:
            class_names = [str(c) for c in class_names]
        lo, hi = int(labels.min()), int(labels.max())
        if num_classes <= 0:
            num_classes = len(class_names) if class_names else hi + 1
        if num_classes > MAX_NUM_CLASSES:
            raise DataError(
                f"{name} has {num_classes} classes (labels up to {hi}), more than "
                f"{MAX_NUM_CLASSES}: fix the labels or data.num_classes"
            )
        if lo < 0 or hi >= num_classes:
            raise DataError(
                f"{name} training labels span [{lo}, {hi}], outside "
                f"[0, {num_classes}): fix the labels or data.num_classes"
            )
        if not class_names or len(class_names) != num_classes:
            class_names = [str(i) for i in range(num_classes)]

        self.name = name
        self.num_classes = int(num_classes)
        self.class_names = list(class_names)
        self.image_shape = tuple(int(s) for s in images.shape[1:])
        self.seed = int(seed)
        self.process_index = int(process_index)
        self.process_count = int(process_count)
        self.eval_split = eval_split

        train_index, val_index = stratified_split(labels, int(val_size), seed=int(val_seed))
        train_subset = int(train_subset)
        if train_subset < 0 or train_subset > train_index.shape[0]:
            raise DataError(
                f"data.train_subset={train_subset} must be in [0, {train_index.shape[0]}] (the "
                f"examples of {name} left after the validation carve; 0 = all): lower it"
            )
        if 0 < train_subset < train_index.shape[0]:
            _, keep = stratified_split(
                labels[train_index], train_subset, seed=int(val_seed), tag=_TAG_SUBSET
            )
            train_index = train_index[keep]
        self.drop_remainder = bool(drop_remainder)
        source = (images, labels)
        self._splits: dict[str, _SplitView] = {"train": _SplitView(source, train_index)}
        if val_size > 0:
            self._splits["val"] = _SplitView(source, val_index)
        for split, arrays in extra_splits.items():
            self._splits[split] = _SplitView(
                arrays, what=f"{name} split {split!r}", image_shape=tuple(images.shape[1:])
            )
        if eval_split not in self._splits:
            hint = (
                "set data.val_size > 0 to carve one"
                if eval_split == "val"
                else f"choose one of {sorted(self._splits)}"
            )
            raise DataError(f"data.eval_split={eval_split!r} does not exist in {name}: {hint}")
        self.split_sizes = {split: len(view) for split, view in self._splits.items()}
        self.train_size = self.split_sizes["train"]

        self._train_labels = labels[train_index].astype(np.int32)
        # Rows of each class present in the training portion (ascending), in O(N) whatever C.
        order = np.argsort(self._train_labels, kind="stable")
        present, starts = np.unique(self._train_labels[order], return_index=True)
        self._class_rows = dict(zip(present.tolist(), np.split(order, starts[1:]), strict=True))
        self._present = present.astype(np.int64)
        self._perms: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()

        if norm_stats not in ("auto", "computed", "published"):
            raise DataError(
                f"data.norm_stats={norm_stats!r} must be 'auto', 'computed' or 'published'"
            )
        if norm_stats == "published" and name not in aug_lib.PUBLISHED_STATS:
            raise DataError(
                f"data.norm_stats='published' has no statistics for {name!r} (only "
                f"{', '.join(aug_lib.PUBLISHED_STATS)}): use 'auto' or 'computed'"
            )
        if norm_stats != "computed" and name in aug_lib.PUBLISHED_STATS:
            mean, std = aug_lib.PUBLISHED_STATS[name]
            self.mean = np.asarray(mean, dtype=np.float32)
            self.std = np.asarray(std, dtype=np.float32)
            self.stats_source = "published"
        else:
            self.mean, self.std = aug_lib.channel_stats(images, train_index)
            self.std = np.maximum(self.std, np.float32(1e-3))
            self.stats_source = "computed"
        self._scale = (1.0 / (255.0 * self.std)).astype(np.float32)
        self._offset = (-self.mean / self.std).astype(np.float32)
        self.augmentation = aug_lib.augmentation_for(name, self.image_shape) if augment else None

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, num_classes={self.num_classes}, image_shape="
            f"{self.image_shape}, split_sizes={self.split_sizes}, eval_split={self.eval_split!r}, "
            f"augmentation={self.augmentation}, stats={self.stats_source}, "
            f"process={self.process_index}/{self.process_count})"
        )

    # ----------------------------------------------------------------------------------- helpers

    @property
    def train_classes(self) -> np.ndarray:
        """The class ids with at least one example in the training portion (ascending)."""
        return self._present

    def normalize(self, images: np.ndarray) -> np.ndarray:
        """Per-channel normalisation ``(x / 255 - mean) / std``.

        Args:
          images: uint8 [..., H, W, 3].

        Returns:
          float32 array of the same shape.
        """
        return images.astype(np.float32) * self._scale + self._offset

    def _local_rows(self, batch_size: int) -> tuple[int, int]:
        """(rows per process, first global row of this process) for a global batch size."""
        batch_size = int(batch_size)
        if batch_size <= 0 or batch_size % self.process_count:
            raise DataError(
                f"batch_size={batch_size} (global) must be a positive multiple of "
                f"process_count={self.process_count}"
            )
        local = batch_size // self.process_count
        return local, self.process_index * local

    def _split(self, split: str) -> _SplitView:
        if split not in self._splits:
            raise DataError(
                f"unknown split {split!r} of {self.name}: choose one of {sorted(self._splits)}"
            )
        return self._splits[split]

    def _permutation(self, epoch: int) -> np.ndarray:
        perm = self._perms.get(epoch)
        if perm is None:
            rng = np.random.default_rng([self.seed % 2**63, _TAG_PERMUTATION, epoch])
            perm = rng.permutation(self.train_size)
            self._perms[epoch] = perm
            while len(self._perms) > 3:
                self._perms.popitem(last=False)
        return perm

    def stream_indices(self, step: int, *, batch_size: int) -> np.ndarray:
        """Training-portion rows of the global batch at ``step`` (no augmentation, all processes).

        Args:
          step: training step >= 0.
          batch_size: global batch size B.

        Returns:
          int64 [B] indices into ``get_arrays('train')``.
        """
        step = _check_step(step)
        b = int(batch_size)
        if self.drop_remainder:
            per_epoch = self.steps_per_epoch(b)
            if per_epoch == 0:
                raise DataError(
                    f"batch_size={b} is larger than the {self.train_size} training examples, "
                    "so drop_remainder leaves no batch: lower batch_size"
                )
            epoch, index = divmod(step, per_epoch)
            return self._permutation(epoch)[index * b : (index + 1) * b].astype(np.int64)
        positions = step * b + np.arange(b, dtype=np.int64)
        epochs = positions // self.train_size
        within = positions % self.train_size
        out = np.empty_like(positions)
        for epoch in np.unique(epochs):
            sel = epochs == epoch
            out[sel] = self._permutation(int(epoch))[within[sel]]
        return out

    def balanced_indices(
        self, step: int, *, batch_size: int, k_per_class: int = 4
    ) -> tuple[np.ndarray, np.ndarray]:
        """Rows and labels of the global class-balanced (P x K) batch at ``step``.

        Layout: ``P`` groups of ``K`` consecutive rows, one class per group (classes drawn without
        replacement, in random order), then the ``B - P * K`` leftover rows (if any): one extra
        example each of the first classes of the batch (cycling), so no new classes appear. See
        :meth:`train_batch` for P and K.

        Args:
          step: training step >= 0.
          batch_size: global batch size B.
          k_per_class: requested K.

        Returns:
          ``(rows, labels)``: int64 [B] indices into ``get_arrays('train')`` and int32 [B] labels.
        """
        step = _check_step(step)
        b, k = int(batch_size), int(k_per_class)
        if not 1 <= k <= b:
            raise DataError(
                f"k_per_class={k} must be in [1, batch_size={b}]: set phase2.k_per_class"
            )
        present = self._present
        if present.size * k >= b:
            p = b // k
        else:
            p = present.size
            k = b // p
        extra = b - p * k
        rng = np.random.default_rng([self.seed % 2**63, _TAG_BALANCED, step])
        classes = rng.choice(present, size=p, replace=False)
        counts = np.full(p, k, dtype=np.int64)
        np.add.at(counts, np.arange(extra) % p, 1)
        picks = []
        for c, m in zip(classes, counts, strict=True):
            pool = self._class_rows[c]
            picks.append(pool[rng.choice(pool.size, size=m, replace=pool.size < m)])
        main = np.concatenate([pk[:k] for pk in picks])
        main_labels = np.repeat(classes, k)
        extra_rows = [picks[i % p][k + i // p] for i in range(extra)]
        extra_labels = [classes[i % p] for i in range(extra)]
        rows = np.concatenate([main, np.asarray(extra_rows, dtype=np.int64)])
        labels = np.concatenate([main_labels, np.asarray(extra_labels, dtype=np.int64)])
        return rows.astype(np.int64), labels.astype(np.int32)

    # ----------------------------------------------------------------------------------- public

    def train_batch(
        self,
        step: int,
        *,
        batch_size: int,
        augment: bool = True,
        balanced: bool = False,
        k_per_class: int = 4,
    ) -> Batch:
        """This process's slice of the global training batch at ``step``.

        A pure function of ``(seed, step)`` and the arguments. Plain batches walk seeded per-epoch
        permutations (see the module docstring). Balanced batches (phase 2) hold ``K =
        k_per_class`` images of each of ``P = min(C, B // K)`` classes (classes with at least one
        training example count for C); with few classes (``C * K < B``) ``K = B // C``. The
        ``B - P * K`` leftover rows are filled with one extra example of each of the first classes
        of the batch (so a class has K or K + 1 images); a class with fewer than the needed
        examples is sampled with replacement. Each class occupies consecutive rows, so every
        process's slice holds complete classes whenever ``B / process_count`` is a multiple of K
        and there are no leftover rows (e.g. B = 128, K = 4, P <= 32 processes). Balanced batches
        are drawn independently per step (no epochs).

        Augmentation (when ``augment`` and the dataset's ``augmentation`` is set) is drawn per
        global row from ``(seed, step, row)``; normalisation always applies.

        Args:
          step: training step >= 0.
          batch_size: GLOBAL batch size B, a multiple of ``process_count``.
          augment: apply the dataset's augmentation.
          balanced: draw a class-balanced P x K batch instead of the epoch stream.
          k_per_class: K for balanced batches.

        Returns:
          ``{'image': float32 [B / P, H, W, 3] normalised, 'label': int32 [B / P]}``.
        """
        local, lo = self._local_rows(batch_size)
        if balanced:
            rows, labels = self.balanced_indices(
                step, batch_size=batch_size, k_per_class=k_per_class
            )
            stream = aug_lib.STREAM_BALANCED_AUG
        else:
            rows = self.stream_indices(step, batch_size=batch_size)
            labels = self._train_labels[rows]
            stream = aug_lib.STREAM_TRAIN_AUG
        rows, labels = rows[lo : lo + local], labels[lo : lo + local]
        images, _ = self._splits["train"].gather(rows)
        if augment and self.augmentation is not None:
            keys = aug_lib.row_keys(self.seed, stream, int(step), np.arange(lo, lo + local))
            images = self.augmentation(images, keys)
        return {"image": self.normalize(images), "label": labels.astype(np.int32)}

    def num_batches(self, split: str, batch_size: int) -> int:
        """Number of (global) evaluation batches covering ``split``: ``ceil(N / batch_size)``."""
        return math.ceil(len(self._split(split)) / int(batch_size))

    def eval_batches(self, split: str, *, batch_size: int) -> Iterator[Batch]:
        """Every example of ``split`` exactly once, in order, without augmentation.

        The last global batch is padded to ``batch_size`` with zero images, label 0 and
        ``mask=False``. Each process gets its rows ``[p * B / P, (p + 1) * B / P)`` of every
        global batch (a process may get a fully masked batch).

        Args:
          split: a split name (``'train'``, ``'val'``, ``'test'``, ...).
          batch_size: GLOBAL batch size B, a multiple of ``process_count``.

        Yields:
          ``{'image': float32 [B / P, H, W, 3], 'label': int32 [B / P], 'mask': bool [B / P]}``.
        """
        view = self._split(split)
        local, lo = self._local_rows(batch_size)
        n = len(view)
        for i in range(self.num_batches(split, batch_size)):
            rows = i * int(batch_size) + lo + np.arange(local)
            mask = rows < n
            image = np.zeros((local, *self.image_shape), dtype=np.float32)
            label = np.zeros((local,), dtype=np.int32)
            if mask.any():
                imgs, labs = view.gather(rows[mask])
                image[mask] = self.normalize(imgs)
                label[mask] = labs
            yield {"image": image, "label": label, "mask": mask}

    def source_rows(self, split: str) -> np.ndarray:
        """Rows of the source's training split that form ``'train'`` or ``'val'``.

        What is left out of both (with ``train_subset``) is data nobody trained or tuned on: a
        held-out test set can be cut from it (``experiments/reproduce``).

        Args:
          split: ``'train'`` or ``'val'``.

        Returns:
          Sorted int64 indices into the source's training split.
        """
        if split not in ("train", "val"):
            raise DataError(f"source_rows: split must be 'train' or 'val', got {split!r}")
        return np.sort(np.asarray(self._split(split).index, dtype=np.int64))

    def get_arrays(self, split: str) -> Arrays:
        """All examples of a split, unnormalised.

        Args:
          split: ``'train'`` (the training portion), ``'val'`` or another split name.

        Returns:
          ``(images, labels)``: uint8 [N, H, W, 3] and int32 [N]. Treat them as read-only (whole
          splits may share memory with the dataset's caches).
        """
        return self._split(split).materialize()

    def steps_per_epoch(self, batch_size: int) -> int:
        """Steps per pass over the training portion: ``ceil(train_size / batch_size)``, or
        ``floor(...)`` with ``drop_remainder``.

        Without ``drop_remainder`` the stream wraps across epochs, so ``n * steps_per_epoch``
        steps see every example at least ``n`` times; with it, each epoch sees
        ``steps_per_epoch * batch_size`` distinct examples of its permutation.
        """
        if self.drop_remainder:
            return self.train_size // int(batch_size)
        return math.ceil(self.train_size / int(batch_size))


def _check_step(step: int) -> int:
    step = int(step)
    if step < 0:
        raise DataError(f"step={step} must be >= 0")
    return step
