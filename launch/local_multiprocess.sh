#!/usr/bin/env bash
# A pod on one machine: K JAX processes x D CPU devices of one `harmony_jax.train` command, joined
# over localhost as a TPU slice's hosts or a SLURM job's tasks are (same code path: each process
# gets JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID; CPU collectives over gloo).
#
#   launch/local_multiprocess.sh 2 4 configs/tiny.py runs/pod [--config.x=y ...]
#
# Output lines are prefixed [p<i>]. Ctrl-C or SIGTERM to this script reaches every process: they
# save one checkpoint of the current step and exit 0; rerunning the same command resumes. When one
# process dies the others stop within seconds, naming the last complete checkpoint.
set -euo pipefail
if [[ $# -lt 4 ]]; then
  echo "usage: launch/local_multiprocess.sh PROCESSES DEVICES_PER_PROCESS CONFIG WORKDIR [--config.x=y ...]" >&2
  exit 1
fi
processes=$1 devices=$2 config=$3 workdir=$4
shift 4
cd "$(dirname "$0")/.."
python=${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}
exec "$python" -m harmony_jax.parallel.local_cluster --processes "$processes" --devices "$devices" \
  -- "$python" -m harmony_jax.train --config "$config" --workdir "$workdir" "$@"
