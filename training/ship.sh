#!/usr/bin/env bash
# Train every stage of every shipped model into runs/<task>/<method>; finished stages are skipped.
# Usage: bash training/ship.sh [TASK ...]   (default: MRPC RTE STS-B SST-2)
# Then choose operating points on dev and copy to assets/checkpoints: python -m training.publish
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] && tasks=("$@") || tasks=(MRPC RTE STS-B SST-2)
train() {  # train OUT ARGS...: run one stage unless its checkpoint exists
  local out=$1; shift
  if [ -f "$out/config.json" ]; then echo "skip $out (done)"; return; fi
  mkdir -p runs/logs
  echo "train $out: python -m training.train $* --out $out"
  python -m training.train "$@" --out "$out" --resume > "runs/logs/$(echo "$out" | tr / _).log" 2>&1
  tail -n 1 "runs/logs/$(echo "$out" | tr / _).log"
}
for task in "${tasks[@]}"; do
  slug=$(echo "$task" | tr -d '-' | tr 'A-Z' 'a-z')
  run=runs/$slug
  # The CPU budget of one session: SST-2 trains on its first 24,000 rows, one epoch a stage;
  # RTE, small and hard, needs more epochs at a higher rate before the adapters learn anything.
  case $task in
    SST-2) full_epochs=1; full_lr=5e-4; joint_epochs=1; tau=0.2; limit=(--train-limit 24000) ;;
    RTE)   full_epochs=10; full_lr=1e-3; joint_epochs=3; tau=0.05; limit=() ;;
    *)     full_epochs=3; full_lr=5e-4; joint_epochs=2; tau=0.2; limit=() ;;
  esac
  train $run/full --method full --task "$task" --epochs $full_epochs --lr $full_lr "${limit[@]}"
  if [ "$task" != STS-B ]; then
    train $run/deebert --method deebert --task "$task" --init $run/full --epochs $joint_epochs --lr 1e-3 "${limit[@]}"
    train $run/dact --method dact --task "$task" --init $run/full --epochs $joint_epochs --lr 2e-4 --tau $tau "${limit[@]}"
  fi
  train $run/dpbert-relaxed --method dpbert --stage relaxed --task "$task" --init $run/full --epochs 1 --lr 1e-3 "${limit[@]}"
  train $run/dpbert --method dpbert --stage rl --task "$task" --init $run/dpbert-relaxed --epochs $joint_epochs --lr 2e-4 "${limit[@]}"
done
