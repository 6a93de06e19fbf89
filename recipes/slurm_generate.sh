#!/usr/bin/env bash
# One teacher run split across a Slurm array: each task generates a disjoint slice of the prompts
# on its own GPU(s), then one dependent job merges the slices into the cache a single run would
# have made (same key, so later `distill generate` calls with the same settings are cache hits).
#
#   sbatch recipes/slurm_generate.sh            # 8 slices of MATH-style prompts, one GPU each
#   sbatch --dependency=afterok:<array job id> recipes/slurm_generate.sh merge
#
# Every slice is resumable: if a task is preempted, requeueing it regenerates only what is missing.
# NOT YET RUN ON A GPU OR UNDER SLURM: slicing and merging are tested on CPU (merged slices = one run, same key);
# this script itself has not run on a cluster. Sizing (teacher memory, cache bytes per token): docs/gpus.md.
#SBATCH --job-name=distill-generate
#SBATCH --array=0-7
#SBATCH --gpus-per-task=1
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --requeue
#SBATCH --output=logs/generate-%A_%a.out
set -euo pipefail

NUM_SHARDS=${SLURM_ARRAY_TASK_COUNT:-8}
TEACHER=${TEACHER:-r1-distill-qwen-7b}
PROMPTS=${PROMPTS:-openr1-math}
export DISTILL_HOME=${DISTILL_HOME:-/shared/distill}   # one file system for every task and later run

ARGS=(--teacher "$TEACHER" --prompts "$PROMPTS" --samples-per-prompt 4 --top-k 20 --seed 0)

if [[ "${1:-}" == "merge" ]]; then
    # run as: sbatch --dependency=afterok:<array job id> recipes/slurm_generate.sh merge
    slices=()
    for i in $(seq 0 $((NUM_SHARDS - 1))); do
        slices+=("$(distill generate "${ARGS[@]}" --shard-index "$i" --num-shards "$NUM_SHARDS" | tail -n 1)")
    done
    distill cache merge "${slices[@]}"
    exit 0
fi

distill generate "${ARGS[@]}" --shard-index "$SLURM_ARRAY_TASK_ID" --num-shards "$NUM_SHARDS"
