"""Train NM-Hebb: ``python main.py --config=configs/<file>.py[:arg] --workdir=DIR
[--config.x=...]``."""

import json

from absl import app, flags, logging
from ml_collections import config_flags

from nm_hebb_jax import cli, cpu_runtime
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
    # The project's errors are one line with their exit status (nm_hebb_jax/errors.py); Ctrl-C
    # inside the training loop saves first and is reported by the loop's Preempted.
    with cli.reported(
        interrupted="interrupted (Ctrl-C) without saving; relaunch the same command to resume "
        "from the last checkpoint"
    ):
        if "distributed" in FLAGS.config:
            maybe_initialize(FLAGS.config)
        if FLAGS.config.get("kind") == "hebbian_cnn":
            from nm_hebb_jax.hebbian.train import train_and_evaluate_hebbian

            summary = train_and_evaluate_hebbian(FLAGS.config, FLAGS.workdir)
        else:
            summary = train_and_evaluate(FLAGS.config, FLAGS.workdir)
    print(json.dumps(summary, default=str))


if __name__ == "__main__":
    cli.run(main)
