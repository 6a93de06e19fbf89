#!/usr/bin/env bash
# KD variants from one teacher cache, recorded and compared: the experiments workflow on the embedded default.
#
#   bash recipes/kd_variants.sh                  # OUT=runs/kd-variants SEEDS=0 STEPS=1500
#   SEEDS="0 1 2" bash recipes/kd_variants.sh    # every student at three training seeds, on the one cache
#
# One teacher run, six students: `distill demo` makes the cache (the bundled arith teacher through real
# vLLM), its `correct` view, a forward-KL student (--tail bucket) and an SFT student (α = 1); this script
# adds students with --tail renorm, --kd reverse, --kd jsd and --kd sampled (from M = 8 tokens per position
# drawn from the teacher by `distill score --extra-samples`, a second cache of the same traces), every one
# with the demo's steps, batch and α = 0.5, evaluated as the demo evaluates (arith:test, 200 problems
# × 4 samples). Further SEEDS train all six again on the same cache with another training seed (named
# NAME-sSEED), so `distill compare` groups them and shows the spread over seeds. Every run records itself
# in the registry under $DISTILL_HOME; the last step is `distill compare`, whose table and figures
# (OUT/compare/report.md) docs/results/kd-variants.md shows. Each stage is skipped when its output exists, so
# a rerun after an interruption continues. About 20 minutes per seed on 2 CPU cores.
set -euo pipefail

OUT=${OUT:-runs/kd-variants}
SEEDS=${SEEDS:-0}
STEPS=${STEPS:-1500}
if [ -x .venv/bin/distill ]; then DISTILL=${DISTILL:-.venv/bin/distill}; else DISTILL=${DISTILL:-distill}; fi
FIRST=${SEEDS%% *}

# ---- the teacher cache, its correct view, the forward-KL and SFT students of the first seed (evaluated) ----
if [ ! -f "$OUT/demo/summary.json" ]; then
  "$DISTILL" demo --out "$OUT/demo" --seed "$FIRST" --steps "$STEPS" --kd forward  # its KD student: forward KL
fi
CACHE="$OUT/demo/cache"

# ---- the same traces scored again, with 8 tokens per position drawn from the teacher at τ = 1 ----
if [ ! -f "$OUT/sampled-cache/index.json" ]; then
  "$DISTILL" score --teacher arith-teacher --traces "$CACHE" --view correct --backend hf --top-k 20 \
    --extra-samples 8 --extra-temperature 1 --dtype float32 --out "$OUT/sampled-cache" >/dev/null
fi

train_and_eval() {  # NAME SEED TRAIN-ARGS...
  local name=$1 seed=$2; shift 2
  if [ ! -d "$OUT/$name/model" ]; then
    rm -rf "${OUT:?}/$name"  # a run interrupted before its first checkpoint starts over
    "$DISTILL" train --student arith-student --alpha 0.5 --max-steps "$STEPS" --save-every "$STEPS" \
      --batch-rows 4 --seed "$seed" "$@" --out "$OUT/$name" >/dev/null
  fi
  if [ ! -f "$OUT/eval-$name.json" ]; then
    "$DISTILL" eval --model "$OUT/$name/model" --prompts arith:test --limit 200 --samples 4 --max-new-tokens 96 \
      --seed "$FIRST" --dtype float32 --out "$OUT/eval-$name.json" >/dev/null
  fi
}

SAMPLED=()
for seed in $SEEDS; do
  suffix=$([ "$seed" = "$FIRST" ] || echo "-s$seed")
  if [ -n "$suffix" ]; then  # the demo trained these two at the first seed
    train_and_eval "kd$suffix" "$seed" --cache "$CACHE" --view correct
    train_and_eval "sft$suffix" "$seed" --cache "$CACHE" --view correct --alpha 1
  fi
  train_and_eval "renorm$suffix" "$seed" --cache "$CACHE" --view correct --tail renorm
  train_and_eval "reverse$suffix" "$seed" --cache "$CACHE" --view correct --kd reverse
  train_and_eval "jsd$suffix" "$seed" --cache "$CACHE" --view correct --kd jsd
  train_and_eval "sampled$suffix" "$seed" --cache "$OUT/sampled-cache" --kd sampled
  SAMPLED+=("$OUT/sampled$suffix")
done

# ---- every student of the cache side by side (the sampled ones are of the second cache: named too) ----
"$DISTILL" compare --cache "$CACHE" "${SAMPLED[@]}" --out "$OUT/compare"
