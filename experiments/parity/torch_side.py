"""The parity recipe in plain PyTorch (the reference side of ``python -m experiments.parity``).

  python -m experiments.parity.torch_side --model vgg11 --seed 0 --workdir runs/parity/x \
      --out result.json [--set optim.warmup_epochs=2 ...]

Everything a framework owns is PyTorch's own: the model (kuangliu/pytorch-cifar's definitions in
``experiments/bench/torch_reference.py``, PyTorch's default initialisation), ``torch.optim.SGD``
(Nesterov, weight decay on kernels only through parameter groups), BatchNorm in train/eval mode,
the shuffling (``torch.randperm`` per epoch, last partial batch dropped) and the augmentation
(zero-padded random crop + flip, drawn with ``torch.Generator``). Shared with the JAX side, so
that both train on the same data under the same recipe: the split (the project's data builder
carves the same 2,000 validation and 10,000 training images), the normalisation statistics
(computed on the training subset) and the learning-rate schedule's formula. Resumable: a
checkpoint per epoch in ``--workdir``; a relaunch continues from the last finished epoch.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

import numpy as np

from experiments.parity.common import load_config, schedule, write_json


def _arrays(config):
    from nm_hebb_jax.config_base import data_config
    from nm_hebb_jax.data import build_dataset

    ds = build_dataset(data_config(config), seed=config.seed)
    x_train, y_train = ds.get_arrays("train")
    x_val, y_val = ds.get_arrays("val")
    return ds, x_train, y_train, x_val, y_val


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vgg11")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--data", default=None, help="npz file (default: the config's data.path)")
    args = p.parse_args(argv)

    import torch
    import torch.nn.functional as F  # noqa: N812

    from experiments.bench.torch_reference import torch_model

    config = load_config(args.model, args.overrides)
    config.seed = args.seed
    if args.data:
        config.data.path = args.data
    threads = config.parity.torch_threads or os.cpu_count()
    torch.set_num_threads(threads)
    ds, x_train, y_train, x_val, y_val = _arrays(config)
    mean = torch.tensor(ds.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(ds.std, dtype=torch.float32).view(1, 3, 1, 1)
    fmt = torch.channels_last if config.parity.torch_channels_last else torch.contiguous_format

    def to_input(x_uint8: torch.Tensor) -> torch.Tensor:  # NHWC uint8 -> normalised NCHW float
        x = x_uint8.permute(0, 3, 1, 2).float().div_(255.0)
        return ((x - mean) / std).contiguous(memory_format=fmt)

    xt = torch.from_numpy(x_train)
    yt = torch.from_numpy(y_train.astype(np.int64))
    xv = torch.from_numpy(x_val)
    yv = torch.from_numpy(y_val.astype(np.int64))
    n, b = xt.shape[0], config.batch_size
    spe = n // b  # last partial batch dropped
    epochs = int(config.phase1.epochs)
    total = spe * epochs
    peak = config.optim.base_lr * b / 128.0
    warmup = int(round(config.optim.warmup_epochs * spe))
    pad = 4 if ds.name.startswith("cifar") else 8

    torch.manual_seed(config.seed)
    model = torch_model(config.model.name, ds.num_classes).to(memory_format=fmt)
    decay = [q for q in model.parameters() if q.ndim > 1]
    no_decay = [q for q in model.parameters() if q.ndim <= 1]
    opt = torch.optim.SGD(
        [
            {"params": decay, "weight_decay": config.optim.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=peak,
        momentum=config.optim.momentum,
        nesterov=config.optim.nesterov,
    )
    os.makedirs(args.workdir, exist_ok=True)
    ckpt = os.path.join(args.workdir, "torch_checkpoint.pt")
    history, start_epoch, wall = [], 0, 0.0
    if os.path.exists(ckpt):
        saved = torch.load(ckpt, weights_only=False)
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["opt"])
        history, start_epoch, wall = saved["history"], saved["epoch"], saved["wall"]
        print(f"resumed {args.workdir} after epoch {start_epoch}", file=sys.stderr)

    def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Zero-padded random crop (offsets uniform in [0, 2 pad]) + horizontal flip, NHWC."""
        bsz, h, w, _ = x.shape
        padded = F.pad(x.permute(0, 3, 1, 2), (pad, pad, pad, pad)).permute(0, 2, 3, 1)
        oy = torch.randint(0, 2 * pad + 1, (bsz,), generator=gen)
        ox = torch.randint(0, 2 * pad + 1, (bsz,), generator=gen)
        rows = (oy[:, None] + torch.arange(h)[None, :])[:, :, None]
        cols = (ox[:, None] + torch.arange(w)[None, :])[:, None, :]
        out = padded[torch.arange(bsz)[:, None, None], rows, cols]
        flip = torch.rand(bsz, generator=gen) < 0.5
        out[flip] = out[flip].flip(2)
        return out

    def evaluate() -> tuple[float, float]:
        model.eval()
        correct, loss = 0, 0.0
        with torch.no_grad():
            for i in range(0, xv.shape[0], 500):
                logits = model(to_input(xv[i : i + 500]))
                loss += float(F.cross_entropy(logits, yv[i : i + 500], reduction="sum"))
                correct += int((logits.argmax(1) == yv[i : i + 500]).sum())
        model.train()
        return correct / xv.shape[0], loss / xv.shape[0]

    model.train()
    for epoch in range(start_epoch, epochs):
        t0 = time.time()
        gen = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
        perm = torch.randperm(n, generator=gen)
        losses = []
        for i in range(spe):
            step = epoch * spe + i
            for group in opt.param_groups:
                group["lr"] = schedule(step, peak=peak, total=total, warmup=warmup)
            idx = perm[i * b : (i + 1) * b]
            x = to_input(augment(xt[idx], gen))
            loss = F.cross_entropy(model(x), yt[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
        top1, vloss = evaluate()
        wall += time.time() - t0
        history.append(
            {
                "epoch": epoch + 1,
                "step": (epoch + 1) * spe,
                "train_loss": float(np.mean(losses)),
                "val_top1": top1,
                "val_loss": vloss,
            }
        )
        print(f"epoch {epoch + 1}: {history[-1]}", file=sys.stderr)
        torch.save(
            {
                "model": model.state_dict(),
                "opt": opt.state_dict(),
                "history": history,
                "epoch": epoch + 1,
                "wall": wall,
            },
            ckpt + ".tmp",
        )
        os.replace(ckpt + ".tmp", ckpt)
    write_json(
        args.out,
        {
            "side": "torch",
            "model": config.model.name,
            "seed": config.seed,
            "overrides": args.overrides,
            "epochs": history,
            "final_val_top1": history[-1]["val_top1"],
            "steps": total,
            "train_size": int(n),
            "val_size": int(xv.shape[0]),
            "train_seconds": round(wall, 1),
            "versions": {"torch": torch.__version__, "python": platform.python_version()},
            "threads": threads,
            "memory_format": "channels_last" if config.parity.torch_channels_last else "nchw",
        },
    )


if __name__ == "__main__":
    main()
