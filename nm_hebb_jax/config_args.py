"""Parsing of a config file's argument (``--config=configs/cifar10.py:smoke,vgg11``)."""

from __future__ import annotations

from nm_hebb_jax.config_base import METHODS, apply_smoke

MODEL_NAMES = ("resnet18", "vgg11", "mobilenet_v2", "efficientnet_v2_s", "densenet121")


def apply_arg(config, arg: str | None):
    """Applies comma-separated tokens: ``smoke``, a backbone name, a method name.

    The backbone and method are applied first, ``smoke`` last (it shrinks the chosen backbone).
    Unknown tokens raise a one-line ValueError listing what is accepted.
    """
    tokens = [t.strip() for t in (arg or "").split(",") if t.strip()]
    smoke = False
    for t in tokens:
        if t == "smoke":
            smoke = True
        elif t in MODEL_NAMES:
            config.model.name = t
        elif t in METHODS:
            config.method = t
        else:
            raise ValueError(
                f"unknown config argument {t!r}; use 'smoke', a backbone "
                f"({', '.join(MODEL_NAMES)}) or a method ({', '.join(METHODS)})"
            )
    if smoke:
        apply_smoke(config)
    return config
