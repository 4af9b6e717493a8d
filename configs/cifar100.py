r"""CIFAR-100, ResNet-18, NM-Hebb.

TFDS (prepared):  python main.py --config=configs/cifar100.py --workdir=runs/cifar100_nm_hebb
npz (30,128 lossless train images of this project, 100 classes; 3,000 carved for validation):

  python main.py --config=configs/cifar100.py --workdir=runs/c100 \
      --config.data.source=npz --config.data.path=../shared/data/cifar100_train.npz

``:smoke`` runs a tiny model for a few steps on the bundled digits data (CI).

What to expect: no accuracy for this config has been measured in this repository yet; the paper
reports +2.0 to +9.0 pp Top-1 over its baselines on CIFAR-100. The npz file holds only 30k of the
50k training images, so absolute numbers are lower than with the full TFDS split.
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
