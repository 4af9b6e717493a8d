"""Tests of nm_hebb_jax.models: tiny forward passes, Hebbian taps, pinned parameter counts, errors.

Reference parameter counts were obtained by instantiating the PyTorch definitions (torch 2.13.0+cpu,
torchvision 0.28.0) and summing ``p.numel()`` over ``model.parameters()`` (buffers excluded) for 10
classes. Beyond these tests, the full-size Flax models were checked once against those PyTorch
models with copied weights (eval mode with random BN statistics, and train mode): logits agreed to
a relative 1e-5.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nm_hebb_jax import models

# Tiny configurations: >= 2 stages each, so default_hebb_layer exists, and every block kind occurs.
TINY = {
    "resnet18": dict(stage_sizes=(1, 1), width=8),
    "vgg11": dict(cfg=(8, "M", 16, "M")),
    "mobilenet_v2": dict(
        cfg=((1, 8, 1, 1), (2, 16, 2, 1), (2, 16, 1, 2)), stem_features=8, head_features=32
    ),
    "efficientnet_v2_s": dict(
        stages=(("fused", 1, 3, 1, 8, 1), ("fused", 4, 3, 2, 16, 2), ("mbconv", 4, 3, 2, 16, 2)),
        stem_features=8,
        head_features=32,
    ),
    "densenet121": dict(block_sizes=(1, 1), growth_rate=4),
}
TINY_EMBEDDING_DIM = {
    "resnet18": 16,
    "vgg11": 16,
    "mobilenet_v2": 32,
    "efficientnet_v2_s": 32,
    "densenet121": 10,  # stem 8 + 4 -> transition 6 -> + 4
}

# PyTorch reference counts (num_classes=10), from instantiating:
TORCH_PARAMS = {
    # kuangliu/pytorch-cifar models/resnet.py: ResNet(BasicBlock, [2, 2, 2, 2]) (ResNet18).
    "resnet18": 11_173_962,
    # kuangliu/pytorch-cifar models/vgg.py: VGG('VGG11') (conv bias=True, BatchNorm2d).
    "vgg11": 9_231_114,
    # kuangliu/pytorch-cifar models/mobilenetv2.py: MobileNetV2(num_classes=10).
    "mobilenet_v2": 2_296_922,
    # torchvision/models/efficientnet.py: efficientnet_v2_s(num_classes=10).
    "efficientnet_v2_s": 20_190_298,
    # kuangliu/pytorch-cifar models/densenet.py: DenseNet121() = DenseNet(Bottleneck,
    # [6, 12, 24, 16], growth_rate=32).
    "densenet121": 6_956_298,
}
# Our exact counts (catch any accidental architecture change). VGG drops the conv bias before BN.
FLAX_PARAMS = {
    "resnet18": 11_173_962,
    "vgg11": 9_228_362,
    "mobilenet_v2": 2_296_922,
    "efficientnet_v2_s": 20_190_298,
    "densenet121": 6_956_298,
}
FULL_EMBEDDING_DIM = {
    "resnet18": 512,
    "vgg11": 512,
    "mobilenet_v2": 1280,
    "efficientnet_v2_s": 1280,
    "densenet121": 1024,
}

RNGS = {"params": jax.random.key(0), "dropout": jax.random.key(1)}


def _tiny(name, **overrides):
    return models.get_model(name, num_classes=3, **TINY[name], **overrides)


@functools.cache
def _tiny_variables(name):
    """One jitted init per backbone, shared by the tests (XLA compiles of init dominate)."""
    model = _tiny(name)
    return jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(_images(32))


def _images(size, seed=0):
    return jax.random.normal(jax.random.key(seed), (2, size, size, 3), jnp.float32)


def _assert_one_line_value_error(excinfo, *fragments):
    message = str(excinfo.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_tiny_forward_32_and_64(name):
    model = _tiny(name)
    variables = _tiny_variables(name)

    @jax.jit
    def run(x32, x64):  # one compilation: the same variables applied at 32x32 and 64x64
        apply = lambda x: model.apply(variables, x, train=False)
        return {32: apply(x32), 64: apply(x64)}

    outputs = run(_images(32), _images(64))
    assert set(variables) == {"params", "batch_stats"}
    assert model.embedding_dim == TINY_EMBEDDING_DIM[name] == models.embedding_dim(model)
    for logits, aux in outputs.values():
        assert logits.shape == (2, 3) and logits.dtype == jnp.float32
        assert aux["embedding"].shape == (2, model.embedding_dim)
        assert aux["embedding"].dtype == jnp.float32
        assert np.isfinite(np.asarray(logits)).all()
        assert np.isfinite(np.asarray(aux["embedding"])).all()
    assert not np.allclose(outputs[32][0], outputs[64][0])


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_tiny_train_taps(name):
    base = _tiny(name)
    names = base.conv_layer_names()
    default = base.default_hebb_layer
    other = names[-1] if names[-1] != default else names[0]
    layers = (default, other)
    variants = {
        mode: base.clone(hebb_layers=layers, hebb_activation=mode)
        for mode in ("post", "pre", "maxpool")
    }
    x = _images(32)
    variables = _tiny_variables(name)

    @jax.jit
    def run(v, x):
        out = {}
        for mode, model in variants.items():
            (logits, _), state = model.apply(
                v,
                x,
                train=True,
                mutable=["batch_stats", "intermediates"],
                rngs={"dropout": jax.random.key(2)},
            )
            out[mode] = (logits, state)
        return out

    out = run(variables, x)
    taps = {mode: models.collect_taps(state["intermediates"]) for mode, (_, state) in out.items()}
    for mode in variants:
        assert set(taps[mode]) == set(layers), (mode, set(taps[mode]))  # and nothing else
        for layer in layers:
            act, kernel = taps[mode][layer]
            assert act.ndim == 4 and kernel.ndim == 4
            assert act.shape[-1] == kernel.shape[-1], (layer, act.shape, kernel.shape)
            assert kernel.dtype == jnp.float32
    subset = models.collect_taps(out["post"][1]["intermediates"], [default])
    assert list(subset) == [default]
    # 'pre' and 'post' differ where the unit has BN; 'maxpool' halves H, W of the 'post' map.
    pre, post, pooled = (taps[m][default][0] for m in ("pre", "post", "maxpool"))
    assert pre.shape == post.shape and not np.allclose(pre, post)
    for layer in layers:
        h, w = taps["post"][layer][0].shape[1:3]
        assert taps["maxpool"][layer][0].shape[1:3] == (h // 2, w // 2)
    np.testing.assert_allclose(
        taps["maxpool"][default][0],
        nn.max_pool(post, (2, 2), strides=(2, 2), padding="VALID"),
        rtol=1e-6,
    )
    # The tap mode never changes the forward pass; train mode updates the batch statistics.
    np.testing.assert_allclose(out["pre"][0], out["post"][0], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out["maxpool"][0], out["post"][0], rtol=1e-6, atol=1e-6)
    new_stats = out["post"][1]["batch_stats"]
    changed = jax.tree.map(
        lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
        variables["batch_stats"],
        new_stats,
    )
    assert all(jax.tree.leaves(changed))


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_full_size_param_count(name):
    model = models.get_model(name, num_classes=10)
    count = models.num_params(model)
    assert count == FLAX_PARAMS[name]
    assert abs(count - TORCH_PARAMS[name]) / TORCH_PARAMS[name] < 0.01
    # num_params is jax.eval_shape of init: the same as counting an abstract init by hand.
    abstract = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    assert set(abstract) == {"params", "batch_stats"}
    assert sum(leaf.size for leaf in jax.tree.leaves(abstract["params"])) == count
    assert model.embedding_dim == FULL_EMBEDDING_DIM[name]


def test_vgg_conv_bias_matches_reference_exactly():
    model = models.get_model("vgg11", num_classes=10, conv_bias=True)
    assert models.num_params(model) == TORCH_PARAMS["vgg11"]


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_torch_default_init_is_uniform_in_one_over_sqrt_fan_in(name):
    """``init_scheme='torch_default'``: every conv/dense weight and bias ~ U(±1/√fan_in) (PyTorch's
    ``kaiming_uniform_(a=√5)``); the default ``'fan_out'`` keeps He-normal kernels and 0 biases."""
    x = jnp.zeros((1, 32, 32, 3))
    torch_init = _tiny(
        name, init_scheme="torch_default", **({"conv_bias": True} if name == "vgg11" else {})
    )
    params = torch_init.init(jax.random.key(0), x)["params"]
    checked = 0
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        keys = [p.key for p in path]
        parent = params
        for k in keys[:-1]:
            parent = parent[k]
        if keys[-1] not in ("kernel", "bias") or "kernel" not in parent:  # BatchNorm: scale, bias
            continue
        kernel = np.asarray(parent["kernel"])
        fan_in = int(np.prod(kernel.shape[:-1]))
        bound = 1.0 / np.sqrt(fan_in)
        value = np.asarray(leaf)
        assert np.abs(value).max() <= bound * (1 + 1e-6), "/".join(keys)
        if value.size >= 64:  # U(-b, b) has std b/√3
            np.testing.assert_allclose(value.std(), bound / np.sqrt(3), rtol=0.35)
        checked += 1
    assert checked >= 4
    default = _tiny(name).init(jax.random.key(0), x)["params"]
    classifier = default["classifier"]
    assert not np.any(np.asarray(classifier["bias"]))
    assert not np.allclose(
        np.asarray(classifier["kernel"]), np.asarray(params["classifier"]["kernel"])
    )
    with pytest.raises(ValueError, match="init_scheme"):
        _tiny(name, init_scheme="xavier").init(jax.random.key(0), x)


@pytest.mark.parametrize("name", models.MODEL_NAMES)
def test_default_hebb_layer_is_a_conv_layer(name):
    for model in (models.get_model(name, num_classes=10), _tiny(name)):
        names = model.conv_layer_names()
        assert names == models.conv_layer_names(model)
        assert len(set(names)) == len(names)
        assert model.default_hebb_layer in names
        models.validate_hebb_layers(model, (model.default_hebb_layer,))
    tapped = models.get_model(name, num_classes=10, hebb_layers=[names[0]])
    assert tapped.hebb_layers == (names[0],)


def test_resnet18_layer_names_in_forward_order():
    names = models.get_model("resnet18", num_classes=10).conv_layer_names()
    assert names[:6] == (
        "stem",
        "stage1_block0/conv1",
        "stage1_block0/conv2",
        "stage1_block1/conv1",
        "stage1_block1/conv2",
        "stage2_block0/conv1",
    )
    assert names[6:8] == ("stage2_block0/conv2", "stage2_block0/shortcut")
    assert len(names) == 20


def test_errors_are_one_line_value_errors():
    with pytest.raises(ValueError) as excinfo:
        models.get_model("resnet19", num_classes=10)
    _assert_one_line_value_error(excinfo, "'resnet19'", *models.MODEL_NAMES)
    with pytest.raises(ValueError) as excinfo:
        models.get_model("resnet18", num_classes=10, depth=3)
    _assert_one_line_value_error(excinfo, "'depth'", "stage_sizes", "width")
    with pytest.raises(ValueError) as excinfo:
        models.get_model("vgg11", num_classes=10, hebb_activation="mean")
    _assert_one_line_value_error(excinfo, "'mean'", "post", "pre", "maxpool")
    with pytest.raises(ValueError) as excinfo:
        models.get_model(
            "densenet121",
            num_classes=10,
            **TINY["densenet121"],
            hebb_layers=("stage9_block0/conv1",),
        )
    _assert_one_line_value_error(excinfo, "'stage9_block0/conv1'", "stem", "conv_layer_names")
    model = _tiny("resnet18")
    with pytest.raises(ValueError) as excinfo:
        models.validate_hebb_layers(model, ("stage2_block0_conv1",))
    _assert_one_line_value_error(excinfo, "'stage2_block0_conv1'", "stage1_block0/conv1")
    with pytest.raises(ValueError) as excinfo:
        models.get_model("resnet18", num_classes=10, hebb_layers="stem")
    _assert_one_line_value_error(excinfo, "'stem'")
    with pytest.raises(ValueError) as excinfo:
        models.collect_taps({}, ["stage2_block0/conv1"])
    _assert_one_line_value_error(excinfo, "'stage2_block0/conv1'", "hebb_layers")


def test_gradient_flows_to_exactly_the_sown_kernel():
    layer = "stage2_block0/conv1"
    model = _tiny("resnet18", hebb_layers=(layer,))
    x = _images(32)
    variables = _tiny_variables("resnet18")

    @jax.jit
    def grad_fn(params):
        def loss(p):
            _, state = model.apply(
                {"params": p, "batch_stats": variables["batch_stats"]},
                x,
                train=True,
                mutable=["batch_stats", "intermediates"],
            )
            _, kernel = models.collect_taps(state["intermediates"], [layer])[layer]
            return jnp.mean(kernel)

        return jax.grad(loss)(params)

    grads = grad_fn(variables["params"])
    flat = {
        "/".join(str(getattr(k, "key", k)) for k in path): np.asarray(g)
        for path, g in jax.tree_util.tree_leaves_with_path(grads)
    }
    target = f"{layer}/kernel"
    np.testing.assert_allclose(flat[target], 1.0 / flat[target].size, rtol=1e-6)
    assert all(not np.any(g) for key, g in flat.items() if key != target)


def test_taps_of_a_nested_backbone_and_bfloat16():
    layer = "stage2_block0/conv1"
    backbone = _tiny("resnet18", hebb_layers=(layer,), dtype="bfloat16")

    class Wrapper(nn.Module):
        backbone: nn.Module

        def __call__(self, x, train=False):
            return self.backbone(x, train=train)

    wrapper = Wrapper(backbone)
    x = _images(32)
    abstract = jax.eval_shape(wrapper.init, jax.random.key(0), x)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(abstract))
    tiny = _tiny_variables("resnet18")
    variables = {c: {"backbone": tiny[c]} for c in ("params", "batch_stats")}
    assert jax.tree.structure(variables) == jax.tree.structure(abstract)
    (logits, aux), state = jax.jit(
        lambda v, x: wrapper.apply(v, x, train=True, mutable=["batch_stats", "intermediates"])
    )(variables, x)
    assert logits.dtype == jnp.float32 and aux["embedding"].dtype == jnp.float32
    assert list(state["intermediates"]["backbone"]["stage2_block0"]["conv1"]) == [
        "activation",
        "kernel",
    ]
    act, kernel = models.collect_taps(state["intermediates"], [layer])[layer]
    assert act.dtype == jnp.bfloat16 and kernel.dtype == jnp.float32
    assert models.collect_taps(state["intermediates"]["backbone"]).keys() == {layer}


def test_depthwise_impl_choices_give_the_same_model():
    """A whole MobileNet-v2 (depthwise and stride-2 blocks) computes the same with either impl."""
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    outs = {}
    for impl in ("conv", "shifts"):
        net = models.get_model(
            "mobilenet_v2", num_classes=10, depthwise_impl=impl, **TINY["mobilenet_v2"]
        )
        variables = net.init(jax.random.key(1), x)
        outs[impl] = net.apply(variables, x, train=False)[0]
    np.testing.assert_allclose(outs["shifts"], outs["conv"], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError) as excinfo:
        models.get_model("mobilenet_v2", num_classes=10, depthwise_impl="fft")
    _assert_one_line_value_error(excinfo, "'fft'", "auto", "conv", "shifts")


@pytest.mark.parametrize("name", sorted(TINY))
def test_conv_input_barrier_changes_nothing_but_speed(name):
    """With ``conv_input_barrier`` on or off every backbone computes the same logits, batch
    statistics and parameter gradients, bit for bit."""
    x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
    labels = jnp.arange(4) % 3
    results = {}
    for barrier in ("on", "off"):
        net = _tiny(name, conv_input_barrier=barrier)
        variables = net.init(jax.random.key(1), x)

        def loss(params, net=net, variables=variables):
            (logits, _), updates = net.apply(
                {**variables, "params": params},
                x,
                train=True,
                mutable=["batch_stats"],
                rngs={"dropout": jax.random.key(2)},
            )
            ce = -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels])
            return ce, (logits, updates)

        grads, aux = jax.jit(jax.grad(loss, has_aux=True))(variables["params"])
        results[barrier] = (grads, aux)
    leaves_on = jax.tree.leaves(results["on"])
    leaves_off = jax.tree.leaves(results["off"])
    assert len(leaves_on) == len(leaves_off) > 0
    for a, b in zip(leaves_on, leaves_off, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError) as excinfo:
        _tiny(name, conv_input_barrier="yes")
    _assert_one_line_value_error(excinfo, "'yes'", "auto", "on", "off")


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_conv_input_barrier_keeps_forward_mode_autodiff(name):
    """Forward-mode autodiff (``jax.jvp``, ``jax.jacfwd``) runs through a backbone with the
    barrier on and agrees with the barrier off. The depthwise layers of MobileNet-v2 use
    ``depthwise_impl='conv'``: the ``'shifts'`` kernel gradient is reverse-mode only."""
    x = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
    jvps = {}
    for barrier in ("on", "off"):
        net = _tiny(name, conv_input_barrier=barrier, depthwise_impl="conv")
        variables = net.init(jax.random.key(1), x)

        def logits(params, net=net, variables=variables):
            return net.apply({**variables, "params": params}, x, train=False)[0]

        params = variables["params"]
        tangent = jax.tree.map(
            lambda p: jnp.cos(jnp.arange(p.size, dtype=p.dtype)).reshape(p.shape), params
        )
        jvps[barrier] = jax.jit(lambda p, v, f=logits: jax.jvp(f, (p,), (v,)))(params, tangent)
    assert float(jnp.abs(jvps["on"][1]).max()) > 0
    for a, b in zip(jvps["on"], jvps["off"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
