"""From a config to a :class:`Run`, checked before anything is compiled or written.

:func:`build_run` is the one place a training config is validated: every field with a fixed set of
values is in :data:`CHOICES` (each set declared once, by the module that implements it), numbers
and intervals are range-checked, then the data, the model and the mesh are built (no compilation)
and checked against each other. A problem is a one-line :class:`~nm_hebb_jax.errors.RunError`.

:func:`durations` turns every duration of the config (phases, warm-up, EWC refresh; epochs or
steps) into steps, and :func:`build_model` the ``model`` group into a backbone (the ``:smoke``
variant included); the trainer and :func:`nm_hebb_jax.load_run` use them and nothing else.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import jax
import jax.numpy as jnp

from nm_hebb_jax import losses
from nm_hebb_jax.config_base import data_config
from nm_hebb_jax.data import build_dataset
from nm_hebb_jax.data.build import SOURCES
from nm_hebb_jax.errors import RunError
from nm_hebb_jax.models import (
    HEBB_ACTIVATIONS,
    MODEL_NAMES,
    get_model,
    smoke_overrides,
    validate_hebb_layers,
)
from nm_hebb_jax.objectives import GATE_MODES
from nm_hebb_jax.train import methods as M
from nm_hebb_jax.train import sharding as S
from nm_hebb_jax.train.hypergradient import HYPER_G_R_MODES, PHI_OPTIMIZERS

#: ``model.dtype`` -> computation dtype (parameters stay float32).
DTYPES: dict[str, Any] = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
#: Values of ``donate_state`` (see :func:`nm_hebb_jax.train.loop.donates_state`).
DONATE_STATE: tuple[str, ...] = ("auto", "always", "never")

#: Every config field with a fixed set of values, and that set (declared where it is used).
CHOICES: dict[str, tuple[str, ...]] = {
    "method": M.METHODS,  # train/methods.py, METHOD_TERMS
    "model.name": MODEL_NAMES,  # models/__init__.py, the registry
    "model.dtype": tuple(DTYPES),
    "data.source": SOURCES,  # data/build.py
    "hebb.activation": HEBB_ACTIVATIONS,  # models/layers.py
    "hebb.stop_gradient": losses.STOP_GRADIENT_MODES,  # losses/hebbian.py
    "nm.gate_learning": GATE_MODES,  # objectives.py
    "nm.hyper_g_r": HYPER_G_R_MODES,  # train/hypergradient.py
    "nm.phi_optimizer": PHI_OPTIMIZERS,  # train/hypergradient.py
    "donate_state": DONATE_STATE,
}


@dataclasses.dataclass(frozen=True)
class Durations:
    """Every duration of a run, in steps.

    Attributes:
      steps_per_epoch: optimiser steps per epoch of the training data.
      phase_steps: steps of phase 1 and of phase 2.
      warmup_steps: phase 1's linear warm-up (phase 2 has none).
      ewc_refresh_steps: phase 1's online EWC refresh interval (at least 1).
    """

    steps_per_epoch: int
    phase_steps: tuple[int, int]
    warmup_steps: int
    ewc_refresh_steps: int


def durations(config, steps_per_epoch: int) -> Durations:
    """Resolves the config's durations: a phase's ``num_steps`` when ≥ 0, else ``round(epochs ×
    steps_per_epoch)``; ``optim.warmup_epochs`` and ``ewc.refresh_epochs`` likewise."""

    def steps(epochs: float) -> int:
        return int(round(epochs * steps_per_epoch))

    phases = tuple(
        int(p.num_steps) if p.num_steps >= 0 else steps(p.epochs)
        for p in (config.phase1, config.phase2)
    )
    return Durations(
        steps_per_epoch=steps_per_epoch,
        phase_steps=phases,
        warmup_steps=steps(config.optim.warmup_epochs),
        ewc_refresh_steps=max(steps(config.ewc.refresh_epochs), 1),
    )


def model_overrides(config) -> dict[str, Any]:
    """The backbone's width/depth fields: ``model.overrides`` over its tiny variant when
    ``model.smoke`` (configs' ``:smoke``); lists (from ``config.json``) become tuples."""

    def freeze(v):
        return tuple(freeze(x) for x in v) if isinstance(v, list | tuple) else v

    tiny = smoke_overrides(config.model.name) if config.model.get("smoke", False) else {}
    return {**tiny, **{k: freeze(v) for k, v in config.model.overrides.to_dict().items()}}


def build_model(config, num_classes: int):
    """The backbone of ``config.model`` with ``config.hebb.activation`` (no tap layers set)."""
    return get_model(
        config.model.name,
        num_classes=num_classes,
        hebb_activation=config.hebb.activation,
        dtype=DTYPES.get(config.model.dtype, jnp.float32),
        init_scheme=config.model.get("init_scheme", "fan_out"),
        **model_overrides(config),
    )


@dataclasses.dataclass
class Run:
    """Everything built from a config before training (no compilation)."""

    config: Any
    dataset: Any
    model: Any
    num_classes: int
    hebb_layers: tuple[str, ...]
    durations: Durations
    mesh: Any

    @property
    def steps(self) -> tuple[int, int]:
        return self.durations.phase_steps

    @property
    def total_steps(self) -> int:
        return sum(self.steps)


def check_choices(config) -> None:
    """One-line RunError for the first field of :data:`CHOICES` whose value is not in its set."""
    for field, choices in CHOICES.items():
        group, _, name = field.rpartition(".")
        value = (config[group] if group else config).get(name)
        if value not in choices:
            raise RunError(
                f"{field}={value!r} is not supported; set --config.{field} to one of "
                f"{', '.join(map(repr, choices))}"
            )


def check_numbers(config) -> None:
    """One-line RunError for settings that would otherwise fail (or silently diverge) only after
    compilation: learning rates, durations, intervals, EWC sizes, the batch, the gate's EMA."""

    def number(name: str, value, *, minimum: float = 0.0) -> None:
        if not math.isfinite(float(value)) or float(value) < minimum:
            raise RunError(f"{name}={value!r} must be a finite number >= {minimum:g}")

    def count(name: str, value) -> None:
        if int(value) < 1:
            raise RunError(f"{name}={value} must be a positive integer")

    if config.batch_size <= 0:
        raise RunError(f"batch_size must be positive, got {config.batch_size}")
    for name in ("base_lr", "warmup_epochs", "momentum", "weight_decay", "grad_clip"):
        number(f"optim.{name}", config.optim[name])
    if config.optim.base_lr == 0:
        raise RunError(
            "optim.base_lr=0 trains nothing (every update is zero): set a positive "
            "--config.optim.base_lr (0.1 at batch 128 is the default)"
        )
    number("phase2.lr_factor", config.phase2.lr_factor)
    number("ewc.refresh_epochs", config.ewc.refresh_epochs)
    for phase in ("phase1", "phase2"):
        if config[phase].num_steps < -1:
            raise RunError(
                f"{phase}.num_steps={config[phase].num_steps} must be >= 0, or -1 to derive it "
                f"from {phase}.epochs"
            )
        if config[phase].num_steps == -1:
            number(f"{phase}.epochs", config[phase].epochs)
    for group, name in (
        ("eval", "batch_size"),
        ("log", "every_steps"),
        ("log", "eval_every_steps"),
        ("ckpt", "every_steps"),
        ("ewc", "fisher_examples"),
        ("ewc", "chunk_size"),
    ):
        count(f"{group}.{name}", config[group][name])
    if not 0.0 <= config.nm.hyper_norm_decay < 1.0:
        raise RunError(f"nm.hyper_norm_decay={config.nm.hyper_norm_decay} must be in [0, 1)")
    k = config.phase2.k_per_class
    terms = M.method_terms(config, 2)
    if config.phase2.balanced and ("pair" in terms or "supcon" in terms):
        if not 1 <= k <= config.batch_size:
            raise RunError(
                f"phase2.k_per_class={k} must be in [1, batch_size={config.batch_size}] for the "
                "class-balanced (P×K) batches of phase 2"
            )


def check_meaningful(config, dataset, steps: tuple[int, int]) -> None:
    """Refuses a run that would finish without meaning what was asked: nothing to train, a phase
    with a zero learning rate, a training split with a single class."""
    if sum(steps) == 0 and not config.init_from:
        raise RunError(
            "phase1 and phase2 both have 0 steps: nothing would be trained; set "
            "--config.phase1.num_steps (or phase1.epochs) > 0 (0 steps in both phases is only "
            "for init_from: a run that evaluates another run's parameters)"
        )
    if steps[1] > 0 and config.phase2.lr_factor == 0:
        raise RunError(
            f"phase2.lr_factor=0 makes the {steps[1]} steps of phase 2 train nothing: set it "
            "> 0, or --config.phase2.num_steps=0 to skip phase 2"
        )
    present = dataset.train_classes
    if len(present) < 2:
        where = f" ({config.data.path})" if config.data.get("path") else ""
        labels = ", ".join(map(str, present.tolist()))
        raise RunError(
            f"the training split of {config.data.name}{where} has examples of {len(present)} "
            f"class only (label {labels}) of the {dataset.num_classes} it declares: a classifier "
            "learns nothing from it; check the labels (data.label_key, the file)"
        )


def check_mesh(config, mesh) -> None:
    """The global batches split evenly over the mesh's devices and processes."""
    n = mesh.devices.size * jax.process_count()
    if config.eval.batch_size % n:
        raise RunError(
            f"eval.batch_size {config.eval.batch_size} is not divisible by the {mesh.devices.size} "
            f"devices ({jax.process_count()} processes); set --config.eval.batch_size to a "
            f"multiple of {n}"
        )
    try:
        S.check_batch_size(config.batch_size, mesh)
    except ValueError as e:
        raise RunError(str(e)) from e


def build_run(config, *, mesh=None) -> Run:
    """Validates the config and builds data, model and mesh (one-line RunError on bad input).

    Nothing is compiled and nothing is written: a RunError leaves the workdir untouched.
    """
    check_choices(config)
    check_numbers(config)
    mesh = mesh or S.make_mesh()
    check_mesh(config, mesh)
    try:
        dataset = build_dataset(
            data_config(config),
            seed=config.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
        num_classes = int(config.data.num_classes or dataset.num_classes)
        model = build_model(config, num_classes)
        hebb_layers = tuple(config.hebb.layers) or (model.default_hebb_layer,)
        validate_hebb_layers(model, hebb_layers)
    except (ValueError, KeyError, FileNotFoundError) as e:  # the data's and the model's checks
        raise RunError(str(e).strip().splitlines()[0] if str(e).strip() else repr(e)) from e
    if config.batch_size > dataset.train_size:
        raise RunError(
            f"batch_size={config.batch_size} is larger than the {dataset.train_size} training "
            f"examples of {config.data.name}: lower --config.batch_size"
        )
    if config.init_from and not os.path.isdir(os.path.expanduser(config.init_from)):
        raise RunError(
            f"init_from {config.init_from!r} does not exist; pass a workdir that holds a checkpoint"
        )
    spe = dataset.steps_per_epoch(config.batch_size)
    resolved = durations(config, spe)
    check_meaningful(config, dataset, resolved.phase_steps)
    return Run(config, dataset, model, num_classes, hebb_layers, resolved, mesh)
