"""The two-phase trainer on the smoke config: compile once, resume, devices, bad input, NaN."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nm_hebb_jax.losses import cross_entropy
from nm_hebb_jax.models import MODEL_NAMES, get_model, smoke_overrides
from nm_hebb_jax.objectives import TERM_NAMES
from nm_hebb_jax.train import methods as M
from nm_hebb_jax.train import sharding as S
from nm_hebb_jax.train.checkpoint import Checkpointer
from nm_hebb_jax.train.loop import (
    NonFiniteError,
    Preempted,
    RunError,
    Trainer,
    build_run,
    train_and_evaluate,
)
from nm_hebb_jax.train.methods import METHODS
from tests.util import ROOT, assert_trees_close, load_config, restore_params

CONFIGS = ("cifar10", "cifar100", "tinyimagenet", "quickstart")


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_loads_locks_and_documents_its_command(name):
    for arg in (None, "smoke"):
        c = load_config(name, arg)
        c.lock()
        with pytest.raises((AttributeError, KeyError)):
            c.not_a_field = 1
        assert c.method in METHODS
    with open(os.path.join(ROOT, "configs", f"{name}.py")) as f:
        doc = f.read()
    assert f"python main.py --config=configs/{name}.py" in doc
    with pytest.raises(ValueError, match="unknown config argument"):
        load_config(name, "smoke,nonsense")


def _parse_cli(*args):
    """The config ``main.py`` would train with these flags (parsed by absl, locked)."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["main.py", *args]
    fv = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=fv, sys_argv=argv)
    fv(argv)
    return fv.config


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_smoke_then_a_model_name_override_builds_that_backbones_tiny_variant(name):
    """``--config=configs/cifar10.py:smoke --config.model.name=X`` trains X's tiny variant, as
    ``:smoke,X`` does (issue 22: the tiny ResNet's overrides used to stay and were refused)."""
    path = os.path.join(ROOT, "configs", "cifar10.py")
    by_field = _parse_cli(f"--config={path}:smoke", f"--config.model.name={name}")
    by_arg = _parse_cli(f"--config={path}:{name},smoke")
    mesh = S.make_mesh(jax.devices()[:1])
    models = [build_run(c, mesh=mesh).model for c in (by_field, by_arg)]
    assert models[0] == models[1]
    assert type(models[0]) is type(get_model(name, num_classes=10))
    for field, value in smoke_overrides(name).items():
        assert getattr(models[0], field) == value, field
    # an explicit override still applies on top of the tiny variant
    c = _parse_cli(f"--config={path}:smoke", "--config.model.dtype=bfloat16")
    assert build_run(c, mesh=mesh).model.dtype == jnp.bfloat16


# README's methods table, written out independently of train/methods.py: each phase's terms
# (CE always), the terms the gate scales (None = no gate; 'fixed' = ν ≡ nm.fixed_gate) and
# whether phase 2 runs on P×K class-balanced batches.
P1_NM_HEBB = ({"ce", "hebb", "ewc"}, ("hebb", "ewc"))
P2_NM_HEBB = ({"ce", "pair", "ewc"}, None)
EXPECTED_METHODS = {
    "nm_hebb": (P1_NM_HEBB, P2_NM_HEBB),
    "baseline": (({"ce"}, None), ({"ce"}, None)),
    "label_smoothing": (({"ce"}, None), ({"ce"}, None)),
    "center_loss": (({"ce", "center"}, None), ({"ce", "center"}, None)),
    "supcon": (({"ce", "supcon"}, None), ({"ce", "supcon"}, None)),
    "phase1_only": (P1_NM_HEBB, ({"ce"}, None)),
    "phase2_only": (({"ce"}, None), P2_NM_HEBB),
    "no_gate": (({"ce", "hebb", "ewc"}, "fixed"), P2_NM_HEBB),
    "hebb_only": (({"ce", "hebb"}, ("hebb",)), ({"ce", "pair"}, None)),
    "ewc_only": (({"ce", "ewc"}, ("ewc",)), P2_NM_HEBB),
}


@pytest.mark.parametrize("method", METHODS)
def test_every_method_builds_the_objectives_of_the_methods_table(method):
    """phase_plan's objectives have the README table's terms, gate and batches in both phases."""
    c = load_config("cifar10", f"smoke,{method}")
    model = build_run(c, mesh=S.make_mesh(jax.devices()[:1])).model
    for phase, (terms, gate) in zip((1, 2), EXPECTED_METHODS[method], strict=True):
        plan = M.phase_plan(c, model, phase, (model.default_hebb_layer,))
        obj = plan.objective
        assert {t.name for t in obj.terms} == terms, (phase, obj.terms)
        if gate is None:
            assert obj.gate is None and plan.gate_mode is None
        elif gate == "fixed":
            assert obj.gate.mode == plan.gate_mode == "fixed"
        else:
            assert set(obj.gate.targets) & terms == set(gate)  # the gated terms present
            assert obj.gate.mode == plan.gate_mode == c.nm.gate_learning
        assert plan.uses_ewc == ("ewc" in terms)
        assert plan.balanced == (phase == 2 and bool(terms & {"pair", "supcon"}))
        # the CE term: label smoothing for that method only, λ_ce2 with phase 2's metric loss
        ce = next(t for t in obj.terms if t.name == "ce")
        logits, labels = jnp.array([[2.0, 0.0, -1.0]]), jnp.array([0])
        alpha = c.comparators.label_smoothing if method == "label_smoothing" else 0.0
        expect = cross_entropy(logits, labels, label_smoothing=alpha)[0]
        np.testing.assert_allclose(ce.fn(None, None, {"label": labels}, {"logits": logits}), expect)
        assert ce.weight == (c.phase2.ce_weight if phase == 2 and "pair" in terms else 1.0)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_traces_both_phases_and_logs_the_same_term_keys(method):
    """Each method's train steps trace (eval_shape: no compilation) and log every term of every
    method, raw and weighted (0.0 when unused), so the curves of two methods can be overlaid."""
    c = load_config("cifar10", f"smoke,{method}")
    run = build_run(c, mesh=S.make_mesh(jax.devices()[:1]))
    trainer = Trainer(run, "/nonexistent-not-written")
    params, bs = trainer.abstract_variables()
    for phase in (1, 2):
        plan, tx, step_for, start, n = trainer.phase_setup(phase)
        state = trainer.abstract_state(tx, plan)
        batch = {
            "image": jax.ShapeDtypeStruct((c.batch_size, 32, 32, 3), np.float32),
            "label": jax.ShapeDtypeStruct((c.batch_size,), np.int32),
        }
        _, metrics = jax.eval_shape(step_for(start), state["train"], state["ewc"], batch)
        # Plain and hypergradient variants log the same keys.
        _, plain = jax.eval_shape(step_for(start + 1), state["train"], state["ewc"], batch)
        assert set(plain) == set(metrics)
        terms = {k.split("/", 1)[1] for k in metrics if k.startswith("terms/")}
        assert terms == {n + s for n in TERM_NAMES for s in ("", "_weighted")}
        assert ("gate" in metrics) == (plan.gate_mode is not None)
        for key in ("loss", "lr", "grad_norm", "top1"):
            assert key in metrics


def test_model_init_scheme_reaches_the_model_and_bad_values_are_refused():
    c = load_config("cifar10", "smoke,vgg11")
    c.model.init_scheme = "torch_default"
    run = build_run(c, mesh=S.make_mesh(jax.devices()[:1]))
    assert run.model.init_scheme == "torch_default"
    c.model.init_scheme = "xavier"
    with pytest.raises(RunError, match="init_scheme"):
        build_run(c, mesh=S.make_mesh(jax.devices()[:1]))


@pytest.mark.slow
def test_smoke_run_compiles_once_per_phase_and_logs_everything(smoke_run):
    config, workdir, summary = smoke_run
    assert len(jax.devices()) == 4
    # One compilation per step function: phase 1 has a plain and a hypergradient variant.
    assert summary["compilations"] == {"phase1": 1, "phase1_hyper": 1, "phase2": 1}
    assert summary["final_step"] == config.phase1.num_steps + config.phase2.num_steps
    records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    keys = set().union(*records)
    for k in (
        "train/loss",
        "train/top1",
        "train/lr",
        "train/grad_norm",
        "train/param_norm",
        "train/update_norm",
        "train/terms/supcon",  # a term NM-Hebb does not use: logged as 0.0
        "train/gate",
        "train/gate_input",
        "train/terms/ce",
        "train/terms/hebb",
        "train/terms/hebb_weighted",
        "train/terms/ewc_weighted",
        "train/terms/pair",
        "train/hypergrad",
        "val/top1",
        "val/loss",
    ):
        assert k in keys, k
    assert all(r["train/terms/supcon"] == 0.0 for r in records if "train/terms/supcon" in r)
    # The hypergradient was applied on some phase-1 steps (nm.hyper_every = 3 in smoke).
    assert any(r.get("train/hyper_applied", 0) > 0 for r in records)
    assert os.listdir(os.path.join(workdir, "tb"))
    assert os.path.exists(os.path.join(workdir, "config.json"))
    prov = json.loads(open(os.path.join(workdir, "provenance.jsonl")).readline())
    assert prov["seed"] == config.seed and prov["versions"]["jax"] == jax.__version__
    _, meta = restore_params(workdir)
    assert meta["finished"] and meta["phase"] == 2
    assert Checkpointer(workdir, read_only=True).best_step() is not None


@pytest.mark.slow
def test_resume_after_stop_equals_uninterrupted(smoke_run, tmp_path):
    config, workdir, _ = smoke_run
    final, _ = restore_params(workdir)
    other = str(tmp_path / "resumed")
    for stop in (3, 8):  # once in phase 1, once in phase 2
        c = load_config("quickstart")
        c.debug.sigterm_at_step = stop
        with pytest.raises(Preempted):
            train_and_evaluate(c, other)
    summary = train_and_evaluate(load_config("quickstart"), other)
    assert summary["final_step"] == 10
    resumed, _ = restore_params(other)
    assert_trees_close(resumed, final)


def _run_steps(num_devices: int, steps_per_phase=(3, 3)):
    """Runs a few steps of both phases (EWC Fisher included) on a mesh of ``num_devices``."""
    c = load_config("quickstart")
    mesh = S.make_mesh(jax.devices()[:num_devices])
    run = build_run(c, mesh=mesh)
    trainer = Trainer(run, "/nonexistent-not-written")
    params, batch_stats = trainer.init_variables()
    out = []
    for phase in (1, 2):
        plan, tx, step_for, start, _ = trainer.phase_setup(phase)
        state = trainer.make_state(params, batch_stats, start, tx, plan)
        ewc = trainer.compute_ewc(state, refresh_index=phase)
        for s in range(start, start + steps_per_phase[phase - 1]):
            batch = run.dataset.train_batch(s, batch_size=c.batch_size, balanced=plan.balanced)
            state, _ = step_for(s)(state, ewc, S.global_batch(batch, mesh))
        params, batch_stats = state.params, state.batch_stats
        out.append(jax.device_get((state.params, ewc["fisher"])))
    return out


@pytest.mark.slow
def test_one_and_four_devices_give_the_same_parameters():
    """Same steps on 1 and on 4 simulated devices: equal up to float reassociation.

    Parameters are O(0.1-1); summation order differs between the meshes, and phase-2 gradients
    (sums over all pairs of the global batch) amplify that to ~1e-5 absolute on near-zero
    BatchNorm biases. A sharding bug changes them by more (measured: computing the pairs per
    device moves phase-2 parameters by 3e-4 after 3 steps, 6x this tolerance).
    """
    one, four = _run_steps(1), _run_steps(4)
    for a, b in zip(one, four, strict=True):
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
            x, y = np.asarray(x), np.asarray(y)
            np.testing.assert_allclose(x, y, rtol=1e-3, atol=5e-5)


@pytest.mark.slow
def test_finished_workdir_and_other_model_are_refused_untouched(smoke_run):
    _, workdir, _ = smoke_run
    before = {p: os.path.getmtime(os.path.join(workdir, p)) for p in os.listdir(workdir)}
    with pytest.raises(RunError, match="finished run"):
        train_and_evaluate(load_config("quickstart"), workdir)
    c = load_config("quickstart", "vgg11,smoke")
    with pytest.raises(RunError, match="another model"):
        train_and_evaluate(c, workdir)
    after = {p: os.path.getmtime(os.path.join(workdir, p)) for p in os.listdir(workdir)}
    assert before == after


def test_bad_input_gives_one_line_errors(tmp_path):
    cases = []
    c = load_config("quickstart")
    c.model.name = "resnet1000"
    cases.append((c, "resnet1000"))
    c = load_config("quickstart")
    c.method = "magic"
    cases.append((c, "magic"))
    c = load_config("quickstart")
    c.data.source = "npz"
    c.data.path = str(tmp_path / "no.npz")
    cases.append((c, "no.npz"))
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"this is not an npz file")
    c = load_config("quickstart")
    c.data.source = "npz"
    c.data.path = str(bad)
    cases.append((c, "bad.npz"))
    c = load_config("quickstart")
    c.data.source, c.data.name = "tfds", "imagenet9"
    cases.append((c, "imagenet9"))
    c = load_config("quickstart")
    c.hebb.layers = ("stage9/conv7",)
    cases.append((c, "stage9"))
    c = load_config("quickstart")
    c.batch_size = 30
    cases.append((c, "batch_size"))
    c = load_config("quickstart")
    c.init_from = str(tmp_path / "missing")
    cases.append((c, "init_from"))
    c = load_config("quickstart")
    c.nm.hyper_g_r = "sometimes"
    cases.append((c, "nm.hyper_g_r='sometimes'"))
    c = load_config("quickstart")
    c.donate_state = "yes"
    cases.append((c, "donate_state='yes'"))
    for config, needle in cases:
        workdir = tmp_path / f"w{len(os.listdir(tmp_path))}"
        with pytest.raises(RunError) as e:
            train_and_evaluate(config, str(workdir))
        msg = str(e.value)
        assert needle in msg and "\n" not in msg, msg
        assert not workdir.exists()


def test_donated_state_trains_like_the_cpu_default(smoke_run, tmp_path):
    """``donate_state='always'`` (what GPU/TPU runs get under 'auto') on the CPU: no buffer of
    the EWC state may be the state's own (XLA rejects, or crashes on, a donated buffer passed
    twice; ``init_ewc_state`` once aliased the anchor), and the run matches the undonated one."""
    _, reference, summary = smoke_run
    c = load_config("quickstart")
    c.donate_state = "always"
    donated = train_and_evaluate(c, str(tmp_path / "donated"))
    assert donated["final_step"] == summary["final_step"]
    params, _ = restore_params(str(tmp_path / "donated"))
    expected, _ = restore_params(reference)
    assert_trees_close(params, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_init_from_starts_from_another_runs_parameters(smoke_run, tmp_path):
    _, source, _ = smoke_run
    src_params, _ = restore_params(source)
    c = load_config("quickstart", "smoke,phase2_only")
    c.init_from = source
    c.phase1.num_steps = 0
    c.phase2.num_steps = 0
    summary = train_and_evaluate(c, str(tmp_path / "ft"))
    assert summary["final_step"] == 0
    params, meta = restore_params(str(tmp_path / "ft"))
    assert meta["finished"]
    assert_trees_close(params["backbone"], src_params["backbone"], rtol=0, atol=0)
    other = load_config("quickstart", "smoke,vgg11")
    other.init_from = source
    with pytest.raises(RunError, match="another model"):
        train_and_evaluate(other, str(tmp_path / "bad"))
    assert not (tmp_path / "bad").exists()


@pytest.mark.slow
def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    c = load_config("quickstart")
    c.debug.nan_at_step = 7
    workdir = str(tmp_path / "nan")
    with pytest.raises(NonFiniteError, match="non-finite loss at step 7") as e:
        train_and_evaluate(c, workdir)
    assert "\n" not in str(e.value)
    params, meta = restore_params(workdir)
    assert meta["step"] <= 7
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(params))
