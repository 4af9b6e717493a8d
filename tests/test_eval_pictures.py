"""Top-activating patches (receptive fields, top-k, crops, channel choice) and the curve panels."""

import types

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from nm_hebb_jax.eval import patches as P
from nm_hebb_jax.eval import plots
from nm_hebb_jax.evaluate import _phase_starts


def test_receptive_field_of_stack_by_hand():
    # conv 5x5 (VALID) -> pool 2 -> conv 3x3 -> pool 2 -> conv 3x3: Miconi's Hebbian CNN.
    assert P.receptive_field_of_stack([(5, 1, 0)]) == P.ReceptiveField((5, 5), (1, 1), (0, 0))
    layer3 = P.receptive_field_of_stack([(5, 1, 0), (2, 2, 0), (3, 1, 0), (2, 2, 0), (3, 1, 0)])
    assert layer3 == P.ReceptiveField((20, 20), (4, 4), (0, 0))
    # A padded 3x3 conv starts one pixel outside the image.
    assert P.receptive_field_of_stack([(3, 1, 1), (3, 2, 1)]).offset == (-2, -2)


class _Stack(nn.Module):
    """conv 3x3 SAME -> conv 3x3 stride 2 SAME -> conv 3x3 SAME, linear."""

    @nn.compact
    def __call__(self, x):
        x = nn.Conv(4, (3, 3), padding="SAME")(x)
        x = nn.Conv(4, (3, 3), strides=(2, 2), padding="SAME")(x)
        return nn.Conv(4, (3, 3), padding="SAME")(x)


def test_receptive_field_from_gradient_matches_the_geometry():
    model = _Stack()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))
    field = P.receptive_field_from_gradient(lambda x: model.apply(variables, x), (32, 32, 1))
    # Sizes 3, 3 + 2, 5 + 2·2 = 9, stride 2. Flax's SAME with stride 2 on an even size pads
    # (0, 1), so position (0, 0) starts at −1 (first conv) − 0 − 1·2 (last conv) = −3.
    assert field == P.ReceptiveField((9, 9), (2, 2), (-3, -3))
    # The gradient of a position is zero exactly outside its field.
    r, c = 5, 9
    grad = jax.grad(lambda x: jnp.sum(model.apply(variables, x)[0, r, c]))(
        jax.random.normal(jax.random.key(1), (1, 32, 32, 1))
    )
    support = np.argwhere(np.abs(np.asarray(grad)[0, ..., 0]) > 0)
    top, left = field.top_left(r, c)
    assert support.min(axis=0).tolist() == [top, left]
    assert support.max(axis=0).tolist() == [top + 8, left + 8]


def test_top_activations_one_per_image_ties_to_lower_index_streaming():
    rng = np.random.default_rng(0)
    act = rng.normal(size=(10, 3, 4, 2))
    act[6, 1, 2, 0] = 50.0  # image 6 wins channel 0 at (1, 2) ...
    act[6, 2, 3, 0] = 40.0  # ... and does not take a second place
    act[[2, 7], 0, 0, 1] = 9.0  # a tie on channel 1: image 2 first
    one = P.TopActivations(k=3)
    one.update(act)
    streamed = P.TopActivations(k=3)
    for lo, hi in ((0, 4), (4, 7), (7, 10)):
        streamed.update(act[lo:hi])
    for t in (one, streamed):
        assert t.index[0, 0] == 6 and t.position[0, 0].tolist() == [1, 2]
        assert 6 not in t.index[0, 1:]
        assert t.index[1, :2].tolist() == [2, 7] and t.values[1, 0] == 9.0
        per_image_max = act.reshape(10, -1, 2).max(axis=1)
        expected = np.sort(per_image_max, axis=0)[::-1][:3].T
        np.testing.assert_allclose(t.values, expected)
    np.testing.assert_array_equal(one.index, streamed.index)


def test_crop_patches_reads_the_field_and_pads_outside():
    images = np.arange(2 * 6 * 6 * 3, dtype=np.uint8).reshape(2, 6, 6, 3)
    field = P.ReceptiveField((3, 3), (2, 2), (-1, -1))
    out = P.crop_patches(
        images, np.array([[1, 0, -1]]), np.array([[[1, 1], [0, 0], [0, 0]]]), field, pad_value=7
    )
    assert out.shape == (1, 3, 3, 3, 3)
    np.testing.assert_array_equal(out[0, 0], images[1, 1:4, 1:4])  # top-left (1, 1)
    np.testing.assert_array_equal(out[0, 1, 1:, 1:], images[0, 0:2, 0:2])  # cut by the corner
    assert (out[0, 1, 0] == 7).all() and (out[0, 1, :, 0] == 7).all()
    assert (out[0, 2] == 7).all()  # no image


def test_select_channels_most_selective_first_never_dead():
    labels = np.array([0, 0, 1, 1, 2, 2])
    act = np.zeros((6, 2, 2, 4), np.float32)
    act[labels == 1, :, :, 0] = 3.0  # only class 1: selectivity 1
    act[:, :, :, 1] = 1.0  # every class alike: selectivity 0
    act[:, 0, 0, 2] = -1.0  # negative only: dead after rectification
    act[:, :, :, 3] = np.where(labels == 0, 2.0, 1.0)[:, None, None]  # (2 − 1) / (2 + 1)
    chosen = P.select_channels([act[:4], act[4:]], labels, 3, rows=5, k=2)
    assert chosen.channels.tolist() == [0, 3, 1] and chosen.num_channels == 4
    np.testing.assert_allclose(chosen.selectivity, [1.0, 1 / 3, 0.0], atol=1e-6)
    assert sorted(chosen.index[0].tolist()) == [2, 3]  # the two class-1 images


def test_plot_top_patches(tmp_path):
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 256, (3, 5, 9, 9, 3), dtype=np.uint8)
    out = plots.plot_top_patches(
        crops,
        tmp_path / "p.png",
        row_labels=["a", "b", "c"],
        patch_classes=np.array([[0, 1, 2, 0, -1]] * 3),
        class_names=["cat", "dog", "ship"],
        note="a long note " * 12,
    )
    with Image.open(out) as im:
        assert im.format == "PNG" and min(im.size) > 200
    with pytest.raises(ValueError):
        plots.plot_top_patches(crops, tmp_path / "q.png", row_labels=["a"])


def test_curve_panels_and_hypergradient_per_update(tmp_path):
    assert plots._panel_of("train/terms/hebb") == "terms_raw"
    assert plots._panel_of("train/terms/hebb_weighted") == "terms_weighted"
    assert plots._panel_of("train/nm/gate_at_ce=0.5") == "gate"
    assert plots._panel_of("val/top1") == "accuracy" and plots._panel_of("val/loss") == "loss"
    assert plots._panel_of("train/steps_per_s") is None  # throughput is not a training curve
    assert plots._panel_of("val/nmi") == "nmi"
    rows = [
        {"step": 10, "train/hypergrad": 2e-6, "train/hyper_applied": 0.2},
        {"step": 20, "train/hypergrad": 0.0, "train/hyper_applied": 0.0},
        {"step": 30, "train/hypergrad": -3e-6, "train/hyper_applied": 0.1},
    ]
    series = {"train/hypergrad": ([10, 20, 30], [2e-6, 0.0, -3e-6])}
    plots._per_update(series, rows)
    assert series["train/hypergrad"][0] == [10, 30]  # the window without an update is dropped
    np.testing.assert_allclose(series["train/hypergrad"][1], [1e-5, -3e-5])
    records = [
        {
            "step": s,
            "train/loss": 2.0 / s,
            "train/terms/ewc": 0.0 if s < 30 else 1e-6 * s,
            "train/terms/ce": 2.0 / s,
            "train/steps_per_s": 5.0,
            **r,
        }
        for s, r in zip((10, 20, 30), rows, strict=True)
    ]
    out = plots.plot_training_curves(records, tmp_path / "c.png", phase_starts=[20])
    with Image.open(out) as im:
        assert im.format == "PNG" and min(im.size) > 200


def test_phase_starts_follow_the_trainers_step_counts():
    config = ml_collections.ConfigDict(
        {
            "batch_size": 64,
            "phase1": {"num_steps": 240, "epochs": 1.0},
            "phase2": {"num_steps": 80, "epochs": 1.0},
        }
    )
    dataset = types.SimpleNamespace(steps_per_epoch=lambda batch_size: 1000 // batch_size + 1)
    run = types.SimpleNamespace(config=config, dataset=dataset)
    assert _phase_starts(run) == [240]
    config.phase1.num_steps = -1
    config.phase1.epochs = 2.5  # 2.5 epochs of ceil(1000 / 64) = 16 steps
    assert _phase_starts(run) == [40]
    config.phase2.num_steps = 0  # no phase 2: nothing to mark
    assert _phase_starts(run) == []


def test_filter_grid_grey_for_greyscale_inputs(tmp_path):
    rng = np.random.default_rng(0)
    grey = np.repeat(rng.integers(0, 256, (5, 8, 8, 1), dtype=np.uint8), 3, axis=-1)
    colour = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    assert plots.is_greyscale(grey) and not plots.is_greyscale(colour)
    kernel = rng.normal(size=(3, 3, 3, 4))
    rgb = plots.plot_filter_grid(kernel, tmp_path / "rgb.png")
    mono = plots.plot_filter_grid(kernel, tmp_path / "grey.png", color="grey")
    with Image.open(rgb) as a, Image.open(mono) as b:
        pixels_a, pixels_b = np.asarray(a.convert("RGB")), np.asarray(b.convert("RGB"))
    # The grey grid's filter cells have equal channels; the RGB grid's do not.
    assert (pixels_a[..., 0] != pixels_a[..., 1]).mean() > 0.05
    cells = (pixels_b[..., 0] == pixels_b[..., 1]) & (pixels_b[..., 1] == pixels_b[..., 2])
    assert cells.mean() > 0.5
    with pytest.raises(ValueError, match="color"):
        plots.plot_filter_grid(kernel, tmp_path / "x.png", color="sepia")
