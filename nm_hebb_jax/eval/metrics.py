"""Representation metrics on the host: Top-1, kNN Top-1 and k-means NMI.

Everything here runs on numpy arrays after the forward passes are done (inputs may be jax arrays;
they are converted with ``np.asarray``). These are the metrics of docs/method.md, section "Metrics":

* Top-1 of the classifier head on the evaluated split, exact over the unmasked (non-padding) rows.
* kNN Top-1 (k = 20, cosine similarity) of the evaluated split against a memory bank of
  training-split embeddings (up to 10,000, seeded: :func:`sample_memory_bank`).
* NMI: k-means (k = number of classes, several restarts, fixed seed) on the L2-normalised
  embeddings, then ``sklearn.metrics.normalized_mutual_info_score`` with the labels.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

ArrayLike = npt.ArrayLike
"""Anything ``np.asarray`` accepts: numpy arrays, jax arrays, nested lists."""

_NORM_EPS = 1e-12


def _as_float(x: ArrayLike, name: str, ndim: int) -> np.ndarray:
    """Converts to a float array of the given rank (float32 is kept, everything else -> float64)."""
    arr = np.asarray(x)
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {arr.shape}.")
    dtype = np.float32 if arr.dtype == np.float32 else np.float64
    return arr.astype(dtype, copy=False)


def _as_labels(x: ArrayLike, name: str, n: int, *, check_sign: bool = True) -> np.ndarray:
    """Converts to a 1-D int64 array of length ``n``; refuses non-integer (or negative) ids."""
    arr = np.asarray(x)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {arr.shape}.")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.equal(np.mod(arr, 1), 0)):
            raise ValueError(f"{name} must hold integer class ids.")
    arr = arr.astype(np.int64, copy=False)
    if check_sign and arr.size and arr.min() < 0:
        raise ValueError(f"{name} must be non-negative class ids, got min {arr.min()}.")
    return arr


def _l2_normalize(x: np.ndarray) -> np.ndarray:
    """Row-wise L2 normalisation; all-zero rows stay zero (norm clipped at a tiny epsilon)."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, _NORM_EPS).astype(x.dtype)


def top1_accuracy(logits: ArrayLike, labels: ArrayLike, mask: ArrayLike | None = None) -> float:
    """Fraction of rows whose arg-max logit equals the label, over the unmasked rows only.

    Evaluation pads the last batch and masks the padding (STYLE.md, item 10), so the value is the
    exact accuracy over the real examples. Ties between equal logits go to the lower class index
    (``np.argmax``).

    Args:
        logits: ``[N, C]`` classifier scores (logits, log-probabilities or probabilities).
        labels: ``[N]`` integer class ids in ``[0, C)`` (masked padding rows may hold any
            integer, e.g. -1).
        mask: optional ``[N]`` boolean (or 0/1) array; ``True`` marks a real example, ``False`` a
            padding row that is ignored. ``None`` counts every row.

    Returns:
        Accuracy in ``[0, 1]`` as a Python float.

    Raises:
        ValueError: on inconsistent shapes, labels of unmasked rows outside ``[0, C)``, or if no row
            is unmasked (the accuracy is undefined).

    Example:
        >>> top1_accuracy([[2.0, 1.0], [0.0, 3.0], [5.0, 0.0]], [0, 0, 1], mask=[1, 1, 0])
        0.5
    """
    logits = np.asarray(logits)
    if logits.ndim != 2:
        raise ValueError(f"logits must be [N, C], got shape {logits.shape}.")
    n, num_classes = logits.shape
    labels = _as_labels(labels, "labels", n, check_sign=False)
    valid = np.ones(n, dtype=bool) if mask is None else np.asarray(mask).astype(bool)
    if valid.shape != (n,):
        raise ValueError(f"mask must have shape ({n},), got {valid.shape}.")
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise ValueError("top1_accuracy: no unmasked rows, accuracy is undefined.")
    real = labels[valid]
    if real.min() < 0 or real.max() >= num_classes:
        raise ValueError(f"top1_accuracy: labels of unmasked rows must be in [0, {num_classes}).")
    correct = (np.argmax(logits, axis=-1) == labels) & valid
    return float(correct.sum()) / num_valid


def nmi_score(
    embeddings: ArrayLike,
    labels: ArrayLike,
    *,
    num_classes: int | None = None,
    n_init: int = 10,
    seed: int = 0,
) -> float:
    """Normalised mutual information between k-means clusters of the embeddings and the labels.

    The embeddings are L2-normalised, clustered with ``sklearn.cluster.KMeans(n_clusters=k,
    n_init=n_init, random_state=seed)`` (k-means++ initialisation, Lloyd iterations, the restart
    with the lowest inertia is kept), and the cluster assignment is compared with the labels by
    ``sklearn.metrics.normalized_mutual_info_score`` (scikit-learn's default arithmetic
    normalisation: ``NMI = I(Y; K) / mean(H(Y), H(K))``). The score is invariant to permutations of
    the label ids and of the cluster ids; 1.0 means the clusters are exactly the classes, ~0 means
    independent.

    Args:
        embeddings: ``[N, D]`` embeddings (e.g. the penultimate features of the evaluated split).
        labels: ``[N]`` integer class ids.
        num_classes: number of clusters k. ``None`` uses the number of distinct labels present in
            ``labels``; pass the dataset's class count to keep k fixed when a subset misses classes.
        n_init: number of k-means restarts (seeded from ``seed``).
        seed: ``random_state`` of k-means, so the score is reproducible.

    Returns:
        NMI in ``[0, 1]`` as a Python float.

    Raises:
        ValueError: on inconsistent shapes or if k is not in ``[1, N]``.

    Example:
        >>> x = [[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]
        >>> round(nmi_score(x, [3, 3, 7, 7]), 6)
        1.0
    """
    x = _as_float(embeddings, "embeddings", 2)
    n = x.shape[0]
    y = _as_labels(labels, "labels", n)
    k = int(np.unique(y).size) if num_classes is None else int(num_classes)
    if not 1 <= k <= n:
        raise ValueError(f"nmi_score: number of clusters k={k} must be in [1, N={n}].")
    kmeans = KMeans(n_clusters=k, n_init=n_init, random_state=seed)
    clusters = kmeans.fit_predict(_l2_normalize(x))
    return float(normalized_mutual_info_score(y, clusters))


def knn_top1(
    query: ArrayLike,
    query_labels: ArrayLike,
    bank: ArrayLike,
    bank_labels: ArrayLike,
    *,
    k: int = 20,
    num_classes: int | None = None,
    batch_size: int = 1024,
) -> float:
    """Top-1 accuracy of a k-nearest-neighbour majority vote under cosine similarity.

    Both the queries and the memory bank are L2-normalised, so the similarity is the cosine
    ``s_ij = <q_i, b_j> / (|q_i| |b_j|)``. Each query is assigned the class that occurs most often
    among its ``k`` most similar bank entries (a plain, unweighted majority vote). **Ties**: among
    classes with the same vote count the one with the larger summed similarity over its voters wins;
    if that is also exactly equal, the lower class id wins. Which of several bank entries with
    exactly equal similarity at the k-th place take part in the vote is unspecified (it does not
    happen with real-valued embeddings in practice). No self-match is removed: the query set and
    the bank are meant to be disjoint (evaluated split vs. training split).

    The similarity matrix is computed ``batch_size`` queries at a time, so memory is
    ``O(batch_size * N_bank)`` (10k x 10k in float32 peaks at about 40 MB per chunk).

    Args:
        query: ``[Nq, D]`` embeddings of the evaluated split.
        query_labels: ``[Nq]`` integer class ids of the queries.
        bank: ``[Nb, D]`` embeddings of the memory bank (training split, see
            :func:`sample_memory_bank`).
        bank_labels: ``[Nb]`` integer class ids of the bank entries.
        k: number of neighbours; clipped to ``Nb`` when the bank is smaller (then all entries vote).
        num_classes: number of classes; ``None`` uses ``max(label) + 1`` over both label arrays.
        batch_size: number of queries per similarity chunk.

    Returns:
        kNN Top-1 accuracy in ``[0, 1]`` as a Python float.

    Raises:
        ValueError: on inconsistent shapes, an empty query set or bank, ``k < 1``,
            ``batch_size < 1`` or labels outside ``[0, num_classes)``.

    Example:
        >>> bank = [[1.0, 0.0], [0.0, 1.0], [0.0, 2.0]]
        >>> knn_top1([[1.0, 0.1], [0.2, 1.0]], [0, 1], bank, [0, 1, 1], k=1)
        1.0
    """
    q = _as_float(query, "query", 2)
    b = _as_float(bank, "bank", 2)
    if q.shape[0] == 0 or b.shape[0] == 0:
        raise ValueError("knn_top1: the query set and the bank must be non-empty.")
    if q.shape[1] != b.shape[1]:
        raise ValueError(f"query dim {q.shape[1]} != bank dim {b.shape[1]}.")
    if k < 1 or batch_size < 1:
        raise ValueError(f"knn_top1: k and batch_size must be >= 1, got k={k}, batch={batch_size}.")
    qy = _as_labels(query_labels, "query_labels", q.shape[0])
    by = _as_labels(bank_labels, "bank_labels", b.shape[0])
    if num_classes is None:
        num_classes = int(max(qy.max(), by.max())) + 1
    if max(qy.max(), by.max()) >= num_classes:
        raise ValueError(f"knn_top1: labels must be in [0, {num_classes}).")
    dtype = np.promote_types(q.dtype, b.dtype)
    q = _l2_normalize(q.astype(dtype, copy=False))
    b_t = _l2_normalize(b.astype(dtype, copy=False)).T
    k = min(int(k), b.shape[0])

    correct = 0
    for start in range(0, q.shape[0], batch_size):
        sims = q[start : start + batch_size] @ b_t  # [B, Nb]
        rows = sims.shape[0]
        if k < sims.shape[1]:
            idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # [B, k], unordered top-k
        else:
            idx = np.broadcast_to(np.arange(sims.shape[1]), (rows, k))
        top_sims = np.take_along_axis(sims, idx, axis=1).astype(np.float64)
        # Per-(row, class) vote counts and summed similarities via one flat bincount each.
        flat = (by[idx] + num_classes * np.arange(rows)[:, None]).ravel()
        size = rows * num_classes
        votes = np.bincount(flat, minlength=size).reshape(rows, num_classes)
        sim_sum = np.bincount(flat, weights=top_sims.ravel(), minlength=size)
        sim_sum = sim_sum.reshape(rows, num_classes)
        is_top = votes == votes.max(axis=1, keepdims=True)
        pred = np.argmax(np.where(is_top, sim_sum, -np.inf), axis=1)
        correct += int((pred == qy[start : start + batch_size]).sum())
    return correct / q.shape[0]


def sample_memory_bank(n_total: int, max_size: int = 10000, seed: int = 0) -> np.ndarray:
    """Seeded subset of training-split indices for the kNN memory bank.

    Args:
        n_total: number of examples in the split.
        max_size: largest bank size; when ``n_total <= max_size`` every index is returned.
        seed: seed of ``np.random.default_rng``; the same seed gives the same bank across runs and
            methods, so kNN Top-1 numbers are comparable.

    Returns:
        ``[min(n_total, max_size)]`` int64 array of distinct indices in ``[0, n_total)``, sorted
        ascending (sequential reads from the data source).

    Raises:
        ValueError: if ``n_total`` or ``max_size`` is negative.

    Example:
        >>> sample_memory_bank(5, max_size=10)
        array([0, 1, 2, 3, 4])
        >>> len(sample_memory_bank(50_000, max_size=10_000))
        10000
    """
    if n_total < 0 or max_size < 0:
        raise ValueError(f"n_total and max_size must be >= 0, got {n_total}, {max_size}.")
    if n_total <= max_size:
        return np.arange(n_total, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_total, size=max_size, replace=False)).astype(np.int64)
