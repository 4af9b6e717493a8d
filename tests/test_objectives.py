"""Objectives: composition in any order, term bookkeeping, one forward pass, gradients to ν_φ."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nm_hebb_jax import losses
from nm_hebb_jax import objectives as O
from nm_hebb_jax.models import get_model
from nm_hebb_jax.neuromod import Neuromodulator, gate_input, init_neuromod
from nm_hebb_jax.train.state import init_ewc_state

TAP = "stage2_block0/conv1"


@pytest.fixture(scope="module")
def setup():
    model = get_model("resnet18", num_classes=5, stage_sizes=(1, 1, 1, 1), width=4)
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    variables = model.init(k1, jnp.zeros((1, 16, 16, 3)), train=False)
    params = {"backbone": variables["params"], "neuromod": init_neuromod(k2)}
    images = jax.random.normal(k3, (8, 16, 16, 3))
    batch = {"image": images, "label": jnp.arange(8) % 5}
    ewc = init_ewc_state(params["backbone"])
    # A non-trivial EWC state: anchor shifted, Fisher positive.
    ewc = {
        "anchor": jax.tree.map(lambda x: x + 0.01, ewc["anchor"]),
        "fisher": jax.tree.map(lambda x: jnp.ones_like(x) * 2.0, ewc["fisher"]),
    }
    state = {"batch_stats": variables["batch_stats"], "ewc": ewc}
    return model, params, state, batch


def phase1(model, mode="hypergradient"):
    return O.with_neuromodulation(
        O.with_ewc(
            O.with_hebbian(O.classification_objective(model), layers=(TAP,), weight=0.1), weight=1.0
        ),
        targets=("hebb", "ewc"),
        mode=mode,
    )


def test_terms_raw_weighted_and_total(setup):
    model, params, state, batch = setup
    loss, aux = jax.jit(phase1(model))(params, state, batch, jax.random.key(1))
    t = aux["terms"]
    for name in ("ce", "hebb", "ewc", "gate_prior"):
        assert name in t and f"{name}_weighted" in t
    total = sum(v for k, v in t.items() if k.endswith("_weighted"))
    np.testing.assert_allclose(loss, total, rtol=1e-6)
    nu = aux["gate"]
    assert 0.0 < float(nu) < 1.0
    np.testing.assert_allclose(t["hebb_weighted"], nu * 0.1 * t["hebb"], rtol=1e-6)
    np.testing.assert_allclose(t["ewc_weighted"], nu * 1.0 * t["ewc"], rtol=1e-6)
    np.testing.assert_allclose(aux["regularizer"], 0.1 * t["hebb"] + t["ewc"], rtol=1e-6)
    # ν is the neuromodulator applied to log1p(CE).
    expect_nu = Neuromodulator().apply({"params": params["neuromod"]}, jnp.log1p(t["ce"]))
    np.testing.assert_allclose(nu, expect_nu, rtol=1e-6)
    # CE equals an independent optax computation on the returned logits.
    ce = optax.softmax_cross_entropy_with_integer_labels(aux["logits"], batch["label"]).mean()
    np.testing.assert_allclose(t["ce"], ce, rtol=1e-5)
    # The Hebbian term equals the regulariser on the returned tap.
    act, kernel = aux["taps"][TAP]
    np.testing.assert_allclose(t["hebb"], losses.hebbian_regularizer(act, kernel), rtol=1e-5)
    assert float(t["ewc"]) > 0


def test_gradient_reaches_neuromodulator_and_backbone(setup):
    model, params, state, batch = setup
    grads = jax.jit(jax.grad(lambda p: phase1(model)(p, state, batch, jax.random.key(1))[0]))(
        params
    )
    nm_norm = optax.tree.norm(grads["neuromod"])
    assert np.isfinite(float(nm_norm)) and float(nm_norm) > 0
    # The tapped conv's kernel receives the Hebbian gradient.
    assert float(optax.tree.norm(grads["backbone"])) > 0
    leaves = jax.tree.leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)


def test_hebbian_term_moves_the_gradient_of_the_tapped_kernel(setup):
    model, params, state, batch = setup
    base = O.classification_objective(model)
    hebb = O.with_hebbian(base, layers=(TAP,), weight=1.0)
    g0 = jax.grad(lambda p: base(p, state, batch, jax.random.key(1))[0])(params)
    g1 = jax.grad(lambda p: hebb(p, state, batch, jax.random.key(1))[0])(params)
    tapped = g1["backbone"]["stage2_block0"]["conv1"]
    untapped = g1["backbone"]["stage4_block0"]["conv2"]
    diff = jax.tree.map(
        lambda a, b: float(jnp.abs(a - b).max()), tapped, g0["backbone"]["stage2_block0"]["conv1"]
    )
    assert max(jax.tree.leaves(diff)) > 0
    same = jax.tree.map(
        lambda a, b: float(jnp.abs(a - b).max()), untapped, g0["backbone"]["stage4_block0"]["conv2"]
    )
    assert max(jax.tree.leaves(same)) == 0.0


def _count_convs(jaxpr) -> int:
    """Number of convolutions in a jaxpr, sub-jaxprs (pjit, custom_vjp, cond...) included."""
    n = 0
    for eqn in jaxpr.eqns:
        n += eqn.primitive.name == "conv_general_dilated"
        for v in eqn.params.values():
            for sub in v if isinstance(v, (list, tuple)) else (v,):
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    n += _count_convs(sub)
    return n


def test_forward_runs_once_however_many_transforms(setup):
    model, params, state, batch = setup
    rng = jax.random.key(1)
    base = O.classification_objective(model)
    stacked = O.with_pairwise_metric(phase1(model), margin=1.0, weight=1.0)
    n_base = _count_convs(jax.make_jaxpr(lambda p: base(p, state, batch, rng)[0])(params).jaxpr)
    n_stacked = _count_convs(
        jax.make_jaxpr(lambda p: stacked(p, state, batch, rng)[0])(params).jaxpr
    )
    assert n_base > 0
    assert n_stacked == n_base


def test_fixed_gate_and_modes(setup):
    model, params, state, batch = setup
    obj = O.with_neuromodulation(
        O.with_hebbian(O.classification_objective(model), layers=(TAP,), weight=0.5),
        targets=("hebb",),
        mode="fixed",
        fixed_gate=1.0,
    )
    loss, aux = obj(params, state, batch, jax.random.key(1))
    assert float(aux["gate"]) == 1.0
    np.testing.assert_allclose(aux["terms"]["hebb_weighted"], 0.5 * aux["terms"]["hebb"], rtol=1e-6)
    assert float(aux["terms"]["gate_prior_weighted"]) == 0.0
    with pytest.raises(ValueError, match="unknown gate mode"):
        O.with_neuromodulation(obj, mode="sometimes")


def test_regularizer_grad_matches_ungated_terms(setup):
    model, params, state, batch = setup
    obj = phase1(model)
    rng = jax.random.key(1)
    g_r = jax.jit(O.regularizer_grad(obj))(params, state, batch, rng)

    def ungated(p):
        _, aux = obj(p, state, batch, rng)
        return 0.1 * aux["terms"]["hebb"] + aux["terms"]["ewc"]

    expect = jax.grad(ungated)(params)
    for a, b in zip(
        jax.tree.leaves(g_r["backbone"]), jax.tree.leaves(expect["backbone"]), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_bad_layer_and_missing_state_errors(setup):
    model, params, state, batch = setup
    obj = O.with_hebbian(O.classification_objective(model), layers=("nope/conv9",), weight=0.1)
    with pytest.raises(Exception, match="nope/conv9"):
        obj(params, state, batch, jax.random.key(0))
    ewc_obj = O.with_ewc(O.classification_objective(model))
    with pytest.raises(ValueError, match="state\\['ewc'\\]"):
        ewc_obj(params, {"batch_stats": state["batch_stats"]}, batch, jax.random.key(0))
    with pytest.raises(ValueError, match="at least one layer"):
        O.with_hebbian(O.classification_objective(model), layers=())


def test_metric_transforms(setup):
    model, params, state, batch = setup
    obj = O.with_pairwise_metric(
        O.classification_objective(model, weight=0.5), margin=1.0, weight=2.0
    )
    loss, aux = obj(params, state, batch, jax.random.key(0))
    t = aux["terms"]
    expect = losses.pairwise_contrastive_loss(aux["embedding"], batch["label"], margin=1.0)
    np.testing.assert_allclose(t["pair"], expect, rtol=1e-6)
    np.testing.assert_allclose(loss, 0.5 * t["ce"] + 2.0 * t["pair"], rtol=1e-6)
    centers = jnp.zeros((5, aux["embedding"].shape[-1]))
    obj_c = O.with_center_loss(O.classification_objective(model), weight=1.0)
    _, aux_c = obj_c({**params, "centers": centers}, state, batch, jax.random.key(0))
    np.testing.assert_allclose(
        aux_c["terms"]["center"], 0.5 * jnp.mean(jnp.sum(aux_c["embedding"] ** 2, -1)), rtol=1e-5
    )
    obj_s = O.with_supervised_contrastive(O.classification_objective(model))
    _, aux_s = obj_s(params, state, batch, jax.random.key(0))
    assert np.isfinite(float(aux_s["terms"]["supcon"]))


def test_neuromodulator_monotone_and_bounded():
    s = jnp.linspace(0.0, 5.0, 101)
    for seed in range(5):
        phi = init_neuromod(jax.random.key(seed))
        # Random unconstrained parameters: monotonicity must hold by construction.
        phi = jax.tree.map(
            lambda x, k=seed: x + jax.random.normal(jax.random.key(k + 10), x.shape), phi
        )
        nu = Neuromodulator().apply({"params": phi}, s)
        assert bool(jnp.all((nu > 0) & (nu < 1)))
        assert bool(jnp.all(jnp.diff(nu) >= -1e-7))
    phi0 = init_neuromod(jax.random.key(0), init_gate=0.3)
    np.testing.assert_allclose(
        Neuromodulator(init_gate=0.3).apply({"params": phi0}, 0.0), 0.3, rtol=1e-5
    )
    # The input carries no gradient back to the loss.
    assert float(jax.grad(lambda x: gate_input(x))(1.0)) == 0.0


TRANSFORMS = {
    "hebb": lambda o: O.with_hebbian(o, layers=(TAP,), weight=0.1),
    "ewc": lambda o: O.with_ewc(o, weight=1.0),
    "pair": lambda o: O.with_pairwise_metric(o, margin=1.0, weight=0.5),
    "gate": lambda o: O.with_neuromodulation(o, targets=("hebb", "ewc")),
}


# the gate first, in the middle and last, and the other transforms in other orders
ORDERS = [
    ("gate", "pair", "ewc", "hebb"),
    ("ewc", "gate", "hebb", "pair"),
    ("pair", "ewc", "hebb", "gate"),
]


@pytest.mark.parametrize("order", ORDERS)
def test_any_order_of_the_transforms_gives_the_same_loss_gradients_and_terms(setup, order):
    """The gate scales its targets whether they were added before or after it, and the terms are
    summed once, in name order: every order gives the loss, gradients and ``aux`` of NM-Hebb's
    phase-1 objective (plus the pairwise term) built in the README's order."""
    model, params, state, batch = setup
    rng = jax.random.key(1)

    def build(names):
        obj = O.classification_objective(model)
        for name in names:
            obj = TRANSFORMS[name](obj)
        return jax.jit(jax.value_and_grad(obj, has_aux=True))

    (loss_ref, aux_ref), grads_ref = build(("hebb", "ewc", "gate", "pair"))(
        params, state, batch, rng
    )
    (loss, aux), grads = build(order)(params, state, batch, rng)
    assert set(aux["terms"]) == set(aux_ref["terms"])
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-6)
    for key in ("gate", "gate_input", "regularizer", *aux_ref["terms"]):
        got = aux["terms"][key] if key in aux["terms"] else aux[key]
        ref = aux_ref["terms"][key] if key in aux_ref["terms"] else aux_ref[key]
        np.testing.assert_allclose(got, ref, rtol=1e-6, err_msg=key)
    for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    # ν scales both targets, the pairwise term is not a target
    nu = aux["gate"]
    np.testing.assert_allclose(aux["terms"]["ewc_weighted"], nu * aux["terms"]["ewc"], rtol=1e-6)
    np.testing.assert_allclose(aux["terms"]["pair_weighted"], 0.5 * aux["terms"]["pair"])


def test_a_term_or_a_gate_added_twice_is_refused(setup):
    model = setup[0]
    obj = O.with_ewc(O.classification_objective(model))
    with pytest.raises(ValueError, match="'ewc' is added twice"):
        O.with_ewc(obj)
    gated = O.with_neuromodulation(obj)
    with pytest.raises(ValueError, match="already has a gate"):
        O.with_neuromodulation(gated)
    with pytest.raises(TypeError, match="classification_objective"):
        O.with_ewc(lambda *a, **k: None)
