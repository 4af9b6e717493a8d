r"""CIFAR-100, ResNet-18, NM-Hebb.

TFDS (prepared):  python main.py --config=configs/cifar100.py --workdir=runs/cifar100_nm_hebb
npz (docs/data.md; 3,000 of the 50,000 training images carved for validation; the 20 coarse
classes with ``--config.data.label_key='y_{split}_coarse'``):

  python -m nm_hebb_jax.data.convert cifar-100-python.tar.gz --out data/cifar100.npz
  python main.py --config=configs/cifar100.py --workdir=runs/c100 \
      --config.data.source=npz --config.data.path=data/cifar100.npz

``:smoke`` runs a tiny model for a few steps on the bundled digits data (CI).

What to expect: no accuracy for this config has been measured in this repository yet; the paper
reports +2.0 to +9.0 pp Top-1 over its baselines on CIFAR-100.
"""

from nm_hebb_jax.config_args import apply_arg
from nm_hebb_jax.config_base import get_base_config


def get_config(arg=None):
    c = get_base_config()
    c.data.name = "cifar100"
    c.data.source = "tfds"
    c.data.val_size = 3000
    c.data.image_size = 32
    c.phase2.k_per_class = 4
    return apply_arg(c, arg)
