"""The configuration schema shared by every file under ``configs/``.

``get_base_config()`` returns a fully typed ``ml_collections.ConfigDict``; dataset config files
(``configs/cifar10.py``, ...) start from it and override fields. Every declared interpretation of
the NM-Hebb paper (docs/method.md, marked [ours]) is a field here with its default; README's
"Declared interpretations" section lists them.

The values a field accepts are checked, before anything is built, by
:mod:`nm_hebb_jax.train.validate` (its ``CHOICES`` table lists every field with a fixed set).
Durations: each phase has ``epochs`` (float) and ``num_steps`` (int, ``-1`` = derive from epochs),
the warm-up and the EWC refresh are in epochs; all are turned into steps in one place,
:func:`nm_hebb_jax.train.validate.durations`.
"""

from __future__ import annotations

import ml_collections


def get_base_config() -> ml_collections.ConfigDict:
    """The full default configuration (CIFAR-10, ResNet-18, NM-Hebb)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    # CPU: XLA's own convolutions, not YNNPACK's (faster; nm_hebb_jax/cpu_runtime.py)
    c.cpu_tuning = True
    # CPU (with cpu_tuning): glibc malloc keeps freed memory, so steps do not page-fault their
    # working set again (the process keeps its peak heap; XLA compiles slower with one malloc
    # arena, so compile-bound tiny configs turn it off; nm_hebb_jax/cpu_runtime.py)
    c.cpu_malloc_tuning = True
    c.method = "nm_hebb"
    c.init_from = ""  # a workdir (or checkpoint dir) whose latest checkpoint initialises params
    c.skip_nonfinite = False  # True: skip updates whose loss/grad is non-finite instead of stopping
    # True: resume a workdir whose checkpoint was trained with other settings (seed, data, model,
    # optimiser, ...) with this launch's values; durations, logging and eval settings may change
    # on resume without it (train/resume.py, MAY_CHANGE_ON_RESUME)
    c.resume_override = False
    # Donate the train state to the step (in-place update): 'auto' = on GPU/TPU, not on CPU,
    # where it measured no faster and saves little memory (BENCHMARKS.md); 'always' or 'never'.
    c.donate_state = "auto"

    c.distributed = ml_collections.ConfigDict()
    c.distributed.initialize = False  # True: jax.distributed.initialize() (TPU VMs auto-detect)
    c.distributed.coordinator_address = ""  # 'host:port' to give the coordinator explicitly
    c.distributed.num_processes = 0
    c.distributed.process_id = -1
    c.distributed.timeout_s = 300

    c.debug = ml_collections.ConfigDict()
    c.debug.nan_at_step = -1  # test hook: feed a NaN batch at this step
    c.debug.sigterm_at_step = -1  # test hook: send this process SIGTERM at this step
    c.debug.kill_at_step = -1  # test hook: SIGKILL this process at this step (no clean-up)

    c.model = ml_collections.ConfigDict()
    c.model.name = "resnet18"
    c.model.dtype = "float32"  # computation dtype: 'float32' or 'bfloat16' (params stay float32)
    c.model.overrides = ml_collections.ConfigDict()  # width/depth overrides passed to get_model
    c.model.smoke = False  # True: the backbone's tiny CI variant (under the overrides); ':smoke'
    # 'fan_out' (He-normal conv kernels, Flax-default classifier) or 'torch_default' (PyTorch's
    # nn.Conv2d/nn.Linear defaults); experiments/parity measures which matches PyTorch training
    c.model.init_scheme = "fan_out"

    c.data = ml_collections.ConfigDict()
    c.data.source = "tfds"  # 'tfds' | 'npz' | 'digits'
    c.data.name = "cifar10"
    c.data.path = ""  # npz file (source 'npz')
    c.data.data_dir = ""  # TFDS data_dir ('' = TFDS default)
    c.data.train_split = "train"
    c.data.val_size = 5000
    c.data.val_seed = 0
    c.data.train_subset = 0  # > 0: a stratified subset of the training portion (budgeted runs)
    c.data.drop_remainder = False  # True: epochs of floor(N/B) full batches (PyTorch drop_last)
    c.data.augment = True
    c.data.label_key = ""
    c.data.image_size = 32
    c.data.num_classes = 0  # 0 = infer from the data
    c.data.cache_dir = "~/.cache/nm_hebb_jax"  # decoded-image cache; empty string = off
    c.data.norm_stats = "auto"  # published CIFAR statistics, else computed; or "computed"

    c.batch_size = 128  # global batch, split over all devices and hosts

    c.optim = ml_collections.ConfigDict()
    c.optim.momentum = 0.9
    c.optim.nesterov = True
    c.optim.weight_decay = 5e-4  # not applied to BatchNorm, biases, the neuromodulator
    c.optim.base_lr = 0.1  # at batch 128; scaled linearly with batch_size / 128
    c.optim.warmup_epochs = 1.0
    c.optim.grad_clip = 0.0  # 0 = off

    c.phase1 = ml_collections.ConfigDict()
    c.phase1.epochs = 30.0
    c.phase1.num_steps = -1

    c.phase2 = ml_collections.ConfigDict()
    c.phase2.epochs = 10.0
    c.phase2.num_steps = -1
    c.phase2.lr_factor = 0.1  # phase-2 lr = phase-1 lr × lr_factor [ours]
    c.phase2.ce_weight = 1.0  # λ_ce2 [ours]
    c.phase2.balanced = True  # P×K class-balanced batches [ours]
    c.phase2.k_per_class = 4
    c.phase2.hebb = False  # Hebbian term in phase 2 [ours: off]
    c.phase2.gate = False  # neuromodulator in phase 2 [ours: off]
    c.phase2.ewc = True  # consolidation against the end-of-phase-1 anchor [ours: on]

    c.hebb = ml_collections.ConfigDict()
    c.hebb.layers = ()  # tap names; () = the backbone's default_hebb_layer [ours]
    c.hebb.weight = 0.1  # λ_hebb [ours]
    c.hebb.activation = "post"  # 'post' | 'pre' | 'maxpool' [ours: post]
    c.hebb.stop_gradient = "none"  # 'none' | 'activations' | 'weights' [ours: none]

    c.nm = ml_collections.ConfigDict()
    c.nm.gate_learning = "hypergradient"  # 'hypergradient' | 'joint_prior' | 'fixed' [ours]
    c.nm.targets = ("hebb", "ewc")  # terms the gate scales [ours: both]
    # φ's step on the hypergradient [ours]: 'adam' or 'sgd' at rate nm.lr, on the hypergradient
    # divided by its running RMS (hyper_normalize; EMA decay hyper_norm_decay), so the step does
    # not depend on the hypergradient's raw scale (1e-8-1e-5 on real data)
    c.nm.phi_optimizer = "adam"
    c.nm.lr = 0.01
    c.nm.hyper_normalize = True
    c.nm.hyper_norm_decay = 0.9
    c.nm.hyper_every = 10  # compute the hypergradient every N steps
    # g_CE,t at the φ-update step: 'recompute' (exact, a 2nd g_R pass) or 'reuse' the stored
    # g_R,t-1 as the estimate of g_R,t (one g_R pass per hyper_every steps) [ours]
    c.nm.hyper_g_r = "recompute"
    c.nm.fixed_gate = 1.0  # ν in 'fixed' mode (the no_gate ablation)
    c.nm.prior_weight = 1e-3  # λ_gate of KL(Bern(ν) || Bern(prior_target))
    c.nm.prior_target = 0.5
    c.nm.hidden = 16

    c.ewc = ml_collections.ConfigDict()
    c.ewc.weight = 1.0  # λ_ewc [ours]
    c.ewc.fisher_examples = 512
    c.ewc.refresh_epochs = 1.0  # online refresh of (F, θ*) in phase 1 [ours]
    c.ewc.normalize = True  # F̃ = F / mean(F)
    c.ewc.chunk_size = 16  # per-example gradients computed this many at a time

    c.metric = ml_collections.ConfigDict()
    c.metric.margin = 1.0  # m of the pairwise contrastive loss [ours]
    c.metric.weight = 1.0

    c.comparators = ml_collections.ConfigDict()
    c.comparators.label_smoothing = 0.1
    c.comparators.center_weight = 0.003
    c.comparators.supcon_weight = 1.0
    c.comparators.supcon_temperature = 0.1

    c.log = ml_collections.ConfigDict()
    c.log.every_steps = 50
    c.log.eval_every_steps = 1000
    c.log.progress = True

    c.ckpt = ml_collections.ConfigDict()
    c.ckpt.every_steps = 1000
    c.ckpt.keep = 3

    c.eval = ml_collections.ConfigDict()
    c.eval.split = "val"  # what is evaluated: the carved "val", or "test" when the data has it
    c.eval.batch_size = 256
    c.eval.knn_k = 20
    c.eval.knn_bank = 10000
    c.eval.nmi_restarts = 10
    c.eval.tsne_points = 2000
    return c


def data_config(config) -> ml_collections.ConfigDict:
    """``config.data`` plus ``eval_split = config.eval.split``: what the data builder reads."""
    data = ml_collections.ConfigDict(config.data.to_dict())
    data.eval_split = config.eval.split
    return data


def apply_smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Shrinks a config for CI: tiny model, a few steps, the bundled digits data (offline).

    The model is the tiny variant of whichever backbone ``model.name`` names when the run is
    built (``model.smoke``), so ``--config.model.name=vgg11`` after ``:smoke`` gives a tiny
    VGG-11; the config's own width/depth overrides are dropped.
    """
    c.model.smoke = True
    c.model.overrides = ml_collections.ConfigDict()
    c.cpu_malloc_tuning = False  # tiny models are compile-bound (see cpu_runtime.tune_malloc)
    c.data.source = "digits"
    c.data.name = "digits"
    c.data.path = ""
    c.data.val_size = 200
    c.batch_size = 32
    c.phase1.num_steps = 6
    c.phase2.num_steps = 4
    c.nm.hyper_every = 3
    c.ewc.fisher_examples = 32
    c.ewc.refresh_epochs = 0.1
    c.log.every_steps = 2
    c.log.eval_every_steps = 5
    c.log.progress = False
    c.ckpt.every_steps = 5
    c.eval.batch_size = 128
    c.eval.knn_bank = 500
    c.eval.nmi_restarts = 2
    c.eval.tsne_points = 200
    return c
