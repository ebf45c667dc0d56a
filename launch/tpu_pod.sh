#!/usr/bin/env bash
# Run the same command on every worker of a TPU VM pod (one Python client per TPU host).
#
#   launch/tpu_pod.sh --tpu NAME --zone ZONE --project PROJECT [--workdir DIR] [--dry-run] \
#       -- python -m launch.train --strategy=tpu --tpu=local --gin_file=runs/pod.gin \
#          --model_dir=gs://BUCKET/run1
#
# Each worker runs `cd DIR && COMMAND` through
#   gcloud compute tpus tpu-vm ssh NAME --zone ZONE --project PROJECT --worker=all --command ...
# --dry-run prints the gcloud command instead of running it. TPU_NAME, TPU_ZONE and
# GCP_PROJECT in the environment are the defaults for --tpu, --zone and --project.
# The code must already be on every worker at DIR (default: this checkout's path), and
# model_dir must be shared storage (gs://...) that every host can write.
set -euo pipefail

tpu="${TPU_NAME:-}"
zone="${TPU_ZONE:-}"
project="${GCP_PROJECT:-}"
workdir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
worker="all"
dry_run=0

usage() {
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu) tpu="$2"; shift 2 ;;
    --tpu=*) tpu="${1#*=}"; shift ;;
    --zone) zone="$2"; shift 2 ;;
    --zone=*) zone="${1#*=}"; shift ;;
    --project) project="$2"; shift 2 ;;
    --project=*) project="${1#*=}"; shift ;;
    --workdir) workdir="$2"; shift 2 ;;
    --workdir=*) workdir="${1#*=}"; shift ;;
    --worker=*) worker="${1#*=}"; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage ;;
    --) shift; break ;;
    *) echo "tpu_pod.sh: unknown option '$1' (put the command after --)" >&2; exit 2 ;;
  esac
done

if [[ $# -eq 0 ]]; then
  echo "tpu_pod.sh: no command given after --" >&2; exit 2
fi
for name in tpu zone project; do
  if [[ -z "${!name}" ]]; then
    echo "tpu_pod.sh: --${name} is required (or set TPU_NAME / TPU_ZONE / GCP_PROJECT)" >&2
    exit 2
  fi
done

# Quote every argument so it survives the remote shell unchanged.
remote="cd $(printf '%q' "$workdir") &&"
for arg in "$@"; do
  remote+=" $(printf '%q' "$arg")"
done

cmd=(gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --project "$project"
     "--worker=$worker" --command "$remote")

if [[ $dry_run -eq 1 ]]; then
  printf '%q ' "${cmd[@]}"
  printf '\n'
else
  exec "${cmd[@]}"
fi
