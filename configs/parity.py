r"""Training parity with PyTorch: the small-budget CIFAR-10 recipe both frameworks run.

  python -m experiments.parity run --model vgg11 --seeds 0,1,2,3,4      # both sides, resumable
  python -m experiments.parity report                                  # table + verdicts
  python main.py --config=configs/parity.py:vgg11 --workdir=runs/parity/vgg11_jax_s0 \
      --config.data.path=../shared/data/cifar10_train.npz             # one JAX run by hand

Recipe (the same fields drive ``experiments/parity/torch_side.py``): CIFAR-10 from an npz file,
2,000 validation images carved from the training file (stratified, ``data.val_seed=0``), a
stratified 10,000-image training subset of the rest, normalisation statistics computed on that
subset, random 4-pixel-padded crop + horizontal flip, batch 128 with the last partial batch of
each epoch dropped, 8 epochs of plain cross-entropy (``method=baseline``, no phase 2), SGD 0.1 with
Nesterov momentum 0.9, weight decay 5e-4 on kernels only, a one-epoch linear warm-up from 0 then
cosine to 0, per step; validation every epoch. What to expect and the measured per-seed
results of both frameworks: experiments/parity/README.md.

Arguments: a backbone name (default vgg11), and ``smoke`` for a tiny run on the digits.
"""

import ml_collections

from nm_hebb_jax.config_args import apply_arg
from nm_hebb_jax.config_base import get_base_config


def get_config(arg=None):
    c = get_base_config()
    c.model.name = "vgg11"
    c.method = "baseline"
    c.data.source = "npz"
    c.data.name = "cifar10"
    c.data.path = "../shared/data/cifar10_train.npz"
    c.data.val_size = 2000
    c.data.val_seed = 0
    c.data.train_subset = 10000
    c.data.norm_stats = "computed"
    c.data.drop_remainder = True
    c.batch_size = 128
    c.optim.base_lr = 0.1
    c.optim.momentum = 0.9
    c.optim.nesterov = True
    c.optim.weight_decay = 5e-4
    c.optim.warmup_epochs = 1.0
    c.phase1.epochs = 8.0
    c.phase2.epochs = 0.0
    c.phase2.num_steps = 0
    steps_per_epoch = c.data.train_subset // c.batch_size  # 78 (drop_remainder)
    c.log.every_steps = steps_per_epoch  # one train record per epoch
    c.log.eval_every_steps = steps_per_epoch  # validation at the end of every epoch
    c.log.progress = False
    c.ckpt.every_steps = steps_per_epoch
    c.ckpt.keep = 2
    c.parity = ml_collections.ConfigDict()
    c.parity.torch_channels_last = True  # PyTorch side: NHWC memory format (faster here)
    c.parity.torch_threads = 0  # 0 = all cores
    return apply_arg(c, arg)
