#!/usr/bin/env bash
# Train on a Cloud TPU VM slice in two stages: every worker runs the same `python -m
# harmony_jax.encode` command (each encodes its own shards of the clip folder once), then the same
# `python -m harmony_jax.train` command on those latent records (data.source=latents, so the
# codec encoders and umT5 are never loaded). JAX finds its peers from the TPU metadata
# (harmony_jax.parallel.distributed).
#
#   launch/tpu_pod.sh all --name harmony --zone us-east5-a --type v5p-64 \
#       --config configs/harmony_5b.py --src /mnt/data/clips --latents /mnt/data/latents_5b \
#       --workdir gs://BUCKET/runs/harmony_5b -- --config.mesh.fsdp=-1 --config.mesh.data=1
#
# --src and --latents are paths every worker sees (a Filestore/NFS mount, or a bucket mounted
# with gcsfuse); without --latents, `train` reads the config's own data source.
# Commands (run them one by one, or `all` = up, install, encode (with --src), train, logs):
#   up       create the slice, or start it if it exists and is stopped (reuses a running one)
#   install  copy this checkout (tracked + untracked, not ignored) to every worker and pip install
#            it with jax[tpu] in ~/harmony_venv
#   encode   encode --src into --latents on every worker (detached), stream worker 0's log until
#            it exits, then check the manifest is there; rerunning resumes a killed encode
#   train    start the run on every worker (detached, so it survives a dropped ssh), then stream
#            worker 0's log until its process exits; Ctrl-C stops streaming, not training
#   logs     stream worker 0's log again
#   kill     stop the encode and training processes on every worker
#   stop     stop the slice's VMs (single-host slices; pod slices can only be deleted)
#   delete   delete the slice
#   status   describe the slice
# Arguments after `--` go to harmony_jax.encode and harmony_jax.train alike (e.g.
# --config.batch_size=128), so both stages see the same config.
# Rerunning `train` with the same --workdir resumes from the latest checkpoint there.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }

[[ $# -ge 1 ]] || usage 1
command=$1
shift
[[ $command == help || $command == -h || $command == --help ]] && usage 0
name=${TPU_NAME:-harmony}
zone=${TPU_ZONE:-}
accelerator=${TPU_TYPE:-v5p-64}
runtime=${TPU_RUNTIME:-v2-alpha-tpuv5}
project=${TPU_PROJECT:-}
spot=0
config=configs/harmony_5b.py
workdir=
src=
latents=
train_args=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --name) name=$2; shift 2 ;;
    --zone) zone=$2; shift 2 ;;
    --type) accelerator=$2; shift 2 ;;
    --runtime) runtime=$2; shift 2 ;;
    --project) project=$2; shift 2 ;;
    --spot) spot=1; shift ;;
    --config) config=$2; shift 2 ;;
    --workdir) workdir=$2; shift 2 ;;
    --src) src=$2; shift 2 ;;
    --latents) latents=$2; shift 2 ;;
    --) shift; train_args=("$@"); break ;;
    -h|--help) usage 0 ;;
    *) echo "tpu_pod.sh: unknown option $1" >&2; usage 1 ;;
  esac
done
[[ -n $zone ]] || { echo "tpu_pod.sh: --zone (or TPU_ZONE) is required" >&2; exit 1; }

gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone "$zone")
[[ -n $project ]] && where+=(--project "$project")
log=harmony_train.log  # in each worker's home directory
encode_log=harmony_encode.log
repo_root=$(cd "$(dirname "$0")/.." && pwd)

on_workers() {  # on_workers WORKER COMMAND: run a shell command on one worker or on all
  "${gcloud_tpu[@]}" ssh "$name" "${where[@]}" --worker="$1" --command "$2"
}

up() {
  local state
  state=$("${gcloud_tpu[@]}" describe "$name" "${where[@]}" --format='value(state)' 2>/dev/null \
    || true)
  case $state in
    "") local extra=()
        [[ $spot == 1 ]] && extra+=(--spot)
        "${gcloud_tpu[@]}" create "$name" "${where[@]}" --accelerator-type "$accelerator" \
          --version "$runtime" "${extra[@]}" ;;
    STOPPED) "${gcloud_tpu[@]}" start "$name" "${where[@]}" ;;
    READY) echo "reusing $name ($accelerator) in $zone" ;;
    *) echo "tpu_pod.sh: $name is $state; wait for READY or delete it" >&2; exit 1 ;;
  esac
}

install() {
  local archive
  archive=$(mktemp --suffix=.tgz)
  (cd "$repo_root" && git ls-files -z --cached --others --exclude-standard \
    | tar --null -T - -czf "$archive")
  "${gcloud_tpu[@]}" scp "$archive" "$name:harmony_jax.tgz" "${where[@]}" --worker=all
  rm -f "$archive"
  on_workers all 'set -e
    rm -rf ~/harmony_jax && mkdir ~/harmony_jax && tar -xzf ~/harmony_jax.tgz -C ~/harmony_jax
    [ -d ~/harmony_venv ] || python3 -m venv ~/harmony_venv
    ~/harmony_venv/bin/pip install -q --upgrade pip
    jax_version=$(sed -n "s/^jax==//p" ~/harmony_jax/requirements.txt)
    ~/harmony_venv/bin/pip install -q -e ~/harmony_jax "jax[tpu]==$jax_version"'
}

encode() {
  [[ -n $src && -n $latents ]] || { echo "tpu_pod.sh: encode needs --src and --latents" >&2
                                    exit 1; }
  local args manifest
  args=$(printf '%q ' --config "$config" --src "$src" --dst "$latents" "${train_args[@]}")
  on_workers all "cd ~/harmony_jax || exit 1; nohup ~/harmony_venv/bin/python -m harmony_jax.encode \
    $args > ~/$encode_log 2>&1 < /dev/null & echo \$! > ~/harmony_encode.pid"
  on_workers 0 "tail --pid=\$(cat ~/harmony_encode.pid) -n +1 -F ~/$encode_log"
  manifest=$(printf '%q' "$latents/manifest.json")
  on_workers 0 "test -f $manifest" || { echo "tpu_pod.sh: encode did not finish ($latents has" \
    "no manifest.json); see ~/$encode_log on each worker, then rerun encode" >&2; exit 1; }
}

train() {
  [[ -n $workdir ]] || { echo "tpu_pod.sh: --workdir gs://... is required" >&2; exit 1; }
  local args data=()  # quoted here, word-split on the worker; ~ in double quotes expands there
  [[ -n $latents ]] && data=(--config.data.source=latents "--config.data.root=$latents")
  args=$(printf '%q ' --config "$config" --workdir "$workdir" "${data[@]}" "${train_args[@]}")
  on_workers all "cd ~/harmony_jax || exit 1; nohup ~/harmony_venv/bin/python -m harmony_jax.train \
    $args > ~/$log 2>&1 < /dev/null & echo \$! > ~/harmony_train.pid"
  logs
}

logs() {
  on_workers 0 "tail --pid=\$(cat ~/harmony_train.pid) -n +1 -F ~/$log"
}

case $command in
  up) up ;;
  install) install ;;
  encode) encode ;;
  train) train ;;
  logs) logs ;;
  kill) on_workers all 'for f in ~/harmony_train.pid ~/harmony_encode.pid; do
          [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null; done; true' ;;
  stop) "${gcloud_tpu[@]}" stop "$name" "${where[@]}" ;;
  delete) "${gcloud_tpu[@]}" delete "$name" "${where[@]}" --quiet ;;
  status) "${gcloud_tpu[@]}" describe "$name" "${where[@]}" ;;
  all) up; install; [[ -n $src ]] && encode; train ;;
  *) echo "tpu_pod.sh: unknown command $command" >&2; usage 1 ;;
esac
