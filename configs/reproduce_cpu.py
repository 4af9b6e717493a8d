r"""The reproduction study's grid on a 2-core CPU (experiments/reproduce; results in RESULTS.md).

  python -m experiments.reproduce run --grid=configs/reproduce_cpu.py --dry-run   # list, times
  python -m experiments.reproduce run --grid=configs/reproduce_cpu.py            # resumable
  python -m experiments.reproduce run --grid=configs/reproduce_cpu.py:sweep      # λ sweep first
  python -m experiments.reproduce report --grid=configs/reproduce_cpu.py         # RESULTS.md

Each group is one (dataset, backbone) with its methods and seeds and one budget: a stratified
training subset of ``train_subset`` images of the training file, ``val_size`` validation images
carved from the rest (stratified, ``val_seed`` 0: what every choice is tuned on) and a held-out
``test`` split of ``test_size`` images cut from what is left (never trained or tuned on: what
RESULTS.md reports). Every method of a group gets the same data, augmentation, schedule and total
epochs (``baseline`` trains phase-1 + phase-2 epochs of CE); ``overrides`` are config fields.

Arguments: ``''`` (the study), ``sweep`` (the λ_hebb × λ_ewc sweep on validation: one seed, the
same for every cell, so the cells differ only in λ; a shorter 6 + 2-epoch budget), ``smoke`` (a
two-run grid on the digits for the tests).
"""

import ml_collections

# λ_hebb and λ_ewc of every NM-Hebb-family run: chosen on validation by the ':sweep' grid
# (RESULTS.md keeps its table). Fill in from `python -m experiments.reproduce report --grid
# configs/reproduce_cpu.py:sweep`.
CHOSEN = {"hebb.weight": 1.0, "ewc.weight": 10.0}

ALL_METHODS = (
    "baseline",
    "nm_hebb",
    "phase1_only",
    "phase2_only",
    "no_gate",
    "hebb_only",
    "ewc_only",
    "label_smoothing",
    "center_loss",
    "supcon",
)

DATA = {
    "cifar10": ("configs/cifar10.py", "cifar10_train.npz"),
    "cifar100": ("configs/cifar100.py", "cifar100_train.npz"),
    "tinyimagenet": ("configs/tinyimagenet.py", "tinyimagenet_train.npz"),
}


def group(
    dataset,
    model,
    methods,
    seeds,
    *,
    train_subset,
    p1,
    p2,
    val_size=2000,
    test_size=10000,
    tag="",
    overrides=None,
):
    config_file, data_file = DATA[dataset]
    return {
        "dataset": dataset,
        "config": config_file,
        "data_file": data_file,
        "model": model,
        "methods": list(methods),
        "seeds": list(seeds),
        "tag": tag,
        "budget": {
            "train_subset": train_subset,
            "val_size": val_size,
            "test_size": test_size,
            "phase1_epochs": p1,
            "phase2_epochs": p2,
        },
        "overrides": {**CHOSEN, **(overrides or {})},
    }


def get_config(arg=None):
    c = ml_collections.ConfigDict()
    c.name = "cpu"
    arg = (arg or "").strip()
    if arg == "":
        groups = [
            group("cifar10", "vgg11", ALL_METHODS, (0, 1, 2), train_subset=10000, p1=6, p2=2),
            group(
                "cifar10",
                "resnet18",
                ("baseline", "nm_hebb"),
                (0, 1),
                train_subset=10000,
                p1=6,
                p2=2,
            ),
            group(
                "cifar100",
                "vgg11",
                ("baseline", "nm_hebb"),
                (0, 1),
                train_subset=10000,
                p1=12,
                p2=4,
            ),
            group(
                "tinyimagenet",
                "vgg11",
                ("baseline", "nm_hebb"),
                (0, 1),
                train_subset=10000,
                p1=6,
                p2=2,
            ),
            *(
                group("cifar10", m, ("baseline", "nm_hebb"), (0,), train_subset=5000, p1=6, p2=2)
                for m in ("mobilenet_v2", "efficientnet_v2_s", "densenet121")
            ),
        ]
    elif arg == "sweep":
        c.name = "cpu_sweep"
        groups = [
            group(
                "cifar10",
                "vgg11",
                ("nm_hebb",),
                (100,),
                train_subset=10000,
                p1=6,
                p2=2,
                tag=f"h{h:g}_e{e:g}",
                overrides={"hebb.weight": h, "ewc.weight": e},
            )
            for h in (0.1, 1.0, 10.0)
            for e in (1.0, 100.0, 1000.0)
        ]
    elif arg == "smoke":
        c.name = "smoke"
        groups = [
            {
                **group(
                    "cifar10", "resnet18", ("baseline", "nm_hebb"), (0,), train_subset=0, p1=0, p2=0
                ),
                "dataset": "digits",
                "config": "configs/quickstart.py",
                "config_arg": "smoke",
                "data_file": "digits.npz",
                "budget": {
                    "train_subset": 1000,
                    "val_size": 200,
                    "test_size": 300,
                    "phase1_epochs": 0,
                    "phase2_epochs": 0,
                },
                "overrides": {},
            }
        ]
    else:
        raise ValueError(f"unknown grid argument {arg!r}; use '', 'sweep' or 'smoke'")
    c.groups = groups
    return c
