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
