r"""Quickstart: NM-Hebb end to end on scikit-learn's bundled handwritten digits (offline, CPU).

  python main.py --config=configs/quickstart.py --workdir=runs/quickstart
  python -m nm_hebb_jax.evaluate --workdir=runs/quickstart

The digits (1,797 real 8x8 scans, 10 classes) are upsampled to 32x32 RGB; 360 are carved as a
stratified validation split. The backbone is a narrow ResNet-18 variant (one block per stage,
width 16) so both phases (240 + 80 steps of batch 64) finish in a few minutes on a 2-core CPU.
What to expect: validation Top-1 well above 90% after phase 1 and NMI of the embedding clusters
close to 1 after phase 2; the evaluation prints one JSON line and writes a t-SNE map, the
first-layer filters and the training curves to runs/quickstart/eval/val_step<N>/. The exact figures
of the last run are in README.md (with the command that produced them).

``:smoke`` shrinks it further for CI.
"""

import ml_collections

from nm_hebb_jax.config_args import apply_arg
from nm_hebb_jax.config_base import get_base_config


def get_config(arg=None):
    c = get_base_config()
    c.model.name = "resnet18"
    c.model.overrides = ml_collections.ConfigDict({"stage_sizes": (1, 1, 1, 1), "width": 16})
    c.data.source = "digits"
    c.data.name = "digits"
    c.data.val_size = 360
    c.data.image_size = 32
    c.batch_size = 64
    # A narrow model: compile time, not step time, dominates, and glibc with one malloc arena
    # slows XLA's compiler threads (BENCHMARKS.md, method notes), so it stays off.
    c.cpu_malloc_tuning = False
    c.optim.base_lr = 0.1
    c.optim.warmup_epochs = 1.0
    c.phase1.num_steps = 240
    c.phase2.num_steps = 80
    c.nm.hyper_every = 5
    c.ewc.fisher_examples = 256
    c.ewc.refresh_epochs = 5.0
    c.log.every_steps = 20
    c.log.eval_every_steps = 80
    c.ckpt.every_steps = 80
    c.eval.batch_size = 120
    c.eval.knn_bank = 2000
    c.eval.tsne_points = 360
    return apply_arg(c, arg)
