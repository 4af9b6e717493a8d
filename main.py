"""Train NM-Hebb: ``python main.py --config=configs/<file>.py[:arg] --workdir=DIR
[--config.x=...]``."""

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from nm_hebb_jax import cpu_runtime
from nm_hebb_jax.errors import NonFiniteError, Preempted, UsageError
from nm_hebb_jax.train.distributed import maybe_initialize
from nm_hebb_jax.train.loop import train_and_evaluate

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
config_flags.DEFINE_config_file(
    "config", None, "Config file (configs/*.py[:arg]).", lock_config=True
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.WARNING)
    if FLAGS.config.get("cpu_tuning", True):
        # before JAX starts its backend
        cpu_runtime.configure(malloc=FLAGS.config.get("cpu_malloc_tuning", True))
    if "distributed" in FLAGS.config:
        maybe_initialize(FLAGS.config)
    try:
        if FLAGS.config.get("kind") == "hebbian_cnn":
            from nm_hebb_jax.hebbian.train import train_and_evaluate_hebbian

            summary = train_and_evaluate_hebbian(FLAGS.config, FLAGS.workdir)
        else:
            summary = train_and_evaluate(FLAGS.config, FLAGS.workdir)
    except UsageError as e:  # a mistake in the input (config, data, workdir): one line, exit 2
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except NonFiniteError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
    except Preempted as e:
        print(f"stopped: {e}", file=sys.stderr)
        sys.exit(0)
    print(json.dumps(summary, default=str))


if __name__ == "__main__":
    app.run(main)
