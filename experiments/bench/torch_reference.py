r"""JAX/Flax against PyTorch: the same CE training step, same batch and threads, interleaved.

  pip install -e '.[bench]'   # adds torch; CPU wheel: --index-url https://download.pytorch.org/whl/cpu
  python experiments/bench/torch_reference.py --models resnet18,mobilenet_v2 --repeats 10

One invocation runs one worker process per variant and gives them turns, round-robin, so machine
load hits every variant alike and only one variant computes at any moment (the others block on a
pipe). In a turn a variant runs ``--steps-per-turn`` (3) consecutive training steps; the first step
of a turn pays for the switch and is reported apart (``1st s``), the others are the sample (median,
min, max): a step that follows an idle pause or another process's step can run much slower than
back-to-back steps (memory freed by the previous step is faulted in again), which is not what
training sees. Before each turn the driver waits until the whole machine has been <
``--idle-threshold`` busy for 0.5 s (``/proc/stat``; Linux only, skipped elsewhere) and records the
busy fraction it saw, so a turn measured under load is never counted silently.

Variants (``--variants``):

  ``jax``            this repository's trainer step (method ``baseline``: CE, SGD with Nesterov
                     momentum 0.9, weight decay 5e-4 on conv/dense kernels), default settings
                     (so ``cpu_tuning`` is on: see nm_hebb_jax/cpu_runtime.py);
  ``jax:K=V,...``    the same with config overrides (``cpu_tuning=False``,
                     ``model.overrides.depthwise_impl=conv``) or environment
                     variables of its worker (``env.XLA_FLAGS=--xla_cpu_...``);
  ``torch``          the same model (the Flax model's reference: kuangliu/pytorch-cifar, or
                     torchvision's EfficientNetV2-S with our stride-1 stem; parameter count checked
                     against the Flax model) and the same step in PyTorch eager, NCHW;
  ``torch_cl``       PyTorch with ``channels_last`` (NHWC) model and input.

Every variant gets the same input: the first training batch of the digits data the package ships
(resized to 32x32), normalised, as float32 NHWC (transposed to NCHW for PyTorch). Threads:
PyTorch ``set_num_threads(--threads)`` (default: all cores), JAX's CPU client uses all cores.
FLOPs per step are model FLOPs (3 x the forward's conv and dense multiply-adds x 2, from the Flax
model's jaxpr: ``step_bench.model_train_flops``), the same figure for every variant.

Prints per variant the median step time (min–max), images/s, GFLOP/s and the throughput ratio
against each PyTorch variant measured in the same run, and writes JSON (``--out``). A benchmark,
not a test: the figures depend on the machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pickle
import platform
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


# ------------------------------------------------------------------------------------ PyTorch


def torch_model(name: str, num_classes: int):
    """The PyTorch references of our Flax models: kuangliu/pytorch-cifar's ResNet-18, MobileNetV2,
    VGG-11 (convs without the bias BatchNorm cancels, as ours by default) and DenseNet-121, and
    torchvision's ``efficientnet_v2_s`` with a stride-1 stem (written out here: torchvision is
    not a dependency), dropout and stochastic depth included as in our model."""
    import torch
    import torch.nn as tnn
    import torch.nn.functional as F  # noqa: N812

    class BasicBlock(tnn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(cout)
            self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(cout)
            self.shortcut = tnn.Sequential()
            if stride != 1 or cin != cout:
                self.shortcut = tnn.Sequential(
                    tnn.Conv2d(cin, cout, 1, stride, bias=False), tnn.BatchNorm2d(cout)
                )

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return F.relu(out + self.shortcut(x))

    class ResNet18(tnn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = tnn.Conv2d(3, 64, 3, 1, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(64)
            layers, cin = [], 64
            for i, cout in enumerate((64, 128, 256, 512)):
                for j in range(2):
                    layers.append(BasicBlock(cin, cout, 2 if (i > 0 and j == 0) else 1))
                    cin = cout
            self.layers = tnn.Sequential(*layers)
            self.linear = tnn.Linear(512, num_classes)

        def forward(self, x):
            out = self.layers(F.relu(self.bn1(self.conv1(x))))
            return self.linear(out.mean((2, 3)))

    class Block(tnn.Module):
        def __init__(self, cin, cout, expansion, stride):
            super().__init__()
            self.stride = stride
            planes = expansion * cin
            self.conv1 = tnn.Conv2d(cin, planes, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(planes)
            self.conv2 = tnn.Conv2d(planes, planes, 3, stride, 1, groups=planes, bias=False)
            self.bn2 = tnn.BatchNorm2d(planes)
            self.conv3 = tnn.Conv2d(planes, cout, 1, bias=False)
            self.bn3 = tnn.BatchNorm2d(cout)
            self.shortcut = tnn.Sequential()
            if stride == 1 and cin != cout:
                self.shortcut = tnn.Sequential(
                    tnn.Conv2d(cin, cout, 1, bias=False), tnn.BatchNorm2d(cout)
                )

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = F.relu(self.bn2(self.conv2(out)))
            out = self.bn3(self.conv3(out))
            return out + self.shortcut(x) if self.stride == 1 else out

    class MobileNetV2(tnn.Module):
        cfg = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
               (6, 160, 3, 2), (6, 320, 1, 1))  # fmt: skip

        def __init__(self):
            super().__init__()
            self.conv1 = tnn.Conv2d(3, 32, 3, 1, 1, bias=False)
            self.bn1 = tnn.BatchNorm2d(32)
            layers, cin = [], 32
            for expansion, cout, n, stride in self.cfg:
                for j in range(n):
                    layers.append(Block(cin, cout, expansion, stride if j == 0 else 1))
                    cin = cout
            self.layers = tnn.Sequential(*layers)
            self.conv2 = tnn.Conv2d(320, 1280, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(1280)
            self.linear = tnn.Linear(1280, num_classes)

        def forward(self, x):
            out = self.layers(F.relu(self.bn1(self.conv1(x))))
            out = F.relu(self.bn2(self.conv2(out)))
            return self.linear(out.mean((2, 3)))

    class VGG11(tnn.Module):
        cfg = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")

        def __init__(self):
            super().__init__()
            layers, cin = [], 3
            for item in self.cfg:
                if item == "M":
                    layers.append(tnn.MaxPool2d(2, 2))
                else:
                    layers += [tnn.Conv2d(cin, item, 3, 1, 1, bias=False), tnn.BatchNorm2d(item)]
                    layers.append(tnn.ReLU(inplace=True))
                    cin = item
            self.features = tnn.Sequential(*layers)
            self.linear = tnn.Linear(512, num_classes)

        def forward(self, x):
            return self.linear(self.features(x).mean((2, 3)))

    def conv_bn_act(cin, cout, k, stride=1, groups=1, act=True):
        """Conv (no bias) -> BatchNorm(eps 1e-3) -> SiLU, torchvision's ``Conv2dNormActivation``
        as ``efficientnet_v2_s`` builds it."""
        layers = [
            tnn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
            tnn.BatchNorm2d(cout, eps=1e-3),
        ]
        return tnn.Sequential(*layers, *([tnn.SiLU(inplace=True)] if act else []))

    class MBConv(tnn.Module):
        """torchvision ``MBConv`` / ``FusedMBConv`` with row-mode stochastic depth."""

        def __init__(self, block, cin, expand, k, stride, cout, drop):
            super().__init__()
            from nm_hebb_jax.models.layers import make_divisible  # only this model imports JAX

            hidden = make_divisible(cin * expand)
            if block == "fused" and hidden != cin:
                layers = [
                    conv_bn_act(cin, hidden, k, stride),
                    conv_bn_act(hidden, cout, 1, act=False),
                ]
            elif block == "fused":
                layers = [conv_bn_act(cin, cout, k, stride)]
            else:
                squeeze = max(1, cin // 4)
                layers = [conv_bn_act(cin, hidden, 1)] if hidden != cin else []
                layers += [
                    conv_bn_act(hidden, hidden, k, stride, groups=hidden),
                    SqueezeExcitation(hidden, squeeze),
                    conv_bn_act(hidden, cout, 1, act=False),
                ]
            self.block = tnn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout
            self.drop = drop

        def forward(self, x):
            out = self.block(x)
            if not self.residual:
                return out
            if self.training and self.drop > 0:  # torchvision.ops.stochastic_depth(..., 'row')
                keep = 1.0 - self.drop
                noise = out.new_empty((out.shape[0], 1, 1, 1)).bernoulli_(keep).div_(keep)
                out = out * noise
            return out + x

    class SqueezeExcitation(tnn.Module):
        def __init__(self, channels, squeeze):
            super().__init__()
            self.fc1 = tnn.Conv2d(channels, squeeze, 1)
            self.fc2 = tnn.Conv2d(squeeze, channels, 1)

        def forward(self, x):
            scale = F.silu(self.fc1(x.mean((2, 3), keepdim=True)))
            return x * torch.sigmoid(self.fc2(scale))

    class EfficientNetV2S(tnn.Module):
        """torchvision ``efficientnet_v2_s`` with the stem stride 1 of our CIFAR variant."""

        def __init__(self):
            super().__init__()
            from nm_hebb_jax.models.efficientnet import EFFICIENTNET_V2_S_STAGES

            total = sum(row[5] for row in EFFICIENTNET_V2_S_STAGES)
            layers, cin, index = [conv_bn_act(3, 24, 3)], 24, 0
            for block, expand, k, stride, cout, n in EFFICIENTNET_V2_S_STAGES:
                for j in range(n):
                    drop = 0.2 * index / total
                    layers.append(
                        MBConv(block, cin, expand, k, stride if j == 0 else 1, cout, drop)
                    )
                    cin, index = cout, index + 1
            layers.append(conv_bn_act(cin, 1280, 1))
            self.features = tnn.Sequential(*layers)
            self.dropout = tnn.Dropout(0.2, inplace=True)
            self.linear = tnn.Linear(1280, num_classes)

        def forward(self, x):
            return self.linear(self.dropout(self.features(x).mean((2, 3))))

    class DenseBottleneck(tnn.Module):
        def __init__(self, cin, growth):
            super().__init__()
            self.bn1 = tnn.BatchNorm2d(cin)
            self.conv1 = tnn.Conv2d(cin, 4 * growth, 1, bias=False)
            self.bn2 = tnn.BatchNorm2d(4 * growth)
            self.conv2 = tnn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

        def forward(self, x):
            out = self.conv1(F.relu(self.bn1(x)))
            out = self.conv2(F.relu(self.bn2(out)))
            return torch.cat([out, x], 1)

    class Transition(tnn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.bn = tnn.BatchNorm2d(cin)
            self.conv = tnn.Conv2d(cin, cout, 1, bias=False)

        def forward(self, x):
            return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)

    class DenseNet121(tnn.Module):
        def __init__(self, growth=32, blocks=(6, 12, 24, 16)):
            super().__init__()
            cin = 2 * growth
            layers = [tnn.Conv2d(3, cin, 3, padding=1, bias=False)]
            for i, n in enumerate(blocks):
                for _ in range(n):
                    layers.append(DenseBottleneck(cin, growth))
                    cin += growth
                if i < len(blocks) - 1:
                    layers.append(Transition(cin, cin // 2))
                    cin //= 2
            self.features = tnn.Sequential(*layers)
            self.bn = tnn.BatchNorm2d(cin)
            self.linear = tnn.Linear(cin, num_classes)

        def forward(self, x):
            return self.linear(F.relu(self.bn(self.features(x))).mean((2, 3)))

    models = {
        "resnet18": ResNet18,
        "mobilenet_v2": MobileNetV2,
        "vgg11": VGG11,
        "efficientnet_v2_s": EfficientNetV2S,
        "densenet121": DenseNet121,
    }
    if name not in models:
        raise SystemExit(f"torch_reference: no PyTorch {name!r}; choose from {sorted(models)}")
    return models[name]()


class TorchWorker:
    def __init__(self, model, batch_path, threads, channels_last, lr=0.1):
        import torch

        torch.set_num_threads(threads)
        torch.manual_seed(0)
        data = np.load(batch_path)
        net = torch_model(model, int(data["num_classes"]))
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        net = net.to(memory_format=fmt).train()
        x = torch.from_numpy(np.ascontiguousarray(data["image"].transpose(0, 3, 1, 2)))
        self.x = x.contiguous(memory_format=fmt)
        self.y = torch.from_numpy(data["label"].astype(np.int64))
        decay = [p for n, p in net.named_parameters() if p.ndim > 1]
        no_decay = [p for n, p in net.named_parameters() if p.ndim <= 1]
        self.opt = torch.optim.SGD(
            [{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}],
            lr=lr, momentum=0.9, nesterov=True,
        )  # fmt: skip
        self.net, self.torch = net, torch
        self.num_params = sum(p.numel() for p in net.parameters())
        self.info = {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "mkldnn": bool(torch.backends.mkldnn.is_available()),
            "num_params": self.num_params,
        }

    def step(self):
        t0 = time.perf_counter()
        self.opt.zero_grad(set_to_none=True)
        loss = self.torch.nn.functional.cross_entropy(self.net(self.x), self.y)
        loss.backward()
        self.opt.step()
        float(loss.detach())
        return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------- JAX


class JaxWorker:
    def __init__(self, model, batch_path, overrides):
        import jax

        sys.path.insert(0, HERE)
        from step_bench import make_config, prepare_phase

        from nm_hebb_jax.train import sharding as S

        data = np.load(batch_path)
        cfg = make_config(model, "baseline", int(data["image"].shape[0]), "float32")
        for item in overrides:
            set_dotted(cfg, item)
        from nm_hebb_jax import cpu_runtime

        if cfg.cpu_tuning:
            # before the first JAX computation, as main.py does
            cpu_runtime.configure(malloc=cfg.cpu_malloc_tuning)
        batch = {"image": data["image"], "label": data["label"]}
        step_for, start, (self.state, self.ewc, self.batch) = prepare_phase(
            cfg, S.make_mesh(), 1, batch
        )
        t0 = time.perf_counter()
        self.fn = step_for(start).lower(self.state, self.ewc, self.batch).compile()
        compile_s = time.perf_counter() - t0
        cost = self.fn.cost_analysis()
        cost = cost[0] if isinstance(cost, list) else cost
        self.jax = jax
        self.num_params = sum(
            int(np.prod(x.shape)) for x in jax.tree.leaves(self.state.params["backbone"])
        )
        self.info = {
            "jax": jax.__version__,
            "overrides": list(overrides),
            "compile_s": compile_s,
            "flops": float(cost.get("flops", 0.0)) if cost else 0.0,
            "num_params": self.num_params,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "malloc_tuning": cpu_runtime.malloc_applied(),
        }

    def step(self):
        t0 = time.perf_counter()
        self.state, metrics = self.fn(self.state, self.ewc, self.batch)
        self.jax.block_until_ready((self.state, metrics))
        return time.perf_counter() - t0


def set_dotted(cfg, item: str) -> None:
    """Applies ``'a.b.c=value'`` to a ConfigDict (value parsed as a Python literal if it is one)."""
    import ast

    key, sep, value = item.partition("=")
    if not sep:
        raise SystemExit(f"torch_reference: override {item!r} is not KEY=VALUE")
    try:
        value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        pass
    *parents, leaf = key.split(".")
    node = cfg
    for name in parents:
        node = node[name]
    node[leaf] = value


def worker_main(spec: dict) -> None:
    """Reads commands from stdin ('step' / 'quit'), answers pickled results on stdout."""
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # library prints must not corrupt the pipe
    try:
        if spec["kind"] == "jax":
            w = JaxWorker(spec["model"], spec["batch_path"], spec["overrides"])
        else:
            w = TorchWorker(
                spec["model"], spec["batch_path"], spec["threads"], spec["channels_last"]
            )
        reply = {"ok": True, "info": w.info}
    except BaseException as e:  # report, do not hang the driver
        reply = {"ok": False, "error": f"{type(e).__name__}: {e}"}
        w = None
    pickle.dump(reply, out)
    out.flush()
    for line in sys.stdin:
        if line.strip() != "step" or w is None:
            break
        pickle.dump(w.step(), out)
        out.flush()


# -------------------------------------------------------------------------------------- driver


def cpu_busy(interval: float = 0.5) -> float | None:
    """Fraction of all CPU time that was busy over ``interval`` seconds (None off Linux)."""

    def read():
        with open("/proc/stat") as f:
            vals = [float(v) for v in f.readline().split()[1:]]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0.0)
        return sum(vals), idle

    try:
        t1, i1 = read()
        time.sleep(interval)
        t2, i2 = read()
    except OSError:
        return None
    return 1.0 - (i2 - i1) / max(t2 - t1, 1e-9)


def wait_idle(threshold: float, max_wait: float) -> float | None:
    """Waits (up to ``max_wait`` s) until the machine is < ``threshold`` busy; returns the load."""
    deadline = time.monotonic() + max_wait
    while True:
        busy = cpu_busy()
        if busy is None or busy < threshold or time.monotonic() > deadline:
            return busy


def receive(variant: str, proc) -> dict | float:
    """The worker's next pickled reply; a one-line exit if the worker died instead."""
    try:
        return pickle.load(proc.stdout)
    except EOFError:
        code = proc.wait()
        fix = (
            "killed by a signal (the OOM killer, if memory ran out): run fewer variants per "
            "invocation, since JAX workers with cpu_malloc_tuning keep their peak heap"
            if code < 0
            else "its error is printed above"
        )
        raise SystemExit(
            f"torch_reference: the worker for variant {variant!r} exited with code {code}; {fix}"
        ) from None


def parse_variant(v: str) -> dict:
    kind, _, rest = v.partition(":")
    items = [o for o in rest.split(",") if o]
    env = [o[len("env.") :] for o in items if o.startswith("env.")]
    overrides = [o for o in items if not o.startswith("env.")]
    if kind == "jax":
        return {"kind": "jax", "overrides": overrides, "env": env}
    if kind in ("torch", "torch_cl") and not overrides:
        return {"kind": "torch", "channels_last": kind == "torch_cl", "env": env}
    raise SystemExit(
        f"torch_reference: unknown variant {v!r}; use jax[:KEY=VALUE,...], torch or torch_cl "
        "(with env.NAME=VALUE items)"
    )


def save_batch(model: str, batch: int, path: str) -> None:
    sys.path.insert(0, HERE)
    from step_bench import make_config

    from nm_hebb_jax.train.loop import build_run

    cfg = make_config(model, "baseline", batch, "float32")
    run = build_run(cfg)
    b = run.dataset.train_batch(0, batch_size=batch)
    np.savez(path, image=b["image"], label=b["label"], num_classes=run.dataset.num_classes)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,mobilenet_v2")
    p.add_argument("--variants", default="jax;torch;torch_cl", help="';'-separated variants")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--idle-threshold", type=float, default=0.10)
    p.add_argument("--max-idle-wait", type=float, default=60.0)
    p.add_argument("--settle", type=float, default=0.0, help="seconds to sleep before each turn")
    p.add_argument(
        "--steps-per-turn",
        type=int,
        default=3,
        help="consecutive steps a variant runs per turn; the first of each turn is reported "
        "apart (it pays for the switch) and the others are the training-speed sample",
    )
    p.add_argument("--torch-python", default=sys.executable,
                   help="interpreter with torch installed (default: this one)")  # fmt: skip
    p.add_argument("--out", default="")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker_main(json.loads(args.worker))
        return

    variants = [v for v in args.variants.split(";") if v]
    report = {
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count()},
        "batch": args.batch,
        "threads": args.threads,
        "repeats": args.repeats,
        "idle_threshold": args.idle_threshold,
        "models": {},
    }
    for model in [m for m in args.models.split(",") if m]:
        batch_path = os.path.join("/tmp", f"torch_reference_{model}_{args.batch}_{os.getpid()}.npz")
        save_batch(model, args.batch, batch_path)
        procs = {}
        try:
            for v in variants:
                spec = {**parse_variant(v), "model": model, "batch_path": batch_path,
                        "threads": args.threads}  # fmt: skip
                python = args.torch_python if spec["kind"] == "torch" else sys.executable
                env = dict(os.environ)
                for item in spec.pop("env", []):
                    key, _, value = item.partition("=")
                    env[key] = value
                env["PYTHONPATH"] = os.pathsep.join(
                    [os.path.dirname(os.path.dirname(HERE)), env.get("PYTHONPATH", "")]
                )
                proc = subprocess.Popen(
                    [python, os.path.abspath(__file__), "--worker", json.dumps(spec)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                )  # fmt: skip
                procs[v] = (proc, None)
                reply = receive(v, proc)  # one at a time: builds don't compete
                if not reply["ok"]:
                    raise SystemExit(f"torch_reference: variant {v!r} failed: {reply['error']}")
                procs[v] = (proc, reply["info"])

            def ask(v, proc):
                try:
                    proc.stdin.write(b"step\n")
                    proc.stdin.flush()
                except BrokenPipeError:
                    pass  # the worker is gone: receive() says how
                return receive(v, proc)

            for _ in range(args.warmup):
                for v, (proc, _info) in procs.items():
                    ask(v, proc)
            times = {v: [] for v in variants}
            firsts = {v: [] for v in variants}
            loads = {v: [] for v in variants}
            for _ in range(args.repeats):
                for v, (proc, _info) in procs.items():
                    time.sleep(args.settle)
                    loads[v].append(wait_idle(args.idle_threshold, args.max_idle_wait))
                    turn = [ask(v, proc) for _ in range(args.steps_per_turn)]
                    firsts[v].append(turn[0])
                    times[v].extend(turn[1:] if len(turn) > 1 else turn)
        finally:
            for proc, _ in procs.values():
                with contextlib.suppress(BrokenPipeError):
                    proc.stdin.close()
                proc.wait()
            os.remove(batch_path)

        infos = {v: info for v, (_, info) in procs.items()}
        sys.path.insert(0, HERE)
        from step_bench import model_train_flops

        flops = model_train_flops(model, args.batch)
        nparams = {v: i["num_params"] for v, i in infos.items()}
        rows = {}
        for v in variants:
            med = float(np.median(times[v]))
            seen = [x for x in loads[v] if x is not None]
            rows[v] = {
                "median_s": med,
                "min_s": float(min(times[v])),
                "max_s": float(max(times[v])),
                "images_per_s": args.batch / med,
                "achieved_gflops": flops / 1e9 / med,
                "first_step_of_turn_median_s": float(np.median(firsts[v])),
                "max_load_before_turn": max(seen) if seen else None,
                "info": infos[v],
            }
        ratios = {
            f"{a}/{b}": rows[b]["median_s"] / rows[a]["median_s"]  # throughput ratio a over b
            for a in variants if a.startswith("jax")
            for b in variants if b.startswith("torch")
        }  # fmt: skip
        report["models"][model] = {
            "gflop_per_step": flops / 1e9,
            "num_params": nparams,
            "steps": rows,
            "throughput_ratios": ratios,
        }
        print(f"\n{model}  batch {args.batch}  threads {args.threads}  ({args.repeats} repeats)")
        print(f"parameters: {nparams}")
        print(f"{'variant':44s} {'median s':>9s} {'min':>7s} {'max':>7s} {'img/s':>7s} "
              f"{'GFLOP/s':>8s} {'1st s':>7s} {'load':>5s}")  # fmt: skip
        for v, r in rows.items():
            load = r["max_load_before_turn"]
            print(
                f"{v[:44]:44s} {r['median_s']:9.3f} {r['min_s']:7.3f} {r['max_s']:7.3f} "
                f"{r['images_per_s']:7.1f} {r['achieved_gflops']:8.1f} "
                f"{r['first_step_of_turn_median_s']:7.3f} "
                f"{'-' if load is None else f'{load:.2f}':>5s}"
            )
        for k, r in ratios.items():
            print(f"throughput {k}: {r:.3f}")
        if len(set(nparams.values())) != 1:
            print("WARNING: parameter counts differ between variants")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
