"""Layer-wise linear decoding of a frozen Hebbian CNN (Miconi 2021's per-layer readout).

Each layer's pooled output is standardised per sample and averaged over its 4 spatial quadrants
(:func:`nm_hebb_jax.hebbian.model.quadrant_pool`, ``[B, 4·N_l]``); the features of the training
images fit a ridge classifier (``sklearn.linear_model.RidgeClassifier``) and a linear softmax
classifier (``sklearn.linear_model.LogisticRegression``, multinomial), after ``StandardScaler`` (fit
on the training features); accuracy is measured on the evaluation split.

Reference: Miconi, "Hebbian learning with gradients", arXiv:2107.01729, 2021.
"""

from __future__ import annotations

import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from nm_hebb_jax.data.zca import apply_zca
from nm_hebb_jax.hebbian import layers
from nm_hebb_jax.hebbian.model import HebbianCNN, Params, quadrant_pool

Array = jax.Array


def make_feature_fn(model: HebbianCNN):
    """A jitted ``(params, zca, images uint8 [B,H,W,C]) -> [[B, 4·N_l] per layer]`` function."""

    def fn(params: Params, zca: Array, images: Array) -> list[Array]:
        outs = model.features(params, apply_zca(images, zca))
        return [quadrant_pool(layers.normalize_per_sample(o)) for o in outs]

    return jax.jit(fn)


def extract_features(
    model: HebbianCNN,
    params: Params,
    zca: Array,
    images: np.ndarray,
    *,
    batch_size: int,
    feature_fn=None,
) -> list[np.ndarray]:
    """Quadrant-pooled features of every layer for a set of images.

    The last batch is padded to ``batch_size`` (one compilation) and the padding dropped.

    Args:
      model: the network.
      params: its parameters.
      zca: whitening matrix ``[D, D]``.
      images: uint8 ``[N, H, W, C]``.
      batch_size: forward batch size.
      feature_fn: a function from :func:`make_feature_fn` (built here when omitted).

    Returns:
      One float32 ``[N, 4·N_l]`` array per layer.
    """
    fn = feature_fn or make_feature_fn(model)
    n = len(images)
    chunks: list[list[np.ndarray]] = [[] for _ in model.specs]
    for start in range(0, n, batch_size):
        batch = np.asarray(images[start : start + batch_size])
        real = len(batch)
        if real < batch_size:
            pad = np.zeros((batch_size - real,) + batch.shape[1:], batch.dtype)
            batch = np.concatenate([batch, pad])
        feats = fn(params, zca, jnp.asarray(batch))
        for i, f in enumerate(feats):
            chunks[i].append(np.asarray(f)[:real])
    return [np.concatenate(c) for c in chunks]


def decode_layers(
    train_feats: list[np.ndarray],
    train_labels: np.ndarray,
    eval_feats: list[np.ndarray],
    eval_labels: np.ndarray,
    *,
    ridge_alpha: float = 1.0,
    logistic: bool = True,
    logistic_c: float = 1.0,
    logistic_max_iter: int = 200,
    seed: int = 0,
) -> dict[str, float]:
    """Fits the linear readouts per layer and scores them.

    Args:
      train_feats: per layer ``[N_train, F_l]``.
      train_labels: int ``[N_train]``.
      eval_feats: per layer ``[N_eval, F_l]``.
      eval_labels: int ``[N_eval]``.
      ridge_alpha: ``RidgeClassifier`` regularisation.
      logistic: also fit the softmax classifier.
      logistic_c: ``LogisticRegression`` inverse regularisation.
      logistic_max_iter: its iteration limit (lbfgs).
      seed: its random state.

    Returns:
      ``{'decode/layer{l}/ridge': acc, 'decode/layer{l}/logistic': acc, ...,
      'decode/seconds': s}`` with accuracies in ``[0, 1]`` (1-based ``l``).
    """
    from scipy.linalg import LinAlgWarning
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression, RidgeClassifier
    from sklearn.preprocessing import StandardScaler

    t0 = time.time()
    out: dict[str, float] = {}
    for i, (ftr, fev) in enumerate(zip(train_feats, eval_feats, strict=True)):
        scaler = StandardScaler().fit(ftr)
        ztr, zev = scaler.transform(ftr), scaler.transform(fev)
        with warnings.catch_warnings():  # constant features (dead channels) are harmless here
            warnings.simplefilter("ignore", LinAlgWarning)
            ridge = RidgeClassifier(alpha=ridge_alpha).fit(ztr, train_labels)
        out[f"decode/layer{i + 1}/ridge"] = float(np.mean(ridge.predict(zev) == eval_labels))
        if logistic:
            clf = LogisticRegression(C=logistic_c, max_iter=logistic_max_iter, random_state=seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                clf.fit(ztr, train_labels)
            out[f"decode/layer{i + 1}/logistic"] = float(np.mean(clf.predict(zev) == eval_labels))
    out["decode/seconds"] = time.time() - t0
    return out


def decode_run(
    model: HebbianCNN,
    params: Params,
    zca: Array,
    train: tuple[np.ndarray, np.ndarray],
    evaluation: tuple[np.ndarray, np.ndarray],
    decode_config,
    *,
    seed: int = 0,
) -> dict[str, float]:
    """Features of a training subset and of the evaluation images, then :func:`decode_layers`.

    Args:
      model: the network.
      params: its parameters.
      zca: whitening matrix.
      train: ``(images uint8 [N,H,W,C], labels [N])`` used to fit the readouts.
      evaluation: ``(images, labels)`` scored.
      decode_config: the config's ``decode`` group (``train_examples`` 0 = all, a seeded subset
        otherwise; ``batch_size``, ``ridge_alpha``, ``logistic*``).
      seed: seed of the training subset and of the logistic solver.

    Returns:
      The dict of :func:`decode_layers` plus ``decode/train_examples`` and
      ``decode/eval_examples``.
    """
    images, labels = train
    n = int(decode_config.train_examples)
    if n < 0:
        raise ValueError(f"decode.train_examples={n} must be >= 0 (0 = all)")
    if 0 < n < len(images):
        rows = np.sort(np.random.default_rng([seed, 0xDEC]).choice(len(images), n, replace=False))
        images, labels = images[rows], labels[rows]
    fn = make_feature_fn(model)
    bs = int(decode_config.batch_size)
    ftr = extract_features(model, params, zca, images, batch_size=bs, feature_fn=fn)
    fev = extract_features(model, params, zca, evaluation[0], batch_size=bs, feature_fn=fn)
    out = decode_layers(
        ftr,
        np.asarray(labels),
        fev,
        np.asarray(evaluation[1]),
        ridge_alpha=float(decode_config.ridge_alpha),
        logistic=bool(decode_config.logistic),
        logistic_c=float(decode_config.logistic_c),
        logistic_max_iter=int(decode_config.logistic_max_iter),
        seed=seed,
    )
    out["decode/train_examples"] = len(images)
    out["decode/eval_examples"] = len(evaluation[0])
    return out
