#!/usr/bin/env bash
# An R1-style 7B teacher distilled into Qwen2.5-Math-1.5B on one node: generate → filter → KD → eval.
#
#   bash recipes/r1_7b_to_qwen_1.5b.sh                 # 8 GPUs, 20,000 OpenR1-Math prompts × 4 samples
#   GPUS=4 LIMIT=2000 bash recipes/r1_7b_to_qwen_1.5b.sh
#
# NOT YET RUN ON A GPU: the commands are the ones the tests check against the CLI, but no figure below has been
# measured with this recipe; scripts/gpu_check.sh has not recorded GPU figures either. What published runs of
# the same kind reached (DeepSeek-AI, "DeepSeek-R1", arXiv:2501.12948, Table 5; pass@1 at temperature 0.6,
# top-p 0.95, 32,768 tokens):
#   teacher DeepSeek-R1-Distill-Qwen-7B      MATH-500 92.8   AIME 2024 55.5
#   DeepSeek-R1-Distill-Qwen-1.5B            MATH-500 83.9   AIME 2024 28.9   (SFT of this student on ~800k R1 traces)
# The KD student here learns from a weaker teacher on fewer traces; R1-Distill-Qwen-1.5B is the mark to approach.
#
# Each GPU runs one teacher engine on its slice of the prompts (a 7B teacher fits one 80 GB GPU; data parallel
# beats tensor parallel for it), the slices merge into the cache one run would make, and torchrun trains the
# student with FSDP2 over every GPU. Every step resumes: a rerun regenerates only missing samples, and the train
# step continues from its last checkpoint. Sizing (cache ~38 bytes per token at k = 20, memory): docs/gpus.md.
set -euo pipefail

GPUS=${GPUS:-8}
PROMPTS=${PROMPTS:-openr1-math}
LIMIT=${LIMIT:-20000}
OUT=${OUT:-runs/r1-7b-qwen-1.5b}
TEACHER=r1-distill-qwen-7b
mkdir -p "$OUT"

# ---- the teacher: one vLLM engine per GPU, each on a slice of the prompts, then one cache ----
slices=()
for i in $(seq 0 $((GPUS - 1))); do
  CUDA_VISIBLE_DEVICES=$i distill generate --teacher "$TEACHER" --prompts "$PROMPTS" --limit "$LIMIT" \
    --samples-per-prompt 4 --top-k 20 --shard-index "$i" --num-shards "$GPUS" >"$OUT/generate-$i.log" &
done
wait
for i in $(seq 0 $((GPUS - 1))); do slices+=("$(tail -n 1 "$OUT/generate-$i.log")"); done
cache=$(distill cache merge "${slices[@]}" | tail -n 1)

# ---- keep the verified-correct traces ----
distill filter "$cache" --verifiers math,format --name correct

# ---- the student: CE + reverse KL to the teacher's top-20 + tail, FSDP2 over every GPU ----
train=(--student qwen-1.5b --cache "$cache" --view correct --kd reverse --alpha 0.5 --batch-rows "$GPUS"
       --gradient-checkpointing --out "$OUT/kd")
if [ -d "$OUT/kd/checkpoints" ]; then train+=(--resume); fi
torchrun --nproc-per-node "$GPUS" -m distill train "${train[@]}"

# Qwen2.5-Math-1.5B's config says 4,096 positions, and vLLM takes that as the context of every engine that
# samples from the student (eval, onpolicy): R1-style answers need 32k. The student trained on rows of 16,384
# tokens with the same RoPE; R1-Distill-Qwen-1.5B's config, with the same rope_theta, says 131,072.
python - "$OUT/kd/model/config.json" <<'PY'
import json, sys
path = sys.argv[1]
config = json.load(open(path))
config["max_position_embeddings"] = max(config["max_position_embeddings"], 34816)
json.dump(config, open(path, "w"), indent=2)
PY

# ---- evaluate as the R1 report does: temperature 0.6, top-p 0.95, more samples on the 30 AIME problems ----
distill eval --model "$OUT/kd" --prompts math500 --samples 4 --max-new-tokens 32768 --out "$OUT/kd/math500.json"
distill eval --model "$OUT/kd" --prompts aime24 --samples 16 --max-new-tokens 32768 --out "$OUT/kd/aime24.json"
