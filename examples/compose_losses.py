"""NM-Hebb's phase-1 loss composed in your own JAX code: init, a jitted optax step, every term.

    python examples/compose_losses.py

Builds CE + ν·(λ_hebb R_Hebb + λ_ewc R_EWC) (docs/method.md, "Phase 1") from the transforms of
``nm_hebb_jax.objectives`` for a tiny ResNet-18 and one batch of random images, sets the EWC
anchor and Fisher as the trainer's refresh does, then takes three SGD steps and prints the terms.
The trainer (``main.py``) adds data, schedules and the learning of φ by the hypergradient
(docs/method.md, "How φ learns"); here φ stays at its initial function.
"""

import jax
import jax.numpy as jnp
import optax

from nm_hebb_jax import losses
from nm_hebb_jax import objectives as O
from nm_hebb_jax.models import get_model
from nm_hebb_jax.neuromod import init_neuromod
from nm_hebb_jax.train.ewc import fisher_diagonal, init_ewc_state


def main(steps: int = 3) -> list[dict[str, float]]:
    # One block per stage, width 8: runs in seconds on a CPU. Drop the overrides for the real
    # ResNet-18, or pick vgg11, mobilenet_v2, efficientnet_v2_s, densenet121.
    model = get_model("resnet18", num_classes=10, stage_sizes=(1, 1, 1, 1), width=8)
    layer = model.default_hebb_layer  # 'stage2_block0/conv1'; model.conv_layer_names() lists all
    phase1 = O.with_neuromodulation(
        O.with_ewc(
            O.with_hebbian(O.classification_objective(model), layers=(layer,), weight=0.1),
            weight=1.0,
        ),
        targets=("hebb", "ewc"),
    )

    k_data, k_model, k_nm, k_step = jax.random.split(jax.random.key(0), 4)
    images = jax.random.normal(k_data, (32, 32, 32, 3))  # normalised images [N, H, W, 3]
    batch = {"image": images, "label": jnp.arange(32) % 10}
    variables = model.init(k_model, images[:1], train=False)  # {'params', 'batch_stats'}
    params = {"backbone": variables["params"], "neuromod": init_neuromod(k_nm)}
    state = {"batch_stats": variables["batch_stats"], "ewc": init_ewc_state(variables["params"])}

    # EWC: anchor θ* = the current parameters (init_ewc_state), F = the mean squared per-example
    # CE gradient with BatchNorm in inference mode (before this, F = 0 and the term is 0).
    def example_ce(backbone, example, batch_stats):
        variables = {"params": backbone, "batch_stats": batch_stats}
        logits, _ = model.apply(variables, example["image"][None], train=False)
        return losses.cross_entropy(logits, example["label"][None])[0]

    state["ewc"]["fisher"] = fisher_diagonal(
        example_ce, params["backbone"], [batch], extra_args=(state["batch_stats"],)
    )

    # SGD on the backbone; φ = params['neuromod'] is frozen (the trainer moves it by the
    # hypergradient, not by this loss, whose gradient only ever closes the gate).
    tx = optax.multi_transform(
        {"sgd": optax.sgd(0.05, momentum=0.9), "frozen": optax.set_to_zero()},
        {"backbone": "sgd", "neuromod": "frozen"},
    )
    opt_state = tx.init(params)

    @jax.jit
    def train_step(params, opt_state, state, batch, rng):
        (loss, aux), grads = jax.value_and_grad(phase1, has_aux=True)(params, state, batch, rng)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        state = {**state, "batch_stats": aux["batch_stats"]}
        return params, opt_state, state, loss, aux["terms"], aux["gate"]

    history = []
    for step in range(steps):
        rng = jax.random.fold_in(k_step, step)
        params, opt_state, state, loss, terms, gate = train_step(
            params, opt_state, state, batch, rng
        )
        row = {"loss": float(loss), "gate": float(gate)}
        row.update({name: float(value) for name, value in terms.items()})
        print(f"step {step}: " + "  ".join(f"{k}={v:.4g}" for k, v in row.items()))
        history.append(row)
    return history


if __name__ == "__main__":
    main()
