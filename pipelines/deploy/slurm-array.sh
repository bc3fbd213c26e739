#!/usr/bin/env bash
# Runs a pipeline as a Slurm job array, one shard per task, and commits the shards' results
# once, as one version, in a job that starts when every task has ended, however it ended
# (afterany: a task whose rows failed, exit 3, still staged them):
#
#   bash pipelines/deploy/slurm-array.sh pipelines/demo.toml        # submits both jobs
#
# Submitted by that command, the array tasks run this script with SLURM_ARRAY_TASK_ID set;
# gemma-batch reads SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_MIN and SLURM_ARRAY_TASK_COUNT.
# The commit job lists the failed rows and exits 3 when there are any (see its log).
# The sink (sink.dir in the spec) is a directory every node shares, or an object-store URI
# (s3://bucket/prefix, credentials from the usual AWS variables in the job's environment).
#SBATCH --job-name=gemma-batch
#SBATCH --array=0-7
#SBATCH --cpus-per-task=4
#SBATCH --mem=16G
#SBATCH --output=gemma-batch-%A_%a.log
#SBATCH --signal=TERM@120
set -euo pipefail
spec="${1:?usage: bash slurm-array.sh PIPELINE.toml}"
if [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
  # One shard (the index and count come from Slurm's variables).
  exec gemma-batch run "$spec" --quiet
fi
# On the login node: submit the array, then the commit after it.
array=$(sbatch --parsable "$0" "$spec")
commit=$(sbatch --parsable --dependency="afterany:${array}" --job-name=gemma-batch-commit \
  --output=gemma-batch-commit-%j.log --wrap "gemma-batch commit $(printf %q "$spec") --wait")
echo "submitted the shards (job ${array}) and their commit (job ${commit}, after every shard ends)"
