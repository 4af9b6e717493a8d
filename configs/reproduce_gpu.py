r"""The reproduction study at full size, for a GPU or TPU VM (not run in this repository yet).

  tfds build cifar10 cifar100                   # once, where TFDS can download
  python -m nm_hebb_jax.data.tinyimagenet --manual_dir=tiny-imagenet-200 --data_dir=DATA_DIR
  python -m experiments.reproduce run --grid=configs/reproduce_gpu.py --data-root=DATA_DIR --dry-run
  python -m experiments.reproduce run --grid=configs/reproduce_gpu.py --data-root=DATA_DIR
  python -m experiments.reproduce report --grid=configs/reproduce_gpu.py

All five backbones, all ten methods, three seeds, on the full training splits prepared by TFDS
(``--data-root`` is the TFDS data_dir); 5,000 validation images (CIFAR-10/100) or 10,000
(TinyImageNet) are carved from the training split for tuning, and results are reported on each
dataset's official test split (``test``; TinyImageNet's labelled ``validation``), which nothing is
tuned on. The epochs are the configs' defaults (30 + 10; TinyImageNet 40 + 10). λ_hebb and λ_ewc
are the CPU study's validation choice (configs/reproduce_cpu.py: CHOSEN); re-tune them with a
``:sweep`` on this hardware if time allows. 450 runs: about 1 h each for ResNet-18 on CIFAR on
one modern GPU (the dry run's estimates are the 2-core CPU's and mean nothing there).
"""

import importlib.util
import os

import ml_collections

_spec = importlib.util.spec_from_file_location(
    "reproduce_cpu", os.path.join(os.path.dirname(os.path.abspath(__file__)), "reproduce_cpu.py")
)
_cpu = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_cpu)

MODELS = ("resnet18", "vgg11", "mobilenet_v2", "efficientnet_v2_s", "densenet121")
DATASETS = {
    # dataset: (val_size, test split, phase-1 epochs, phase-2 epochs)
    "cifar10": (5000, "test", 30, 10),
    "cifar100": (5000, "test", 30, 10),
    "tinyimagenet": (10000, "validation", 40, 10),
}


def get_config(arg=None):
    if arg:
        raise ValueError(f"configs/reproduce_gpu.py takes no argument, got {arg!r}")
    c = ml_collections.ConfigDict()
    c.name = "gpu"
    groups = []
    for dataset, (val, test, p1, p2) in DATASETS.items():
        for model in MODELS:
            g = _cpu.group(
                dataset,
                model,
                _cpu.ALL_METHODS,
                (0, 1, 2),
                train_subset=0,
                p1=p1,
                p2=p2,
                val_size=val,
                test_size=0,
            )
            g.update(source="tfds", test_split=test)
            g["budget"]["full_train"] = 100000 if dataset == "tinyimagenet" else 50000
            groups.append(g)
    c.groups = groups
    return c
