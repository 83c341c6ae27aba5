#!/usr/bin/env bash
# Submit a full run to the VM cluster's Jobs API (run it on the head node, e.g. from cron, or through an
# `ray attach -p 8265` tunnel). Extra arguments are Hydra overrides for workflows/full_run.py.
#   cluster/submit.sh model=qwen2.5-3b model.init=pretrained model.path=/mnt/ttt/models/Qwen2.5-3B
# The Ray token is read from ~/.ray/auth_token (written by the launcher's setup_commands), never passed on
# the command line; a run is skipped while an earlier ttt job is still running.
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:8265}"
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH="${RAY_AUTH_TOKEN_PATH:-$HOME/.ray/auth_token}"
if python - <<'PY'
import sys
from ray.job_submission import JobStatus, JobSubmissionClient

active = (JobStatus.PENDING, JobStatus.RUNNING)
jobs = JobSubmissionClient().list_jobs()
sys.exit(0 if any((j.submission_id or "").startswith("ttt-") and j.status in active for j in jobs) else 1)
PY
then
  echo "$(date -u +%FT%TZ) a ttt job is still running: skipping this run"
  exit 0
fi
exec ray job submit --no-wait --submission-id "ttt-$(date -u +%Y%m%d-%H%M%S)" \
  --runtime-env cluster/runtime_env.yaml \
  -- python workflows/full_run.py paths.root=/mnt/ttt train=a100x32 "$@"
