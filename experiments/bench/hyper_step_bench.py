r"""Cost of NM-Hebb's hypergradient step, of XLA:CPU control flow and of a forward-mode g_R.

  python experiments/bench/hyper_step_bench.py [--config=configs/quickstart.py] [--repeats=15]
  python experiments/bench/hyper_step_bench.py --model=resnet18 --batch=128 --no-cond

Prints the median time (interleaved repeats, so machine load affects them alike) of
  ``plain_step``      the plain phase-1 step,
  ``hyper_step``      its exact hypergradient variant (``hyper_step=True``),
  ``reg_forward``     the ungated regulariser value alone (forward to the tapped layer),
  ``g_R_top_level``   g_R (its gradient) at the top level of a jitted computation,
  ``g_R_in_cond``     the same g_R inside a ``lax.cond`` branch (skipped with ``--no-cond``),
  ``g_R_dot_jvp``     ⟨g_R, v⟩ for a fixed direction v by forward mode (``jax.jvp``), the one
                      number the hypergradient's applying step needs from a fresh g_R,
with the ratios hyper/plain, cond/top level and jvp/vjp measured in the same run.

``--model``/``--batch``: a full-size backbone on the bundled digits data (step_bench's
configuration) instead of ``--config``. The CPU runtime (XLA flags, malloc) is configured from the
config as ``main.py`` does. Not a unit test: timings depend on the machine (CPU XLA here).
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

from step_bench import make_config, stepping  # noqa: E402

from nm_hebb_jax import cpu_runtime  # noqa: E402
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
    p.add_argument("--model", default="", help="a full-size backbone instead of --config")
    p.add_argument("--batch", type=int, default=128, help="batch size with --model")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--no-cond", action="store_true", help="skip the g_R_in_cond row")
    args = p.parse_args()
    if args.model:
        cfg = make_config(args.model, "nm_hebb", args.batch, "float32")
    else:
        cfg = load_config(args.config)
    tuning = cpu_runtime.configure(malloc=cfg.cpu_malloc_tuning) if cfg.cpu_tuning else []
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

    def reg(backbone, params):
        _, aux = plan.objective({**params, "backbone": backbone}, obj_state, batch, rng)
        return aux["regularizer"]

    top = jax.jit(lambda p: g_r(p, obj_state, batch, rng))
    forward = jax.jit(lambda p: reg(p["backbone"], p))
    direction = top(state.params)["backbone"]  # v = g_R itself, so <g_R, v> > 0 is a check
    dot_jvp = jax.jit(lambda p, v: jax.jvp(lambda b: reg(b, p), (p["backbone"],), (v,))[1])
    fns = {
        "plain_step": stepping(plain, (state, ewc, batch)),
        "hyper_step": stepping(hyper, (state, ewc, batch)),
        "reg_forward": lambda: forward(state.params),
        "g_R_top_level": lambda: top(state.params),
        "g_R_dot_jvp": lambda: dot_jvp(state.params, direction),
    }
    if not args.no_cond:
        zeros = jax.tree.map(jnp.zeros_like, state.params)
        cond = jax.jit(
            lambda p, c: jax.lax.cond(c, lambda: g_r(p, obj_state, batch, rng), lambda: zeros)
        )
        fns["g_R_in_cond"] = lambda: cond(state.params, True)
    by_vjp = sum(float(jnp.vdot(v, v)) for v in jax.tree.leaves(direction))
    by_jvp = float(fns["g_R_dot_jvp"]())
    for fn in fns.values():  # compile
        timed(fn)
    times = {name: [] for name in fns}
    for _ in range(args.repeats):
        for name, fn in fns.items():
            times[name].append(timed(fn))
    med = {name: float(np.median(t)) for name, t in times.items()}
    out = {
        "config": f"{args.model} batch {args.batch} (step_bench)" if args.model else args.config,
        "backend": jax.default_backend(),
        "cpu_count": os.cpu_count(),
        "cpu_tuning_flags": tuning,
        "malloc_tuning": cpu_runtime.malloc_applied(),
        "batch_size": cfg.batch_size,
        "median_s": med,
        "spread_s": {n: [float(min(t)), float(max(t))] for n, t in times.items()},
        "hyper_over_plain": med["hyper_step"] / med["plain_step"],
        "jvp_over_vjp": med["g_R_dot_jvp"] / med["g_R_top_level"],
        "g_R_dot_g_R": {"vjp_then_dot": by_vjp, "jvp": by_jvp},
        "mean_phase1_overhead_at_hyper_every": (2 * med["hyper_step"] + (k - 2) * med["plain_step"])
        / (k * med["plain_step"])
        if k > 2
        else med["hyper_step"] / med["plain_step"],
        "hyper_every": k,
    }
    if "g_R_in_cond" in med:
        out["cond_over_top_level"] = med["g_R_in_cond"] / med["g_R_top_level"]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
