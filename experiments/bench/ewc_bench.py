r"""What the EWC term costs a training step on XLA:CPU, against what memory traffic predicts.

  python experiments/bench/ewc_bench.py --models efficientnet_v2_s,resnet18 --repeats 10 --with-step

The EWC penalty and its gradient are elementwise work over every backbone parameter, so on a
CPU their cost is memory traffic, and it grows with the parameter count, not with the batch.
For each backbone's real parameter tree (random values, float32), this times jitted functions
that do only that parameter-sized work:

  ``update``             the trainer's optimiser (``make_optimizer``: weight decay on kernels,
                         SGD with Nesterov momentum) applied to a given gradient: it reads θ,
                         the gradient and the momentum and writes θ and the momentum (5 passes);
  ``ewc``                the same plus ``losses.ewc_penalty`` (``normalize=True``, as the trainer
                         calls it) and its autodiff gradient, added to the gradient; on top of
                         ``update`` it reads θ, θ*, F for the value, F for the normaliser Σ F and
                         θ*, F for the gradient (6 more passes if XLA fuses the gradient into the
                         update);
  ``ewc_analytic``       ``ewc`` with the gradient written by hand (``custom_vjp``, 2 F̃ (θ − θ*);
                         ``phase1_overhead_bench._analytic``), to see whether autodiff's form of
                         it matters;
  ``ewc_prenormalized``  ``normalize=False`` on a Fisher normalised beforehand (what storing
                         F̃ = F / mean F at each Fisher refresh would save: the Σ F pass; 5 more);
  ``ce_step``            (``--with-step``) the trainer's CE training step of the same backbone at
                         ``--batch``, so the EWC's extra time is a share of a step of the same run.

Turns of 5 consecutive calls per variant, round-robin, the first call of a turn dropped; prints
medians with min and max and the ratio to ``update``. The "predicted" figure is the extra passes
times the parameter bytes over the bandwidth ``update`` achieved in this run (5 passes in its
median time): a floor for a two-pass penalty (value, then gradient), not a measurement.
Timings, not tests.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from phase1_overhead_bench import _analytic  # noqa: E402
from step_bench import make_config, prepare_phase, print_ratios, stepping, time_turns  # noqa: E402

from nm_hebb_jax import cpu_runtime, losses  # noqa: E402
from nm_hebb_jax.models import get_model  # noqa: E402
from nm_hebb_jax.train import make_optimizer  # noqa: E402
from nm_hebb_jax.train import sharding as S  # noqa: E402

#: Extra passes over the parameters, on top of ``update``'s 5, if the gradient fuses into it.
EXTRA_PASSES = {"ewc": 6, "ewc_analytic": 6, "ewc_prenormalized": 5}
#: λ_ewc times the gate value the penalty's gradient is scaled by (any constant does).
WEIGHT = 0.3


def parameter_variants(model: str, cfg, **overrides) -> tuple[dict, int]:
    """Zero-argument calls of the parameter-only variants, and the backbone's parameter count.

    Each call (:func:`step_bench.stepping`) returns ``((params, opt_state), penalty)`` and feeds
    its new state to the next;
    ``overrides`` are ``get_model`` fields (the tests use a small ResNet).
    """
    net = get_model(model, num_classes=10, **overrides)
    shapes = jax.eval_shape(
        lambda: net.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3)), train=False)
    )["params"]
    keys = iter(jax.random.split(jax.random.key(0), 4 * len(jax.tree.leaves(shapes))))
    draw = lambda sample: jax.tree.map(lambda s: sample(next(keys), s.shape), shapes)
    params = {"backbone": draw(jax.random.normal)}
    grads = {"backbone": draw(jax.random.normal)}
    anchor = draw(jax.random.normal)
    fisher = draw(jax.random.uniform)
    fisher_n = losses.normalize_fisher(fisher)
    tx = make_optimizer(cfg, optax.constant_schedule(0.1), train_neuromod=False)

    def build(penalty):
        def fn(state, grads, anchor, fisher):
            params, opt_state = state
            if penalty is not None:
                value, g = jax.value_and_grad(penalty)(params["backbone"], anchor, fisher)
                grads = {
                    "backbone": jax.tree.map(lambda a, b: a + WEIGHT * b, grads["backbone"], g)
                }
            else:
                value = jnp.zeros(())
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), value

        return jax.jit(fn)

    plain = lambda p, a, f: losses.ewc_penalty(p, a, f, normalize=False)
    fns = {
        "update": (build(None), fisher),
        "ewc": (build(losses.ewc_penalty), fisher),
        "ewc_analytic": (build(_analytic), fisher),
        "ewc_prenormalized": (build(plain), fisher_n),
    }
    state = (params, tx.init(params))
    calls = {name: stepping(fn, (state, grads, anchor, f)) for name, (fn, f) in fns.items()}
    count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
    return calls, count


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="efficientnet_v2_s,resnet18")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--with-step", action="store_true", help="also time the CE training step")
    p.add_argument("--out", default="")
    args = p.parse_args()
    cpu_runtime.configure()
    results = {}
    for model in args.models.split(","):
        cfg = make_config(model, "baseline", args.batch, "float32")
        calls, count = parameter_variants(model, cfg)
        if args.with_step:
            step_for, start, step_args = prepare_phase(cfg, S.make_mesh())
            calls["ce_step"] = stepping(step_for(start).lower(*step_args).compile(), step_args)
        for call in calls.values():
            jax.block_until_ready(call())
        times = time_turns(calls, args.repeats, 5)
        print(f"\n{model}: {count / 1e6:.2f}M parameters ({4 * count / 1e6:.0f} MB a pass)")
        rows = print_ratios(times)
        t_update = rows["update"]["median_s"]
        bandwidth = 5 * 4 * count / t_update
        print(f"update's bandwidth: {bandwidth / 1e9:.1f} GB/s (5 passes)")
        for name, passes in EXTRA_PASSES.items():
            extra = rows[name]["median_s"] - t_update
            predicted = passes * 4 * count / bandwidth
            rows[name].update(extra_s=extra, predicted_extra_s=predicted)
            share = ""
            if "ce_step" in rows:
                rows[name]["extra_over_ce_step"] = extra / rows["ce_step"]["median_s"]
                share = f" = {100 * rows[name]['extra_over_ce_step']:.1f}% of the CE step"
            print(
                f"{name:18s} extra {1e3 * extra:6.1f} ms{share}; "
                f"predicted from {passes} passes: {1e3 * predicted:.1f} ms"
            )
        results[model] = {
            "num_params": count,
            "bandwidth_gb_s": bandwidth / 1e9,
            "rows": rows,
            "repeats": args.repeats,
            "batch": args.batch,
        }
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"backend": jax.default_backend(), "models": results}, f, indent=1)


if __name__ == "__main__":
    main()
