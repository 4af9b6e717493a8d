"""Parsing of a config file's argument (``--config=configs/cifar10.py:smoke,vgg11``)."""

from __future__ import annotations

from nm_hebb_jax.config_base import apply_smoke
from nm_hebb_jax.errors import ConfigError
from nm_hebb_jax.models import MODEL_NAMES
from nm_hebb_jax.train.methods import METHODS


def apply_arg(config, arg: str | None):
    """Applies comma-separated tokens: ``smoke``, a backbone name, a method name.

    The order does not matter: ``smoke`` makes the model the tiny variant of whichever backbone
    the run ends up with (also one set later by ``--config.model.name``). Unknown tokens raise a
    one-line :class:`~nm_hebb_jax.errors.ConfigError` listing what is accepted.
    """
    tokens = [t.strip() for t in (arg or "").split(",") if t.strip()]
    for t in tokens:
        if t == "smoke":
            apply_smoke(config)
        elif t in MODEL_NAMES:
            config.model.name = t
        elif t in METHODS:
            config.method = t
        else:
            raise ConfigError(
                f"unknown config argument {t!r}; use 'smoke', a backbone "
                f"({', '.join(MODEL_NAMES)}) or a method ({', '.join(METHODS)})"
            )
    return config
