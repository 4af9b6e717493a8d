r"""Cost of NM-Hebb's hypergradient step and of XLA:CPU control flow (medians, interleaved).

  python experiments/bench/hyper_step_bench.py [--config=configs/quickstart.py] [--repeats=15]

Prints, for the config's model and batch, the median time of (a) the plain phase-1 step, (b) the
hypergradient step variant, (c) g_R (gradient of the ungated regularisers) at the top level of a
jitted computation and (d) the same g_R inside a ``lax.cond`` branch, plus the ratios b/a and d/c
measured in the same run. The variants are interleaved so machine load affects them alike.
Not a unit test: timings depend on the machine (CPU XLA here).
"""

import argparse
import importlib.util
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from step_bench import stepping  # noqa: E402

from nm_hebb_jax.objectives import regularizer_grad  # noqa: E402
from nm_hebb_jax.train import sharding as S  # noqa: E402
from nm_hebb_jax.train.loop import Trainer, build_run  # noqa: E402
from nm_hebb_jax.train.state import init_ewc_state  # noqa: E402


def load_config(path: str):
    path, _, arg = path.partition(":")
    spec = importlib.util.spec_from_file_location("bench_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg or None)


def timed(fn):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/quickstart.py")
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args()
    cfg = load_config(args.config)
    run = build_run(cfg, mesh=S.make_mesh(jax.devices()[:1]))
    trainer = Trainer(run, "/nonexistent-not-written")
    params, bs = trainer.init_variables()
    plan, tx, step_for, start, _ = trainer.phase_setup(1)
    if plan.gate_mode != "hypergradient":
        raise SystemExit("the config's method/gate does not use the hypergradient")
    k = cfg.nm.hyper_every
    plain, hyper = step_for(start + 1 if k > 2 else start), step_for(start)
    state = trainer.make_state(params, bs, start, tx, plan)
    ewc = jax.device_put(init_ewc_state(state.params["backbone"]), trainer.repl)
    batch = S.global_batch(run.dataset.train_batch(0, batch_size=cfg.batch_size), trainer.mesh)
    obj_state = {"batch_stats": state.batch_stats, "ewc": ewc}
    rng = jax.random.key(0)
    g_r = regularizer_grad(plan.objective)
    top = jax.jit(lambda p: g_r(p, obj_state, batch, rng))
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    cond = jax.jit(
        lambda p, c: jax.lax.cond(c, lambda: g_r(p, obj_state, batch, rng), lambda: zeros)
    )
    fns = {
        "plain_step": stepping(plain, (state, ewc, batch)),
        "hyper_step": stepping(hyper, (state, ewc, batch)),
        "g_R_top_level": lambda: top(state.params),
        "g_R_in_cond": lambda: cond(state.params, True),
    }
    for fn in fns.values():  # compile
        timed(fn)
    times = {name: [] for name in fns}
    for _ in range(args.repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn))
    med = {name: float(np.median(t)) for name, t in times.items()}
    out = {
        "config": args.config,
        "backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "batch_size": cfg.batch_size,
        "median_s": med,
        "spread_s": {n: [float(min(t)), float(max(t))] for n, t in times.items()},
        "hyper_over_plain": med["hyper_step"] / med["plain_step"],
        "cond_over_top_level": med["g_R_in_cond"] / med["g_R_top_level"],
        "mean_phase1_overhead_at_hyper_every": (2 * med["hyper_step"] + (k - 2) * med["plain_step"])
        / (k * med["plain_step"])
        if k > 2
        else med["hyper_step"] / med["plain_step"],
        "hyper_every": k,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
