#!/usr/bin/env bash
# Runs Hebbian-CNN configurations one after another on CPU (niced), logging to /tmp.
#
#   experiments/hebbian_cnn/run.sh NAME "OVERRIDES" [NAME "OVERRIDES" ...]
#
# Each NAME trains runs/hebbian_cnn/NAME with configs/hebbian_cnn.py plus OVERRIDES (space-separated
# --config.x=y flags), prints the final JSON line to /tmp/hebb_NAME.log and the wall time to
# /tmp/hebb_NAME.time. DATA (default ../shared/data/cifar10_train.npz relative to the repo root)
# is the npz file. Re-running a NAME resumes its checkpoint.
set -euo pipefail
cd "$(dirname "$0")/../.."
DATA=${DATA:-../shared/data/cifar10_train.npz}
PY=${PY:-/work/venv/bin/python}
while [ $# -ge 2 ]; do
  name=$1; overrides=$2; shift 2
  start=$(date +%s)
  # shellcheck disable=SC2086
  nice -n 10 "$PY" main.py --config=configs/hebbian_cnn.py --workdir="runs/hebbian_cnn/$name" \
    --config.data.path="$DATA" --config.log.progress=False $overrides > "/tmp/hebb_$name.log" 2>&1
  echo "$name wall_s=$(( $(date +%s) - start )) overrides: $overrides" | tee "/tmp/hebb_$name.time"
done
