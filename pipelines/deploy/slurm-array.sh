#!/usr/bin/env bash
# Runs a pipeline as a Slurm job array, one shard per task, then commits the shards' results
# as one version in a dependent job:
#   jid=$(sbatch --parsable pipelines/deploy/slurm-array.sh pipelines/demo.toml)
#   sbatch --dependency=afterok:$jid --wrap "gemma-batch commit pipelines/demo.toml"
# gemma-batch reads SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_MIN and SLURM_ARRAY_TASK_COUNT.
#SBATCH --job-name=gemma-batch
#SBATCH --array=0-7
#SBATCH --cpus-per-task=4
#SBATCH --mem=16G
#SBATCH --output=gemma-batch-%A_%a.log
set -euo pipefail
spec="${1:?usage: sbatch slurm-array.sh PIPELINE.toml}"
exec gemma-batch run "$spec" --quiet
