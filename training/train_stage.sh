# Sourced by ship.sh and analyses.sh: train one stage unless its checkpoint exists.
# train OUT ARGS...: python -m training.train ARGS --out OUT --resume, logged to runs/logs/; a
# finished stage (OUT/config.json) is skipped, an interrupted one resumes from its saved state.
train() {
  local out=$1; shift
  if [ -f "$out/config.json" ]; then echo "skip $out (done)"; return; fi
  mkdir -p runs/logs
  local log="runs/logs/$(echo "$out" | tr / _).log"
  echo "$(date +%T) train $out: python -m training.train $* --out $out"
  python -m training.train "$@" --out "$out" --resume --quiet > "$log" 2>&1 || { echo "failed: see $log"; tail -n 5 "$log"; exit 1; }
  tail -n 1 "$log" | cut -c1-240
}

# Recipes both scripts use. Later stages that train the encoder add LoRA adapters on top of the
# task's full model.
JOINT=(--finetune lora --lora-rank 16 --warmup 0.1)
# DPBERT's planners (deviations from the paper, NOTES.md session 5): layer 1's planner reads the
# mean-pooled embeddings, every planner reads its state standardised with running statistics,
# lambda2 = 10 so that the rule s > 0.5 executes 1 - t of the layers.
DPBERT_PLANNERS=(--first-layer mean --planner-input standardized --planner-bias 1.0 --rate-weight 10)
# relaxed stage: backbone frozen, planners and head through the relaxed gates
DPBERT_RELAXED=(--method dpbert --stage relaxed --epochs 2 --lr 1e-3 --batch-size 32 "${DPBERT_PLANNERS[@]}")
# rl stage: backbone (LoRA) and planners, self-critical REINFORCE baseline; 2 epochs on every task
# (SST-2, 8,000 rows: 1 epoch kept 98 % of full on validation only at 5.65 layers, 2 epochs at 4.49)
DPBERT_RL=(--method dpbert --stage rl "${JOINT[@]}" --epochs 2 --lr 5e-4 --batch-size 32 --rl-baseline greedy)
