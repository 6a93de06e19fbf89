#!/usr/bin/env bash
# The teacher stage with one teacher server per node and one `distill generate` pointed at all of them: every
# node of the job runs `distill serve` (vLLM's OpenAI-compatible server, its GPUs as data-parallel replicas of
# the teacher), the first node also runs the client, which spreads the requests over the servers and writes one
# cache (the same cache, and key, a single in-process run makes: nothing to merge).
#
#   sbatch recipes/slurm_serve_generate.sh                  # 4 nodes × 8 GPUs, r1-distill-qwen-7b
#   TEACHER=qwq-32b DP=4 sbatch recipes/slurm_serve_generate.sh
#
# A node that dies is dropped and the others finish its work; if the job itself ends early, submit it again: the
# generate resumes where the cache stopped. Which to use, this or the array of recipes/slurm_generate.sh: see
# docs/gpus.md (teachers behind servers). The servers have no authentication: a trusted network only.
# NOT YET RUN ON A GPU OR UNDER SLURM: served generation (two servers, faults, resume) is tested on CPU with real
# vLLM servers on one machine (tests/test_serve.py); this script itself has not run on a cluster.
#SBATCH --job-name=distill-serve-generate
#SBATCH --nodes=4
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=logs/serve-generate-%j.out
set -euo pipefail

TEACHER=${TEACHER:-r1-distill-qwen-7b}
PROMPTS=${PROMPTS:-openr1-math}
PORT=${PORT:-8000}
DP=${DP:-8}   # replicas per node: the node's GPUs ÷ the preset's tensor parallelism (r1-distill-qwen-7b: 1)
export DISTILL_HOME=${DISTILL_HOME:-/shared/distill}   # the cache, on a file system the first node writes

# one server per node (srun runs one task per node); it stops when the job ends
srun --ntasks-per-node=1 --kill-on-bad-exit=0 \
    distill serve --teacher "$TEACHER" --host 0.0.0.0 --port "$PORT" --data-parallel-size "$DP" &

urls=()
for node in $(scontrol show hostnames "$SLURM_JOB_NODELIST"); do
    for _ in $(seq 360); do   # loading a large teacher takes minutes; give up after 30
        curl -sf "http://$node:$PORT/health" >/dev/null && break
        sleep 5
    done
    urls+=(--teacher-url "http://$node:$PORT")
done

# a server still loading after 30 minutes is retried, then dropped, by the client itself
distill generate --teacher "$TEACHER" --prompts "$PROMPTS" --samples-per-prompt 4 --top-k 20 --seed 0 \
    --teacher-inflight 1024 "${urls[@]}"
