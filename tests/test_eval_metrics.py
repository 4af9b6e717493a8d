"""Tests of nm_hebb_jax.eval: Top-1, kNN Top-1, NMI, filter-level metrics and the pictures."""

from __future__ import annotations

import doctest
import itertools
import json

import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import nm_hebb_jax.eval as ev
from nm_hebb_jax.eval import filters as filters_mod
from nm_hebb_jax.eval import metrics as metrics_mod
from nm_hebb_jax.eval import plots as plots_mod


def _unit(deg: float, scale: float = 1.0) -> list[float]:
    """A 2-D point at angle ``deg`` (degrees) and radius ``scale``."""
    rad = np.deg2rad(deg)
    return [scale * np.cos(rad), scale * np.sin(rad)]


@pytest.mark.parametrize("module", [metrics_mod, filters_mod])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0


# --------------------------------------------------------------------------------------------------
# top1_accuracy
# --------------------------------------------------------------------------------------------------


def test_top1_hand_computed_and_mask():
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 5.0], [9.0, 0.0, 0.0]])
    labels = np.array([0, 1, 1, -1])  # last row is padding with a dummy label
    mask = np.array([True, True, True, False])
    assert ev.top1_accuracy(logits, labels, mask) == pytest.approx(2 / 3)
    got = ev.top1_accuracy(jnp.asarray(logits[:3]), jnp.asarray(labels[:3]))
    assert got == pytest.approx(2 / 3)
    # Masking rows == slicing them away.
    assert ev.top1_accuracy(logits, labels, mask) == ev.top1_accuracy(logits[:3], labels[:3])


def test_top1_errors():
    with pytest.raises(ValueError, match="no unmasked rows"):
        ev.top1_accuracy(np.zeros((2, 3)), np.array([0, 1]), mask=np.zeros(2))
    with pytest.raises(ValueError, match="labels"):
        ev.top1_accuracy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(ValueError):
        ev.top1_accuracy(np.zeros((2, 3)), np.array([0, 1, 2]))


# --------------------------------------------------------------------------------------------------
# knn_top1
# --------------------------------------------------------------------------------------------------


def test_knn_hand_computed_k1_vs_k3():
    # Bank on the unit circle (radii differ: only the angle matters under cosine similarity).
    bank = np.array([_unit(0, 5.0), _unit(10, 0.5), _unit(22), _unit(80, 3.0), _unit(90)])
    bank_labels = np.array([0, 0, 1, 1, 1])
    # Query at 25 deg: nearest is the lone class-1 point at 22 deg; the 3 nearest are 22, 10, 0 deg.
    query = np.array([_unit(25, 2.0)])
    assert ev.knn_top1(query, [1], bank, bank_labels, k=1) == 1.0
    assert ev.knn_top1(query, [0], bank, bank_labels, k=1) == 0.0
    assert ev.knn_top1(query, [0], bank, bank_labels, k=3) == 1.0
    # Query at 70 deg: 80, 90 and 22/10 deg -> class 1 for k = 1 and k = 3.
    query2 = np.array([_unit(25), _unit(70)])
    assert ev.knn_top1(query2, [0, 1], bank, bank_labels, k=3) == 1.0
    assert ev.knn_top1(query2, [0, 1], bank, bank_labels, k=1) == 0.5


def test_knn_tie_broken_by_summed_similarity():
    # Query at 0 deg, k = 4: two votes each. Class 1 holds the single nearest entry (1 deg) but its
    # summed similarity cos 1 + cos 60 = 1.4998 < cos 20 + cos 25 = 1.8460 of class 0 -> class 0.
    bank = np.array([_unit(1), _unit(60), _unit(20), _unit(25), _unit(170)])
    bank_labels = np.array([1, 1, 0, 0, 1])
    query = np.array([_unit(0)])
    assert ev.knn_top1(query, [0], bank, bank_labels, k=4) == 1.0
    # With k = 1 the nearest entry alone decides -> class 1.
    assert ev.knn_top1(query, [1], bank, bank_labels, k=1) == 1.0


def test_knn_exact_tie_goes_to_lower_class_id():
    query = np.array([_unit(0)])
    for labels in ([2, 1], [1, 2]):  # +30 and -30 deg have exactly the same similarity
        bank = np.array([_unit(30), [np.cos(np.deg2rad(30)), -np.sin(np.deg2rad(30))]])
        assert ev.knn_top1(query, [1], bank, labels, k=2) == 1.0


def _knn_reference(query, query_labels, bank, bank_labels, k, num_classes):
    """Brute force: full similarity matrix, full sort, explicit vote per query."""
    q = np.asarray(query, np.float64)
    b = np.asarray(bank, np.float64)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    correct = 0
    for i in range(q.shape[0]):
        sims = b @ q[i]
        nearest = np.argsort(-sims)[:k]
        best = None
        for c in range(num_classes):
            voters = [j for j in nearest if bank_labels[j] == c]
            key = (len(voters), sum(sims[j] for j in voters), -c)
            if best is None or key > best[0]:
                best = (key, c)
        correct += best[1] == query_labels[i]
    return correct / q.shape[0]


@pytest.mark.parametrize("k", [1, 5, 20])
def test_knn_matches_brute_force(k):
    rng = np.random.default_rng(k)
    num_classes, dim = 5, 16
    centers = rng.normal(size=(num_classes, dim))
    bank_labels = rng.integers(0, num_classes, 400)
    query_labels = rng.integers(0, num_classes, 150)
    bank = centers[bank_labels] + 1.5 * rng.normal(size=(400, dim))
    query = centers[query_labels] + 1.5 * rng.normal(size=(150, dim))
    want = _knn_reference(query, query_labels, bank, bank_labels, k, num_classes)
    assert 0.2 < want < 1.0  # a non-trivial case
    got = ev.knn_top1(query, query_labels, bank, bank_labels, k=k, batch_size=64)
    assert got == pytest.approx(want, abs=1e-12)
    # float32 jax inputs and one big chunk give the same answer.
    got32 = ev.knn_top1(
        jnp.asarray(query, jnp.float32),
        jnp.asarray(query_labels),
        jnp.asarray(bank, jnp.float32),
        jnp.asarray(bank_labels),
        k=k,
        num_classes=num_classes,
        batch_size=1024,
    )
    assert got32 == pytest.approx(want, abs=1e-12)


def test_knn_k_larger_than_bank_is_clipped_and_errors():
    rng = np.random.default_rng(0)
    bank, query = rng.normal(size=(5, 3)), rng.normal(size=(7, 3))
    bank_labels, query_labels = np.array([0, 1, 1, 2, 0]), rng.integers(0, 3, 7)
    assert ev.knn_top1(query, query_labels, bank, bank_labels, k=100) == ev.knn_top1(
        query, query_labels, bank, bank_labels, k=5
    )
    with pytest.raises(ValueError):
        ev.knn_top1(query, query_labels, bank, bank_labels, k=0)
    with pytest.raises(ValueError):
        ev.knn_top1(query, query_labels, bank[:, :2], bank_labels)
    with pytest.raises(ValueError):
        ev.knn_top1(query, query_labels, bank, bank_labels, num_classes=2)


# --------------------------------------------------------------------------------------------------
# nmi_score
# --------------------------------------------------------------------------------------------------


def _blobs(rng, n_per_class, num_classes, dim, noise):
    centers = 3.0 * np.eye(dim)[:num_classes]
    labels = np.repeat(np.arange(num_classes), n_per_class)
    return centers[labels] + noise * rng.normal(size=(labels.size, dim)), labels


def test_nmi_perfect_clusters_is_one():
    rng = np.random.default_rng(0)
    x, y = _blobs(rng, 30, 4, 8, noise=0.05)
    # Per-row positive rescaling does not matter (embeddings are L2-normalised first).
    x = x * rng.uniform(0.1, 10.0, size=(x.shape[0], 1))
    assert ev.nmi_score(x, y) == pytest.approx(1.0)
    assert ev.nmi_score(jnp.asarray(x, jnp.float32), jnp.asarray(y + 10)) == pytest.approx(1.0)


def test_nmi_random_labels_near_zero():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 16))
    y = rng.integers(0, 10, 3000)
    assert 0.0 <= ev.nmi_score(x, y, n_init=2) < 0.03


def test_nmi_invariant_to_label_permutation_and_seeded():
    rng = np.random.default_rng(2)
    x, y = _blobs(rng, 50, 5, 8, noise=1.2)  # overlapping: NMI strictly between 0 and 1
    base = ev.nmi_score(x, y, n_init=3, seed=0)
    assert 0.1 < base < 0.95
    perm = rng.permutation(5)
    assert ev.nmi_score(x, perm[y], n_init=3, seed=0) == pytest.approx(base, abs=1e-12)
    assert ev.nmi_score(x, y, n_init=3, seed=0) == base
    with pytest.raises(ValueError):
        ev.nmi_score(x[:3], y[:3], num_classes=4)


# --------------------------------------------------------------------------------------------------
# sample_memory_bank
# --------------------------------------------------------------------------------------------------


def test_sample_memory_bank():
    np.testing.assert_array_equal(ev.sample_memory_bank(7, max_size=10), np.arange(7))
    a = ev.sample_memory_bank(50_000, max_size=10_000, seed=3)
    assert a.shape == (10_000,) and a.dtype == np.int64
    assert np.all(np.diff(a) > 0) and a[0] >= 0 and a[-1] < 50_000  # sorted, distinct, in range
    np.testing.assert_array_equal(a, ev.sample_memory_bank(50_000, max_size=10_000, seed=3))
    assert not np.array_equal(a, ev.sample_memory_bank(50_000, max_size=10_000, seed=4))


# --------------------------------------------------------------------------------------------------
# filter_redundancy
# --------------------------------------------------------------------------------------------------


def test_filter_redundancy_matches_double_loop():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 3, 4, 6))
    kernel[..., 2] = 0.0  # a dead filter: similarity 0 with every other filter
    flat = [kernel[..., f].ravel() for f in range(6)]
    sims = []
    for f, g in itertools.combinations(range(6), 2):
        nf, ng = np.linalg.norm(flat[f]), np.linalg.norm(flat[g])
        sims.append(0.0 if nf == 0 or ng == 0 else abs(flat[f] @ flat[g]) / (nf * ng))
    assert len(sims) == 15
    assert ev.filter_redundancy(kernel) == pytest.approx(np.mean(sims), abs=1e-12)
    assert ev.filter_redundancy(jnp.asarray(kernel, jnp.float32)) == pytest.approx(
        np.mean(sims), abs=1e-6
    )


def test_filter_redundancy_limits():
    rng = np.random.default_rng(1)
    f = rng.normal(size=(3, 3, 2, 1))
    assert ev.filter_redundancy(np.concatenate([f, f, 2 * f], -1)) == pytest.approx(1.0)
    assert ev.filter_redundancy(np.concatenate([f, -f], -1)) == pytest.approx(1.0)
    orthogonal = np.eye(18).reshape(3, 3, 2, 18)[..., :7]  # one-hot filters
    assert ev.filter_redundancy(orthogonal) == pytest.approx(0.0)
    assert ev.filter_redundancy(f) == 0.0
    assert ev.filter_redundancy(np.zeros((3, 3, 2, 4))) == 0.0


# --------------------------------------------------------------------------------------------------
# class_selectivity, class_means, accumulator, filter_metrics
# --------------------------------------------------------------------------------------------------


def test_class_selectivity_values():
    mu = np.array(
        [
            # one-class, uniform, dead, hand value, tied maximum
            [0.0, 2.0, 0.0, 3.0, 2.0],
            [4.0, 2.0, 0.0, 1.0, 2.0],
            [0.0, 2.0, 0.0, 1.0, 0.0],
        ]
    )
    si = ev.class_selectivity(mu)
    # (3 - 1) / (3 + 1) = 0.5; tied max: mu_rest = (2 + 0) / 2 = 1 -> (2 - 1) / (2 + 1) = 1/3.
    np.testing.assert_allclose(si, [1.0, 0.0, 0.0, 0.5, 1 / 3], atol=1e-7)
    assert si.shape == (5,) and np.all(np.isfinite(si))


def test_class_selectivity_skips_empty_classes_and_validates():
    mu = np.array([[1.0, 0.0], [np.nan, np.nan], [3.0, 2.0]])
    np.testing.assert_allclose(ev.class_selectivity(mu), ev.class_selectivity(mu[[0, 2]]))
    with pytest.raises(ValueError, match="non-negative"):
        ev.class_selectivity([[1.0, -0.5], [0.0, 1.0]])
    with pytest.raises(ValueError, match="partly NaN"):
        ev.class_selectivity([[1.0, np.nan], [0.0, 1.0]])
    with pytest.raises(ValueError, match=">= 2"):
        ev.class_selectivity([[1.0, 2.0], [np.nan, np.nan]])


def test_class_means_spatial_and_hand_values():
    acts = np.zeros((3, 2, 2, 2))
    acts[0, :, :, 0] = [[1.0, 3.0], [0.0, 0.0]]  # spatial mean 1.0
    acts[1, :, :, 0] = 3.0
    acts[2, :, :, 1] = 8.0
    got = ev.class_means(jnp.asarray(acts), np.array([0, 0, 2]), num_classes=3)
    want = np.array([[2.0, 0.0], [np.nan, np.nan], [0.0, 8.0]])
    np.testing.assert_allclose(got, want)


def test_accumulator_over_batches_equals_one_shot():
    rng = np.random.default_rng(0)
    acts = np.maximum(rng.normal(size=(50, 4, 4, 6)), 0.0)
    labels = rng.integers(0, 5, 50)
    acc = ev.ClassMeanAccumulator(num_classes=5)
    for start in range(0, 50, 16):  # last batch padded to 16 and masked, as in evaluation
        a, y = acts[start : start + 16], labels[start : start + 16]
        pad = 16 - a.shape[0]
        a = np.concatenate([a, np.full((pad, 4, 4, 6), 99.0)])
        y = np.concatenate([y, np.full(pad, -1)])
        acc.update(a, y, mask=np.arange(16) < 16 - pad)
    np.testing.assert_allclose(acc.result(), ev.class_means(acts, labels, 5), atol=1e-12)
    np.testing.assert_array_equal(acc.counts, np.bincount(labels, minlength=5))
    with pytest.raises(ValueError, match="channel count"):
        acc.update(np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(ValueError, match="labels"):
        acc.update(np.zeros((2, 6)), np.array([0, 5]))
    with pytest.raises(ValueError, match="before any update"):
        ev.ClassMeanAccumulator(3).result()


def test_filter_metrics():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 3, 3, 4))
    mu = np.array([[1.0, 1.0, 0.0, 0.0], [0.0, 1.0, 0.0, 3.0], [0.0, 1.0, 0.0, 1.0]])
    out = ev.filter_metrics(kernel, mu)
    assert set(out) == {
        "filter_redundancy",
        "class_selectivity_mean",
        "class_selectivity_median",
        "dead_channel_fraction",
    }
    assert all(isinstance(v, float) for v in out.values())
    assert out["filter_redundancy"] == pytest.approx(ev.filter_redundancy(kernel))
    # Live channels 0, 1, 3: SI = 1, 0, (3 - 0.5) / 3.5; channel 2 is dead.
    live = [1.0, 0.0, 2.5 / 3.5]
    assert out["class_selectivity_mean"] == pytest.approx(np.mean(live), abs=1e-7)
    assert out["class_selectivity_median"] == pytest.approx(np.median(live), abs=1e-7)
    assert out["dead_channel_fraction"] == pytest.approx(0.25)
    with pytest.raises(ValueError):
        ev.filter_metrics(kernel, mu[:, :3])


# --------------------------------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------------------------------


def _check_png(path, min_side=250, max_side=4000):
    assert path.is_file() and path.stat().st_size > 1000
    with Image.open(path) as im:
        assert im.format == "PNG"
        w, h = im.size
    assert min_side <= w <= max_side and min_side <= h <= max_side, (w, h)
    return w, h


def test_stratified_subsample_keeps_proportions():
    labels = np.repeat([0, 1, 2], [500, 300, 200])
    idx = plots_mod._stratified_subsample(labels, 101, seed=0)
    assert idx.size == 101 and np.unique(idx).size == 101
    counts = np.bincount(labels[idx], minlength=3)
    assert np.all(np.abs(counts - np.array([50.5, 30.3, 20.2])) < 1)


def test_plot_embedding_tsne(tmp_path):
    rng = np.random.default_rng(0)
    x, y = _blobs(rng, 20, 3, 8, noise=0.3)  # 60 points
    out = ev.plot_embedding_tsne(
        x, y, tmp_path / "sub" / "tsne.png", class_names=["cat", "dog", "ship"], max_points=45
    )
    assert out == tmp_path / "sub" / "tsne.png"
    _check_png(out)
    # > 20 classes: continuous colour map and a colourbar instead of a legend.
    many = rng.normal(size=(75, 8))
    _check_png(ev.plot_embedding_tsne(many, np.arange(75) % 25, tmp_path / "many.png"))


def test_plot_filter_grid(tmp_path):
    rng = np.random.default_rng(0)
    w_rgb, _ = _check_png(ev.plot_filter_grid(rng.normal(size=(3, 3, 3, 16)), tmp_path / "a.png"))
    _check_png(ev.plot_filter_grid(rng.normal(size=(5, 5, 8, 100)), tmp_path / "b.png"))
    const = np.ones((3, 3, 1, 2))  # constant filters must not divide by zero
    _check_png(ev.plot_filter_grid(const, tmp_path / "c.png"), min_side=150)
    with pytest.raises(ValueError):
        ev.plot_filter_grid(np.zeros((3, 3, 4)), tmp_path / "d.png")


def _records():
    rows = []
    for step in range(0, 200, 10):
        row = {
            "step": step,
            "train/loss": 2.0 * np.exp(-step / 80),
            "train/top1": 1 - np.exp(-step / 60),
            "train/gate": np.float32(0.5 + 0.002 * step),
            "train/terms/ce": 2.0 * np.exp(-step / 80),
            "train/terms/hebb": 1e-4 * (1 + step),
            "note": "text values are ignored",
        }
        if step % 50 == 0:
            row["val/top1"] = 0.9 * (1 - np.exp(-step / 60))
            row["val/knn_top1"] = jnp.asarray(0.8 * (1 - np.exp(-step / 60)))
        rows.append(row)
    return rows


def test_group_of():
    assert plots_mod._group_of("train/loss") == "loss"
    assert plots_mod._group_of("val/knn_top1") == "accuracy"
    assert plots_mod._group_of("train/gate") == "gate"
    assert plots_mod._group_of("train/terms/hebb") == "terms"
    assert plots_mod._group_of("val/nmi") == "nmi"


def test_plot_training_curves_records_and_jsonl(tmp_path):
    records = _records()
    _check_png(ev.plot_training_curves(records, tmp_path / "curves.png"))
    jsonl = tmp_path / "metrics.jsonl"
    with open(jsonl, "w") as fh:
        fh.write(json.dumps({"config": "header without a step"}) + "\n\n")
        for r in records:
            fh.write(json.dumps({k: (float(v) if k != "note" else v) for k, v in r.items()}) + "\n")
    _check_png(ev.plot_training_curves(jsonl, tmp_path / "from_jsonl.png"))
    _check_png(ev.plot_training_curves(records, tmp_path / "some.png", keys=["val/top1"]))
    with pytest.raises(ValueError):
        ev.plot_training_curves(records, tmp_path / "none.png", keys=["missing"])
