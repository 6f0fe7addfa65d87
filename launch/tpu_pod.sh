#!/usr/bin/env bash
# Train spnet_jax on a Cloud TPU VM slice.
#
# A slice has one or more hosts ("workers"); each runs the same command, and
# jax.distributed.initialize() in spnet_jax.main (--distributed) finds the others from the TPU
# metadata, so no coordinator flags are passed here. All settings are environment variables (list below), e.g.
#
#   TPU_NAME=spnet-v4 WORKDIR=gs://my-bucket/spnet/coco DATA_DIR=gs://my-bucket/tfds \
#     CONFIG=configs/coco_zlss.py bash launch/tpu_pod.sh all
#
# Run `bash launch/tpu_pod.sh help` for the subcommands; launch/README.md has the details.
set -euo pipefail

# ---- Settings (environment variables; the value after ':-' is the default) ----------------
# Google Cloud project; empty uses gcloud's configured one (`gcloud config set project ID`).
PROJECT="${PROJECT:-}"
# Zone that offers ACCELERATOR_TYPE (v4 slices are in us-central2-b).
ZONE="${ZONE:-us-central2-b}"
# Name of the TPU VM slice to create or reuse.
TPU_NAME="${TPU_NAME:-spnet-jax}"
# TPU generation and size: v4-32 is 16 chips on 4 hosts.
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-32}"
# TPU VM image; the base image has no ML framework, so `setup` installs jax itself.
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
# standard, spot or preemptible. Spot/preemptible slices are cheaper but can be reclaimed at
# any time; `all` then recreates the slice and training resumes from WORKDIR.
PROVISIONING="${PROVISIONING:-standard}"
# Git URL the workers clone. Empty uploads this checkout instead (uncommitted changes included,
# no git credentials needed on the workers).
REPO_URL="${REPO_URL:-}"
# Branch or tag checked out from REPO_URL.
BRANCH="${BRANCH:-main}"
# Folder under each worker's home: src/ (the code), venv/, train.log, train.pid.
REMOTE_DIR="${REMOTE_DIR:-spnet_jax}"
# Python >= 3.11 (pyproject's requires-python). Ubuntu 22.04 ships 3.10, so `setup` installs
# this one (and its -venv package) with apt when it is missing.
PYTHON="${PYTHON:-python3.11}"
# Experiment config, relative to the repository root.
CONFIG="${CONFIG:-configs/shapes_zlss.py}"
# Checkpoints, summaries, results.json. Every worker writes to it, so it must be shared storage:
# gs://bucket/path. Required by `run`; rerunning with the same WORKDIR resumes.
WORKDIR="${WORKDIR:-}"
# TFDS folder with the prepared dataset (gs://bucket/tfds). Empty: each worker's
# ~/tensorflow_datasets, which only suits shapes (generated on first use on every worker).
DATA_DIR="${DATA_DIR:-}"
# More spnet_jax.main flags, inserted into the remote command line as written,
# e.g. '--config.train.num_steps=500 --config.seed=1'.
EXTRA_ARGS="${EXTRA_ARGS:-}"
# Extra flags for every `gcloud compute tpus tpu-vm ssh/scp`, e.g. '--tunnel-through-iap'.
SSH_FLAGS="${SSH_FLAGS:-}"
# ---- End of settings ------------------------------------------------------------------------

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
  cat <<EOF
Usage: bash launch/tpu_pod.sh COMMAND

Commands:
  create   create the TPU VM slice \$TPU_NAME (reused if it exists; recreated if preempted)
  setup    on all workers: get the code (clone \$REPO_URL or upload this checkout), make a
           venv, pip install requirements.txt and jax[tpu]
  run      start training on all workers in the background (nohup); needs WORKDIR=gs://...
  stop     send SIGTERM to the training on all workers: it saves a checkpoint and exits
  logs     follow worker 0's training log (Ctrl-C stops following, not training)
  delete   delete the slice (WORKDIR and its checkpoints are kept)
  all      create (if missing) + setup + run
  help     this text

Settings (environment variables) and their current values:
  PROJECT=${PROJECT}  ZONE=${ZONE}  TPU_NAME=${TPU_NAME}
  ACCELERATOR_TYPE=${ACCELERATOR_TYPE}  RUNTIME_VERSION=${RUNTIME_VERSION}
  PROVISIONING=${PROVISIONING}  REPO_URL=${REPO_URL}  BRANCH=${BRANCH}
  REMOTE_DIR=${REMOTE_DIR}  PYTHON=${PYTHON}  CONFIG=${CONFIG}
  WORKDIR=${WORKDIR}  DATA_DIR=${DATA_DIR}
  EXTRA_ARGS=${EXTRA_ARGS}  SSH_FLAGS=${SSH_FLAGS}

Example:
  TPU_NAME=spnet-v4 WORKDIR=gs://my-bucket/spnet/shapes bash launch/tpu_pod.sh all
EOF
}

# `gcloud compute tpus tpu-vm ARGS` in our zone; an empty PROJECT leaves gcloud's default.
tpu() {
  local -a flags=(--zone="$ZONE")
  if [[ -n "$PROJECT" ]]; then flags+=(--project="$PROJECT"); fi
  gcloud compute tpus tpu-vm "$@" "${flags[@]}"
}

# Runs a bash script on the workers (`--worker=all` or `--worker=0`).
on_workers() {
  local worker="$1" script="$2"
  local -a extra
  read -r -a extra <<<"$SSH_FLAGS"
  tpu ssh "$TPU_NAME" --worker="$worker" ${extra[@]+"${extra[@]}"} --command="bash -c $(printf '%q' "$script")"
}

# Prints the slice's state (READY, CREATING, PREEMPTED, ...), or nothing if it does not exist.
tpu_state() {
  tpu describe "$TPU_NAME" --format='value(state)' 2>/dev/null || true
}

cmd_create() {
  local state provisioning_flag=() waited=0
  case "$PROVISIONING" in
    standard) ;;
    spot) provisioning_flag=(--spot) ;;
    preemptible) provisioning_flag=(--preemptible) ;;
    *) echo "PROVISIONING must be standard, spot or preemptible, not '${PROVISIONING}'" >&2; exit 2 ;;
  esac
  state="$(tpu_state)"
  # A reclaimed spot/preemptible slice stays listed but never comes back: replace it.
  if [[ "$state" == PREEMPTED || "$state" == TERMINATED ]]; then
    echo "Slice ${TPU_NAME} is ${state}: deleting it to create a fresh one."
    tpu delete "$TPU_NAME" --quiet
    state=""
  fi
  if [[ "$state" == STOPPED ]]; then
    tpu start "$TPU_NAME"
    state="$(tpu_state)"
  fi
  if [[ -z "$state" ]]; then
    echo "Creating ${ACCELERATOR_TYPE} slice ${TPU_NAME} in ${ZONE} (${PROVISIONING})."
    tpu create "$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" \
      --version="$RUNTIME_VERSION" ${provisioning_flag[@]+"${provisioning_flag[@]}"}
    state="$(tpu_state)"
  fi
  # Another create/start may still be in flight (e.g. from an earlier interrupted call).
  while [[ "$state" == CREATING || "$state" == STARTING || "$state" == RESTARTING ]]; do
    if ((waited >= 1800)); then
      echo "Slice ${TPU_NAME} still ${state} after ${waited} s" >&2
      exit 1
    fi
    sleep 30
    waited=$((waited + 30))
    state="$(tpu_state)"
  done
  if [[ "$state" != READY ]]; then
    echo "Slice ${TPU_NAME} is '${state}', not READY" >&2
    exit 1
  fi
  echo "Slice ${TPU_NAME} is READY."
}

# Uploads the files git knows about (tracked + untracked, not ignored): no .venv, no workdirs.
upload_checkout() {
  local archive file
  if ! git -C "$REPO_ROOT" rev-parse --git-dir >/dev/null 2>&1; then
    echo "${REPO_ROOT} is not a git checkout (its file list comes from git): set REPO_URL." >&2
    exit 1
  fi
  archive="$(mktemp "${TMPDIR:-/tmp}/spnet_jax-src.XXXXXX")"
  # shellcheck disable=SC2064  # expanded now on purpose: $archive is local to this function
  trap "rm -f $(printf '%q' "$archive")" EXIT
  git -C "$REPO_ROOT" ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' file; do
      # Tracked files deleted in the working tree are listed too; tar would stop on them.
      if [[ -e "${REPO_ROOT}/${file}" ]]; then printf '%s\0' "$file"; fi
    done |
    tar -czf "$archive" -C "$REPO_ROOT" --null -T -
  local -a extra
  read -r -a extra <<<"$SSH_FLAGS"
  tpu scp "$archive" "${TPU_NAME}:spnet_jax-src.tar.gz" --worker=all ${extra[@]+"${extra[@]}"}
  on_workers all "set -euo pipefail
    d=\"\$HOME\"/$(printf '%q' "$REMOTE_DIR")
    rm -rf \"\$d/src\" && mkdir -p \"\$d/src\"
    tar -xzf \"\$HOME/spnet_jax-src.tar.gz\" -C \"\$d/src\" && rm -f \"\$HOME/spnet_jax-src.tar.gz\""
}

cmd_setup() {
  local remote_dir python
  remote_dir="$(printf '%q' "$REMOTE_DIR")"
  python="$(printf '%q' "$PYTHON")"
  if [[ -z "$REPO_URL" ]]; then
    echo "Uploading ${REPO_ROOT} to all workers of ${TPU_NAME}."
    upload_checkout
  else
    echo "Cloning ${REPO_URL} (${BRANCH}) on all workers of ${TPU_NAME}."
    on_workers all "set -euo pipefail
      d=\"\$HOME\"/${remote_dir}
      mkdir -p \"\$d\"
      # An earlier upload has no .git: replace it with a clone.
      if [ ! -d \"\$d/src/.git\" ]; then
        rm -rf \"\$d/src\"
        git clone --depth 1 --branch $(printf '%q' "$BRANCH") $(printf '%q' "$REPO_URL") \"\$d/src\"
      else
        git -C \"\$d/src\" fetch --depth 1 origin $(printf '%q' "$BRANCH")
        git -C \"\$d/src\" checkout --force FETCH_HEAD
      fi"
  fi
  echo "Installing Python packages on all workers (a few minutes)."
  on_workers all "set -euo pipefail
    d=\"\$HOME\"/${remote_dir}
    if ! ${python} -c 'import ensurepip, venv' 2>/dev/null; then
      sudo apt-get -o DPkg::Lock::Timeout=600 update -q
      sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -q ${python} ${python}-venv
    fi
    [ -x \"\$d/venv/bin/python\" ] || ${python} -m venv \"\$d/venv\"
    cd \"\$d/src\"
    # jax[tpu] within requirements.txt's jax range (e.g. '>=0.10.2,<0.11'): adds libtpu.
    spec=\"\$(sed -n 's/^jax\\([<>=!~][^#[:space:]]*\\).*/\\1/p' requirements.txt)\"
    \"\$d/venv/bin/pip\" install -q --upgrade pip
    \"\$d/venv/bin/pip\" install -q -r requirements.txt \"jax[tpu]\$spec\"
    echo \"\$(hostname): jax \$(\"\$d/venv/bin/python\" -c 'import jax; print(jax.__version__)')\""
}

cmd_run() {
  : "${WORKDIR:?set WORKDIR=gs://bucket/path (shared by all workers; the same path resumes)}"
  if [[ "$WORKDIR" != gs://* ]]; then
    echo "warning: WORKDIR=${WORKDIR} is not gs://: every worker must see the same folder." >&2
  fi
  local args
  # --distributed: every worker calls jax.distributed.initialize(), which finds the others
  # from the TPU VM metadata.
  args="--distributed --config $(printf '%q' "$CONFIG") --workdir $(printf '%q' "$WORKDIR")"
  if [[ -n "$DATA_DIR" ]]; then
    args+=" $(printf '%q' "--config.data.data_dir=${DATA_DIR}")"
  fi
  args+=" ${EXTRA_ARGS}"
  echo "Starting training on all workers of ${TPU_NAME}: spnet_jax.main ${args}"
  # nohup + redirected stdin/stdout: training outlives the ssh session; the pid file lets
  # `stop` and the next `run` find it.
  on_workers all "set -euo pipefail
    d=\"\$HOME\"/$(printf '%q' "$REMOTE_DIR")
    if [ -f \"\$d/train.pid\" ] && kill -0 \"\$(cat \"\$d/train.pid\")\" 2>/dev/null; then
      echo \"\$(hostname): training already running (pid \$(cat \"\$d/train.pid\")); stop it first\" >&2
      exit 1
    fi
    cd \"\$d/src\"
    echo ==== \"\$(date -u '+%F %T')\" UTC: spnet_jax.main ${args} >>\"\$d/train.log\"
    nohup \"\$d/venv/bin/python\" -m spnet_jax.main ${args} >>\"\$d/train.log\" 2>&1 </dev/null &
    echo \$! >\"\$d/train.pid\"
    echo \"\$(hostname): started pid \$!, log \$d/train.log\""
  echo "Follow worker 0 with: bash launch/tpu_pod.sh logs"
}

cmd_stop() {
  on_workers all "d=\"\$HOME\"/$(printf '%q' "$REMOTE_DIR")
    if [ -f \"\$d/train.pid\" ] && kill -TERM \"\$(cat \"\$d/train.pid\")\" 2>/dev/null; then
      echo \"\$(hostname): sent SIGTERM; training saves a checkpoint and exits\"
    else
      echo \"\$(hostname): no training running\"
    fi"
}

cmd_logs() {
  on_workers 0 "tail -n 200 -F \"\$HOME\"/$(printf '%q' "$REMOTE_DIR")/train.log"
}

cmd_delete() {
  tpu delete "$TPU_NAME" --quiet
}

case "${1:-help}" in
  create) cmd_create ;;
  setup) cmd_setup ;;
  run) cmd_run ;;
  stop) cmd_stop ;;
  logs) cmd_logs ;;
  delete) cmd_delete ;;
  all)
    cmd_create
    cmd_setup
    cmd_run
    ;;
  help | -h | --help) usage ;;
  *)
    usage >&2
    echo "Unknown command: $1" >&2
    exit 2
    ;;
esac
