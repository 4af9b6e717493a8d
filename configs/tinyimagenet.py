r"""TinyImageNet-200 (64x64), ResNet-18 (CIFAR stem kept, docs/method.md "Backbones"), NM-Hebb.

TFDS: TinyImageNet is not in the TFDS catalogue; this package ships a builder for the standard
``tiny-imagenet-200`` folder layout (see README). Once built into ``DATA_DIR``:

  python main.py --config=configs/tinyimagenet.py --workdir=runs/tin --config.data.data_dir=DATA_DIR

npz, from the same folder without TFDS (docs/data.md; 4,000 of the 100,000 training images carved
for validation, ``--config.eval.split=validation`` evaluates on the official validation split):

  python -m nm_hebb_jax.data.convert tiny-imagenet-200 --out data/tinyimagenet.npz
  python main.py --config=configs/tinyimagenet.py --workdir=runs/tin \
      --config.data.source=npz --config.data.path=data/tinyimagenet.npz

``:smoke`` runs a tiny model for a few steps on the bundled digits data (CI).

What to expect: no accuracy for this config has been measured in this repository yet; the paper
reports up to +4.3 to +8.9 pp Top-1 over its baselines on TinyImageNet.
"""

from nm_hebb_jax.config_args import apply_arg
from nm_hebb_jax.config_base import get_base_config


def get_config(arg=None):
    c = get_base_config()
    c.data.name = "tinyimagenet"
    c.data.source = "tfds"
    c.data.val_size = 4000
    c.data.image_size = 64
    c.phase1.epochs = 40.0
    c.phase2.epochs = 10.0
    return apply_arg(c, arg)
