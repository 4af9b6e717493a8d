"""Tests of the Hebbian CNN (Miconi 2021): layer update == rule, homeostasis, masks, unit norm,
ZCA, and the smoke config end to end (train, resume, evaluate). Generated or bundled data only."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import hebbian_cnn as hebbian_config
from nm_hebb_jax.data.zca import apply_zca, fit_zca
from nm_hebb_jax.hebbian import layers
from nm_hebb_jax.hebbian.model import from_config, quadrant_pool
from nm_hebb_jax.losses.hebbian_rules import hebbian_rule_loss, hebbian_update


def _layer(rule="instar", graded=False, prune=0.0, lr=0.05, features=6, k=1, rate=3.0):
    spec = layers.LayerSpec(
        features=features,
        kernel_size=3,
        rule=rule,
        k_winners=k,
        graded=graded,
        lr=lr,
        homeostasis_rate=rate,
    )
    params = layers.init_layer(jax.random.key(1), spec, 4, prune_prob=prune)
    return spec, params


def _x(seed=0, shape=(3, 8, 8, 4)):
    return jax.random.normal(jax.random.key(seed), shape)


@pytest.mark.parametrize(
    "rule,graded",
    [
        ("hebb", False),
        ("instar", False),
        ("oja", False),
        ("hebb", True),
        ("instar", True),
        ("oja", True),
    ],
)
@pytest.mark.parametrize("prune", [0.0, 0.5])
def test_layer_update_equals_rule_update(rule, graded, prune):
    spec, params = _layer(rule, graded, prune)
    x = _x()
    fwd = layers.layer_forward(spec, params, x)
    new, _, m = jax.jit(layers.layer_step, static_argnums=0)(spec, params, x, 1.0)
    expected = spec.lr * hebbian_update(fwd["x"], params["kernel"], fwd["y"], rule=rule)
    grad = jax.grad(hebbian_rule_loss, argnums=1)(fwd["x"], params["kernel"], fwd["y"], rule=rule)
    mask = params["mask"]
    assert float(jnp.sum(fwd["y"] > 0)) > 0
    np.testing.assert_allclose(m["delta"], expected * mask, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(m["delta"], -spec.lr * grad * mask, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(
        new["kernel"], layers.unit_norm(params["kernel"] + expected * mask), rtol=1e-5, atol=1e-6
    )


def test_oja_equals_instar_only_when_binarised():
    x = _x(3)
    deltas = {}
    for graded in (False, True):
        for rule in ("instar", "oja"):
            spec, params = _layer(rule, graded)
            deltas[rule, graded] = layers.layer_step(spec, params, x, 1.0)[2]["delta"]
    np.testing.assert_allclose(deltas["oja", False], deltas["instar", False], rtol=1e-6)
    assert float(jnp.max(jnp.abs(deltas["oja", True] - deltas["instar", True]))) > 1e-3


def test_warmup_leaves_weights_and_step_compiles_once():
    spec, params = _layer()
    step = jax.jit(lambda p, x, learn: layers.layer_step(spec, p, x, learn))
    new, _, _ = step(params, _x(), jnp.float32(0.0))
    np.testing.assert_allclose(new["kernel"], params["kernel"], rtol=1e-6, atol=1e-7)
    assert not np.allclose(new["threshold"], params["threshold"])
    for i in range(3):
        new, _, _ = step(new, _x(i), jnp.float32(i % 2))
    assert step._cache_size() == 1


def test_homeostasis_moves_win_rates_toward_target():
    # Input with strong per-channel offsets: one filter direction dominates before adaptation.
    spec, params = _layer(lr=0.0, features=8, rate=0.5)
    offset = jnp.array([2.0, -2.0, 1.0, 0.0])
    data = [_x(i, (8, 8, 8, 4)) + offset for i in range(5)]
    step = jax.jit(lambda p, x: layers.layer_step(spec, p, x, 0.0))

    def rates(p):
        return np.mean([np.asarray(step(p, x)[2]["win_rate"]) for x in data], axis=0)

    before = rates(params)
    for i in range(300):
        params, _, _ = step(params, data[i % len(data)])
    after = rates(params)
    assert np.std(before) > 0.05  # genuinely unbalanced at the start
    assert np.std(after) < 0.3 * np.std(before)
    target = spec.target_rate
    assert np.mean(np.abs(after - target)) < 0.3 * np.mean(np.abs(before - target))


def test_masks_stay_applied_and_filters_unit_norm():
    spec, params = _layer(rule="hebb", prune=0.8, lr=0.5)
    mask = np.asarray(params["mask"])
    assert 0 < mask.mean() < 0.5 and np.all(mask.reshape(-1, spec.features).sum(0) >= 1)
    step = jax.jit(lambda p, x: layers.layer_step(spec, p, x, 1.0))
    for i in range(5):
        params, _, m = step(params, _x(i))
        assert float(m["update_norm"]) > 0
        kernel = np.asarray(params["kernel"])
        assert np.all(kernel[mask == 0] == 0.0)
        norms = np.sqrt(np.sum(kernel**2, axis=(0, 1, 2)))
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_triangle_and_kwta():
    v = jnp.array([[[[3.0, 1.0, -1.0, 0.5]]]])
    np.testing.assert_array_equal(
        layers.plasticity_signal(v, k_winners=2, graded=False), [[[[1, 1, 0, 0]]]]
    )
    np.testing.assert_allclose(
        layers.plasticity_signal(v, k_winners=1, graded=True), [[[[3, 0, 0, 0]]]]
    )
    # A winner below threshold does not fire.
    np.testing.assert_array_equal(
        layers.plasticity_signal(-jnp.abs(v), k_winners=1, graded=False), [[[[0, 0, 0, 0]]]]
    )
    np.testing.assert_allclose(layers.triangle_activation(v), [[[[2.125, 0.125, 0, 0]]]])


def test_quadrant_pool():
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    np.testing.assert_allclose(quadrant_pool(x), [[2.5, 4.5, 10.5, 12.5]])
    assert quadrant_pool(jnp.ones((2, 1, 1, 3))).shape == (2, 12)


def test_zca_whitens_held_out_correlated_data():
    # x = A z with A = Q diag(s) Q^T, s in [0.3, 3]: strongly correlated, well-conditioned.
    rng = np.random.default_rng(0)
    d = 4 * 4 * 3
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a = (q * np.linspace(0.3, 3.0, d)) @ q.T + 1.5  # + a shared component: correlations > 0.5
    fit = (rng.normal(size=(20000, d)) @ a.T).reshape(-1, 4, 4, 3)
    test = (rng.normal(size=(20000, d)) @ a.T).reshape(-1, 4, 4, 3)
    raw = np.corrcoef(test.reshape(len(test), -1), rowvar=False)
    assert np.max(np.abs(raw - np.eye(d))) > 0.5
    zca = fit_zca(fit, eps=1e-3)
    np.testing.assert_allclose(zca, zca.T, atol=1e-5)
    w = np.asarray(apply_zca(jnp.asarray(test, jnp.float32), zca)).reshape(len(test), -1)
    cov = w.T @ w / len(w)
    # Per-image standardisation removes the constant direction, so the target is the projection
    # I - 11^T/d. Tolerance 0.05: the held-out sampling error of one covariance entry is about
    # 1/sqrt(20000) = 0.007 (plus a similar error of the fitted Z and eps/lambda_min < 0.01), while
    # the raw data's correlations exceed 0.5.
    target = np.eye(d) - np.ones((d, d)) / d
    assert np.max(np.abs(cov - target)) < 0.05


def test_zca_bad_values():
    with pytest.raises(ValueError, match="zca_eps"):
        fit_zca(np.zeros((4, 2, 2, 3)), eps=0.0)


def test_config_errors():
    c = hebbian_config.get_config("smoke")
    c.rule = "bcm"
    with pytest.raises(ValueError, match="rule"):
        from_config(c)
    c = hebbian_config.get_config("smoke")
    c.prune_prob = 1.0
    with pytest.raises(ValueError, match="prune_prob"):
        from_config(c)
    c = hebbian_config.get_config("smoke")
    c.kernel_sizes = (5, 3)
    with pytest.raises(ValueError, match="equal length"):
        from_config(c)
    with pytest.raises(ValueError, match="unknown config argument"):
        hebbian_config.get_config("tiny")


def test_smoke_trains_resumes_and_evaluates(tmp_path):
    from nm_hebb_jax.evaluate import evaluate_workdir
    from nm_hebb_jax.hebbian.train import restore, train_and_evaluate_hebbian

    c = hebbian_config.get_config("smoke")
    full = train_and_evaluate_hebbian(c, str(tmp_path / "full"))
    assert full["step"] == c.num_steps and not full["stopped"]
    for layer in (1, 2, 3):
        assert 0.0 <= full[f"decode/layer{layer}/ridge"] <= 1.0
        assert 0.0 <= full[f"decode/layer{layer}/logistic"] <= 1.0
    assert full["decode/layer1/ridge"] > 0.3  # digits: well above chance (0.1)

    c2 = hebbian_config.get_config("smoke")
    c2.stop_after_step = 7  # after warm-up (4) and between checkpoints (every 6)
    part = train_and_evaluate_hebbian(c2, str(tmp_path / "split"))
    assert part["stopped"] and part["step"] == 7
    c3 = hebbian_config.get_config("smoke")
    c3.decode.at_end = False
    resumed = train_and_evaluate_hebbian(c3, str(tmp_path / "split"))
    assert resumed["provenance"]["resumed_from_step"] == 7

    model = from_config(c)
    shape = (c.data.image_size, c.data.image_size, 3)
    p_full, z_full, s_full = restore(str(tmp_path / "full"), model, shape)
    p_res, z_res, s_res = restore(str(tmp_path / "split"), model, shape)
    assert s_full == s_res == c.num_steps
    np.testing.assert_array_equal(z_full, z_res)
    for a, b in zip(jax.tree.leaves(p_full), jax.tree.leaves(p_res), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)

    out = evaluate_workdir(str(tmp_path / "full"))
    assert out["kind"] == "hebbian_cnn" and out["step"] == c.num_steps
    for layer in (1, 2, 3):
        assert out[f"decode/layer{layer}/ridge"] == pytest.approx(
            full[f"decode/layer{layer}/ridge"]
        )
        assert os.path.exists(out["pictures"][f"layer{layer}"])
    with open(tmp_path / "full" / "eval" / f"val_step{c.num_steps}" / "results.json") as f:
        assert json.load(f)["decode/layer3/ridge"] == out["decode/layer3/ridge"]
