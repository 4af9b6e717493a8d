r"""CIFAR-10, ResNet-18, NM-Hebb (phase 1: CE + gated Hebbian + EWC; phase 2: pairwise metric).

On a GPU/TPU VM with CIFAR-10 prepared by TFDS (``tfds build cifar10``):

  python main.py --config=configs/cifar10.py --workdir=runs/cifar10_nm_hebb

From the official python version converted to the project's npz format (docs/data.md; a
stratified, seeded 5,000-image validation split is carved from train, ``--config.eval.split=test``
evaluates on the test split instead):

  python -m nm_hebb_jax.data.convert cifar-10-python.tar.gz --out data/cifar10.npz
  python main.py --config=configs/cifar10.py --workdir=runs/c10 \
      --config.data.source=npz --config.data.path=data/cifar10.npz

Backbone and method are fields (``--config.model.name=vgg11 --config.method=baseline``) or config
arguments (``--config=configs/cifar10.py:vgg11,baseline``); ``:smoke`` runs a tiny model for a few
steps on the bundled digits data (CI).

What to expect: 30 + 10 epochs take roughly 1 hour on one modern GPU for ResNet-18. No accuracy for
this config has been measured in this repository yet; the paper reports +2.0 to +10.0 pp Top-1 over
its baselines on CIFAR-10 (test split). Compare against ``--config.method=baseline`` (same
schedule and epochs).
"""

from nm_hebb_jax.config_args import apply_arg
from nm_hebb_jax.config_base import get_base_config


def get_config(arg=None):
    c = get_base_config()
    c.data.name = "cifar10"
    c.data.source = "tfds"
    c.data.val_size = 5000
    c.data.image_size = 32
    return apply_arg(c, arg)
