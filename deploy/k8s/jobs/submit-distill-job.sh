#!/bin/sh
# Submits one distillation run as a Kubernetes Job and waits for it; exit status = the Job's.
#
#   submit-distill-job.sh JOB.yaml OUT_DIR [RUN_ID]        (single pod)
#   TEMPLATE=distill-job-torchrun.yaml submit-distill-job.sh JOB.yaml OUT_DIR   (torchrun, several pods)
#
# JOB.yaml and OUT_DIR must be on the shared volume (/data/...). Needs kubectl with rights to
# create Jobs and Services in the namespace; usable as the daemon's `command` launcher.
set -eu
job_file=$1
out_dir=$2
run_id=${3:-$(date +%Y%m%d%H%M%S)-$$}
here=$(cd "$(dirname "$0")" && pwd)
template=${TEMPLATE:-distill-job.yaml}
namespace=${NAMESPACE:-distill-watchdog}
case "$template" in /*) ;; *) template="$here/$template" ;; esac

sed -e "s|\${RUN_ID}|$run_id|g" -e "s|\${JOB_FILE}|$job_file|g" -e "s|\${OUT_DIR}|$out_dir|g" "$template" \
  | kubectl -n "$namespace" apply -f -
kubectl -n "$namespace" wait --for=condition=complete --timeout="${TIMEOUT:-3600s}" "job/distill-$run_id" &
ok=$!
kubectl -n "$namespace" wait --for=condition=failed --timeout="${TIMEOUT:-3600s}" "job/distill-$run_id" &
failed=$!
while kill -0 "$ok" 2>/dev/null && kill -0 "$failed" 2>/dev/null; do sleep 2; done
status=1
if ! kill -0 "$ok" 2>/dev/null && wait "$ok"; then status=0; fi
kill "$ok" "$failed" 2>/dev/null || true
kubectl -n "$namespace" logs "job/distill-$run_id" --tail=50 || true
exit "$status"
