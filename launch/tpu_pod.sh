#!/usr/bin/env bash
# Run the same command on every worker of a TPU VM pod (one Python client per TPU host).
# `launch/tpu_pod.sh --help` prints the usage below.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/tpu_pod.sh --tpu NAME --zone ZONE --project PROJECT [--workdir DIR]
                         [--worker=all|N[,M...]] [--max_restarts K] [--dry-run] -- COMMAND ...

Runs `cd DIR && COMMAND` on the workers of TPU VM pod NAME through
  gcloud compute tpus tpu-vm ssh NAME --zone ZONE --project PROJECT --worker=all --command ...

On a maintenance event or preemption every host gets SIGTERM; the hosts stop at a step they all
agree on, save there and exit 42. Each host then runs COMMAND again (the job resumes from its
checkpoint), up to --max_restarts times (default 3); any other exit code ends the loop.

  --tpu, --zone, --project  the pod (defaults: $TPU_NAME, $TPU_ZONE, $GCP_PROJECT)
  --workdir DIR             where the code is on every worker (default: this checkout's path)
  --worker                  which workers (default: all)
  --max_restarts K          relaunches after exit code 42 (preempted, saved); default 3
  --dry-run                 print the gcloud command instead of running it

The code must already be at DIR on every worker, and --model_dir must be shared storage
(gs://...) that every host can write. Example (gin files from the repository's gin/):

  launch/tpu_pod.sh --tpu=my-pod --zone=us-central2-b --project=my-project -- \
    python -m launch.train --strategy=tpu --tpu=local --model_dir=gs://BUCKET/run1 \
      --gin_file=models/highnoon-3b.gin --gin_file=curricula/quickstart.gin \
      --gin_file=runs/pretrain.gin

With highnoon installed on every worker (pip install), `highnoon-train ...` works in place of
`python -m launch.train ...`; its gin files ship in the package.
EOF
}

tpu="${TPU_NAME:-}"
zone="${TPU_ZONE:-}"
project="${GCP_PROJECT:-}"
workdir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
worker="all"
max_restarts=3
dry_run=0

while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu) tpu="${2:?--tpu needs a value}"; shift 2 ;;
    --tpu=*) tpu="${1#*=}"; shift ;;
    --zone) zone="${2:?--zone needs a value}"; shift 2 ;;
    --zone=*) zone="${1#*=}"; shift ;;
    --project) project="${2:?--project needs a value}"; shift 2 ;;
    --project=*) project="${1#*=}"; shift ;;
    --workdir) workdir="${2:?--workdir needs a value}"; shift 2 ;;
    --workdir=*) workdir="${1#*=}"; shift ;;
    --worker=*) worker="${1#*=}"; shift ;;
    --max_restarts) max_restarts="${2:?--max_restarts needs a value}"; shift 2 ;;
    --max_restarts=*) max_restarts="${1#*=}"; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) echo "tpu_pod.sh: unknown option '$1' (put the command after --; see --help)" >&2
       exit 2 ;;
  esac
done

if [[ $# -eq 0 ]]; then
  echo "tpu_pod.sh: no command given after -- (see --help)" >&2; exit 2
fi
if ! [[ "$max_restarts" =~ ^[0-9]+$ ]]; then
  echo "tpu_pod.sh: --max_restarts=$max_restarts must be an integer >= 0" >&2; exit 2
fi
for name in tpu zone project; do
  if [[ -z "${!name}" ]]; then
    echo "tpu_pod.sh: --${name} is required (or set TPU_NAME / TPU_ZONE / GCP_PROJECT)" >&2
    exit 2
  fi
done

# Quote every argument so it survives the remote shell unchanged. Each host relaunches the
# command itself on exit code 42; all hosts stop at the same agreed step, so they restart together.
quoted=""
for arg in "$@"; do
  quoted+=" $(printf '%q' "$arg")"
done
remote="cd $(printf '%q' "$workdir") && for attempt in \$(seq 0 $max_restarts); do"
remote+="$quoted; code=\$?; [ \$code -eq 42 ] || exit \$code;"
remote+=" echo \"tpu_pod.sh: preempted (exit 42); relaunch \$((attempt + 1))\" >&2; done; exit 42"

cmd=(gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --project "$project"
     "--worker=$worker" --command "$remote")

if [[ $dry_run -eq 1 ]]; then
  printf '%q ' "${cmd[@]}"
  printf '\n'
else
  exec "${cmd[@]}"
fi
