#!/usr/bin/env bash
# Rebuild every shipped model. Trains every stage of every method into runs/<task>/<method>
# (a finished stage is skipped, an interrupted one resumes from its last saved state), then
# chooses each operating point on the validation rows held out of train and writes
# assets/checkpoints/ and its README table (python -m training.publish).
#
# Usage: bash training/ship.sh [TASK ...]          default: MRPC STS-B RTE SST-2
#        SHIP_PUBLISH=0 bash training/ship.sh ...   train only
# Long: several hours on two CPU cores. Run it in the background and rerun the same command
# after an interruption.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] && tasks=("$@") || tasks=(MRPC STS-B RTE SST-2)

train() {  # train OUT ARGS...: run one stage unless its checkpoint exists
  local out=$1; shift
  if [ -f "$out/config.json" ]; then echo "skip $out (done)"; return; fi
  mkdir -p runs/logs
  local log="runs/logs/$(echo "$out" | tr / _).log"
  echo "$(date +%T) train $out: python -m training.train $* --out $out"
  python -m training.train "$@" --out "$out" --resume --quiet > "$log" 2>&1 || { echo "failed: see $log"; tail -n 5 "$log"; exit 1; }
  tail -n 1 "$log" | cut -c1-240
}

# Stage 1: full fine-tuning of the encoder (embeddings frozen) with warm-up; shipped as int8
# differences from the backbone, and shared by every method of the task (base_checkpoint).
FULL=(--method full --finetune full --warmup 0.1)
# Later stages that train the encoder add LoRA adapters on top of the task's full model.
JOINT=(--finetune lora --lora-rank 16 --warmup 0.1)

for task in "${tasks[@]}"; do
  slug=$(echo "$task" | tr -d '-' | tr 'A-Z' 'a-z')
  run=runs/$slug
  case $task in
    SST-2) full=(--lr 5e-5 --encoder-lr 5e-5 --batch-size 32 --epochs 2); epochs=1; taus=(0.005 0.05 0.2) ;;
    RTE)   full=(--lr 5e-5 --encoder-lr 5e-5 --batch-size 16 --epochs 5); epochs=3; taus=(0.005 0.05 0.2) ;;
    *)     full=(--lr 5e-5 --encoder-lr 5e-5 --batch-size 16 --epochs 5); epochs=2; taus=(0.005 0.05 0.2) ;;
  esac
  train "$run/full" --task "$task" "${FULL[@]}" "${full[@]}"
  if [ "$task" != STS-B ]; then  # DeeBERT and DACT need class probabilities
    train "$run/deebert" --method deebert --task "$task" --init "$run/full" --epochs 2 --lr 1e-3 --batch-size 32
    for tau in "${taus[@]}"; do  # DACT's trade-off is tau: each trained value is an operating point
      train "$run/dact-tau$tau" --method dact --task "$task" --init "$run/full" "${JOINT[@]}" --epochs $epochs --lr 5e-4 --batch-size 32 --tau "$tau"
    done
  fi
  train "$run/dpbert-relaxed" --method dpbert --stage relaxed --task "$task" --init "$run/full" --epochs 1 --lr 1e-3 --batch-size 32 --first-layer mean
  train "$run/dpbert" --method dpbert --stage rl --task "$task" --init "$run/dpbert-relaxed" "${JOINT[@]}" --epochs $epochs --lr 5e-4 --batch-size 32
  train "$run/pabee" --method pabee --task "$task" --init "$run/full" "${JOINT[@]}" --epochs $epochs --lr 5e-4 --batch-size 32
done

if [ "${SHIP_PUBLISH:-1}" = 1 ]; then
  slugs=(); for task in "${tasks[@]}"; do slugs+=("$(echo "$task" | tr -d '-' | tr 'A-Z' 'a-z')"); done
  python -m training.publish --runs runs --tasks "${slugs[@]}"
fi
