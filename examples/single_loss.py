"""One loss of nm_hebb_jax in a plain Flax/optax training step that knows nothing of its trainer.

    python examples/single_loss.py

A small CNN on scikit-learn's bundled 8x8 digits (offline) sows its first conv layer's activation;
the step adds the Hebbian regulariser R_Hebb of that layer (docs/method.md, "Hebbian regulariser")
to the cross-entropy. The other losses are pure functions of arrays too and drop in the same way:

    losses.pairwise_contrastive_loss(embedding, labels, margin=1.0)  # on embeddings [N, D]
    losses.ewc_penalty(params, anchor, fisher)                       # on parameter pytrees
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from sklearn.datasets import load_digits

from nm_hebb_jax import losses


class SmallCNN(nn.Module):
    num_classes: int = 10

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(16, (3, 3), name="conv1")(x))
        self.sow("intermediates", "conv1_act", x)  # the activation R_Hebb reads
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(32, (3, 3), name="conv2")(x))
        embedding = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="head")(embedding), embedding


def main(steps: int = 100, hebb_weight: float = 1.0, seed: int = 0) -> dict[str, float]:
    digits = load_digits()
    x = jnp.asarray(digits.images[..., None] / 16.0, jnp.float32)  # [1797, 8, 8, 1]
    y = jnp.asarray(digits.target)
    model = SmallCNN()
    params = model.init(jax.random.key(seed), x[:1])["params"]
    tx = optax.adam(1e-2)
    opt_state = tx.init(params)

    def loss_fn(params, images, labels):
        (logits, _), state = model.apply({"params": params}, images, mutable=["intermediates"])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        (activation,) = state["intermediates"]["conv1_act"]
        hebb = losses.hebbian_regularizer(activation, params["conv1"]["kernel"])
        return ce + hebb_weight * hebb, {"ce": ce, "hebb": hebb}

    @jax.jit
    def train_step(params, opt_state, images, labels):
        (loss, terms), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, images, labels)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, terms

    order = np.random.default_rng(seed).permutation(len(y))
    for step in range(steps):
        idx = order[(step * 64) % 1728 :][:64]  # batches of 64, wrapping over the data
        params, opt_state, terms = train_step(params, opt_state, x[idx], y[idx])
        if step % 25 == 0 or step == steps - 1:
            print(f"step {step}: ce={float(terms['ce']):.4f}  hebb={float(terms['hebb']):.4g}")
    (logits, _), state = model.apply({"params": params}, x, mutable=["intermediates"])
    (activation,) = state["intermediates"]["conv1_act"]
    result = {
        "accuracy": float(jnp.mean(jnp.argmax(logits, -1) == y)),
        "hebb": float(losses.hebbian_regularizer(activation, params["conv1"]["kernel"])),
    }
    print(f"all 1,797 digits: accuracy={result['accuracy']:.3f}  hebb={result['hebb']:.4g}")
    return result


if __name__ == "__main__":
    main()
