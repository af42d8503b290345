#!/usr/bin/env bash
# The papers' analyses on the models ship.sh trained (runs it first if needed), written to assets/results/:
#   DACT-BERT: the tau grid, dev metric against average layers (MRPC, SST-2)
#   DeeBERT:   each off-ramp's accuracy when every input exits there (Fig. 4), and the threshold
#              sweep on dev with the per-layer exit shares (exit_frequency column)
#   DPBERT:    the target-rate sweep t in {0.2, 0.3, 0.4, 0.5} (Sec. 4.5, MRPC) and the soft-gate
#              ablation against RL over the planner threshold grid (Table 2, MRPC and SST-2)
# Resumable like ship.sh: finished runs are skipped. Usage: bash training/analyses.sh [TASK ...]
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] && tasks=("$@") || tasks=(MRPC SST-2)

source training/train_stage.sh
results=assets/results

for task in "${tasks[@]}"; do
  slug=$(echo "$task" | tr -d '-' | tr 'A-Z' 'a-z')
  run=runs/$slug
  [ -f "$run/dpbert/config.json" ] || SHIP_PUBLISH=0 bash training/ship.sh "$task"
  [ "$task" = SST-2 ] && { limit=(--train-limit 8000); epochs=1; } || { limit=(); epochs=2; }
  for tau in 0.00005 0.0005 0.005 0.05 0.5; do  # the whole tau grid (ship.sh trains only part of it for some tasks)
    train "$run/dact-tau$tau" --method dact --task "$task" --init "$run/full" "${JOINT[@]}" --epochs $epochs --lr 5e-4 --batch-size 32 --tau "$tau" "${limit[@]}"
  done

  python -m training.tradeoff --checkpoints "$run"/dact-tau* --label-by tau --out "$results/$slug-dact-tau"
  python -m training.tradeoff --checkpoints "$run/deebert" --per-layer --out "$results/$slug-deebert-layers"
  python -m training.evaluate --checkpoint "$run/deebert" --sweep default --reference "$run/full" --out "$results/$slug-deebert-sweep"

  # soft gates trained jointly with the backbone (no RL), the same target rate and planners as the shipped DPBERT
  train "$run/dpbert-soft" --method dpbert --stage soft --task "$task" --init "$run/full" "${JOINT[@]}" --epochs 2 --lr 5e-4 --batch-size 32 \
    "${DPBERT_PLANNERS[@]}" "${limit[@]}"
  python -m training.tradeoff --checkpoints "$run/dpbert" "$run/dpbert-soft" --sweep --out "$results/$slug-dpbert-soft-vs-rl"

  if [ "$task" = MRPC ]; then  # target skip rate t (the shipped model is t = 0.4)
    for t in 0.2 0.3 0.5; do
      train "$run/dpbert-relaxed-t$t" "${DPBERT_RELAXED[@]}" --task "$task" --init "$run/full" --target-skip-rate $t
      train "$run/dpbert-t$t" "${DPBERT_RL[@]}" --task "$task" --init "$run/dpbert-relaxed-t$t"
    done
    python -m training.tradeoff --checkpoints "$run/dpbert" "$run"/dpbert-t0.* --label-by target_skip_rate --out "$results/$slug-dpbert-rate"
  fi
done
