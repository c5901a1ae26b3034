#!/usr/bin/env bash
# Launch `python -m experiments.train` on every host of a Cloud TPU pod slice.
#
#   experiments/launch_tpu_pod.sh TPU_NAME ZONE PRESET WORKDIR [key=value ...]
#
# e.g.  experiments/launch_tpu_pod.sh my-v5e-32 us-west4-a shakespeare-gpt2 /mnt/shared/runs/bard \
#           mesh.fsdp=8 train.steps=20000
#
# Every host runs the same command; `--distributed` makes jax.distributed.initialize() discover
# the coordinator, process count and process id from the TPU metadata. WORKDIR must be a path
# that every host sees (NFS / Filestore, or a bucket mounted with gcsfuse): orbax writes one
# checkpoint from all hosts, and rerunning this script resumes from it. mesh.data defaults to all devices not
# used by mesh.fsdp. Assumes the repository is checked out at ~/chunkwise on every host with
# `pip install -e '.[tpu,text]'` done (see docs/training.md).
set -euo pipefail
if [[ $# -lt 4 ]]; then
  sed -n '2,14p' "$0"
  exit 2
fi
TPU_NAME=$1; ZONE=$2; PRESET=$3; WORKDIR=$4; shift 4
OVERRIDES=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "
  cd ~/chunkwise && .venv/bin/python -m experiments.train --distributed \
    --preset $PRESET --workdir $WORKDIR $OVERRIDES"
