r"""Miconi 2021 ("Hebbian learning with gradients", arXiv 2107.01729): the 3-layer Hebbian CNN.

Paper configuration (CIFAR-10 converted to the project's npz format, docs/data.md; a stratified,
seeded 5,000-image validation split is carved from the 50,000 training images):

  python -m nm_hebb_jax.data.convert cifar-10-python.tar.gz --out data/cifar10.npz
  python main.py --config=configs/hebbian_cnn.py --workdir=runs/hebb_cnn \
      --config.data.path=data/cifar10.npz
  python -m nm_hebb_jax.evaluate --workdir=runs/hebb_cnn

Ablations are overrides of the same config: ``--config.triangle=False``,
``--config.prune_prob=0.0`` (or ``0.9``), ``--config.k_winners=2``, ``--config.rule=oja
--config.graded=True`` (with the default binarised signal Oja's update equals instar's). A shorter
budget: ``--config.epochs=2.0``; an interrupted run resumes from its workdir's checkpoint.

``:smoke`` (``--config=configs/hebbian_cnn.py:smoke``) trains tiny layers (8, 12, 16 channels) on
scikit-learn's bundled digits at 24x24 for 12 steps and decodes on 200 examples (seconds, CI).

What to expect: ``main.py`` prints one JSON line with ``decode/layer{1,2,3}/ridge`` and
``.../logistic`` (validation accuracy of each layer's 4-quadrant-pooled features); the evaluator
prints the same keys and writes each layer's filters to ``DIR/eval/``. The paper reports 64.65%
CIFAR-10 *test* accuracy from layer 3 after 20 epochs, and accuracy increasing with depth; the
numbers measured here (reduced budgets, CPU) are in ``experiments/hebbian_cnn/README.md``: after
2 epochs, ridge validation accuracy 58.0 / 61.0 / 61.5% for layers 1 / 2 / 3 (about 16 minutes on
2 shared cores). A full 20-epoch run takes about 1 hour on 2 idle CPU cores.

Declared interpretations (fields): ``flip`` (the author's random horizontal flips of training
batches), the graded signal keeps only positive winners, thresholds are frozen during decoding,
decoding features are per-sample standardised pooled outputs scaled by ``StandardScaler``.
"""

import ml_collections

_SMOKE = "smoke"


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.kind = "hebbian_cnn"
    c.seed = 0
    c.cpu_tuning = True  # XLA's own CPU convolutions (nm_hebb_jax/cpu_runtime.py)
    c.cpu_malloc_tuning = True  # malloc keeps freed memory (nm_hebb_jax/cpu_runtime.py)

    # Architecture (one entry per layer).
    c.channels = (100, 196, 400)
    c.kernel_sizes = (5, 3, 3)
    c.pool = 2  # average pooling window and stride after every layer
    c.prune_prob = 0.99  # fixed random mask on the connections into layers 2..L (0 = dense)

    # Plasticity.
    c.rule = "instar"  # 'hebb' | 'instar' | 'oja'
    c.k_winners = 1  # K of the k-WTA across channels (homeostasis targets a win rate K/N)
    c.graded = False  # False: binarised plasticity signal; True: y = u - θ at the winners
    c.triangle = True  # pass on the dense triangle activation (False: the plasticity signal)
    c.homeostasis_rate = 3.0
    c.lrs = (1e-4, 1e-4, 1e-3)  # final per-step SGD rates for the loss summed over the batch

    # Training.
    c.batch_size = 100
    c.epochs = 20.0
    c.num_steps = -1  # -1 = derive from epochs
    c.warmup_batches = 200  # thresholds adapt, weights do not
    c.flip = True  # random horizontal flips of training images [author's code]
    c.zca_images = 9000
    c.zca_eps = 1e-3

    c.data = ml_collections.ConfigDict()
    c.data.source = "npz"  # 'npz' | 'digits' | 'tfds'
    c.data.name = "cifar10"
    c.data.path = ""
    c.data.data_dir = ""
    c.data.train_split = "train"
    c.data.val_size = 5000
    c.data.val_seed = 0
    c.data.eval_split = "val"
    c.data.augment = False  # the Dataset's own augmentation is unused (see ``flip``)
    c.data.label_key = ""
    c.data.image_size = 32
    c.data.num_classes = 0
    c.data.cache_dir = "~/.cache/nm_hebb_jax"
    c.data.norm_stats = "computed"

    # Layer-wise decoding (ridge + linear softmax) on the frozen features.
    c.decode = ml_collections.ConfigDict()
    c.decode.at_end = True  # decode when training ends (the evaluator always does)
    c.decode.train_examples = 0  # training images used to fit the readouts (0 = all)
    c.decode.ridge_alpha = 1.0
    c.decode.logistic = True
    c.decode.logistic_c = 1.0  # inverse L2 strength of LogisticRegression
    c.decode.logistic_max_iter = 200
    c.decode.batch_size = 500  # forward-pass batch for feature extraction

    c.ckpt = ml_collections.ConfigDict()
    c.ckpt.every_steps = 450
    c.ckpt.keep = 2

    c.log = ml_collections.ConfigDict()
    c.log.every_steps = 50
    c.log.progress = True

    c.eval = ml_collections.ConfigDict()
    c.eval.max_filters = 100  # filters drawn per layer in the evaluator's pictures

    c.stop_after_step = -1  # test hook: save and stop after this step (as if preempted)

    tokens = [t.strip() for t in (arg or "").split(",") if t.strip()]
    for t in tokens:
        if t != _SMOKE:
            raise ValueError(f"unknown config argument {t!r}; use 'smoke'")
    if _SMOKE in tokens:
        c.channels = (8, 12, 16)
        c.cpu_malloc_tuning = False  # tiny layers: compile-bound (nm_hebb_jax/cpu_runtime.py)
        c.data.source = "digits"
        c.data.name = "digits"
        c.data.val_size = 200
        c.data.image_size = 24
        c.data.cache_dir = ""
        c.num_steps = 12
        c.batch_size = 20
        c.warmup_batches = 4
        c.zca_images = 200
        c.decode.train_examples = 200
        c.decode.batch_size = 100
        c.decode.logistic_max_iter = 100
        c.ckpt.every_steps = 6
        c.log.every_steps = 4
        c.log.progress = False
        c.eval.max_filters = 16
    return c
