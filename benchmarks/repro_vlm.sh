#!/usr/bin/env bash
# The headline VLM comparison (README "Findings"): Pythia-VL and Mamba-VL x three prompt layouts x
# 4 seeds = 24 runs of configs/repro-vlm-markers.yaml, all at once on one GPU, then waits for them.
#   bash benchmarks/repro_vlm.sh OUTDIR
# Environment: CONFIG (default configs/repro-vlm-markers.yaml), MARKER_NOISE (e.g. 0: pass 6's equal
# markers at the same budget), SEEDS (default "0 1 2 3"). Each run logs to OUTDIR/<run>.log. Runs are
# resumable: the same command continues unfinished ones and refuses finished ones (exit code != 0).
# Exits 1 if any run failed. Afterwards: probes plot OUTDIR --threshold 0.5 --out figures/...
set -u
out=${1:?usage: bash benchmarks/repro_vlm.sh OUTDIR}
config=${CONFIG:-configs/repro-vlm-markers.yaml}
seeds=${SEEDS:-0 1 2 3}
cd "$(dirname "$0")/.."
mkdir -p "$out"
extra=()
if [ -n "${MARKER_NOISE:-}" ]; then extra+=(--marker-noise "$MARKER_NOISE"); fi
start=$(date +%s)
pids=()
names=()
for s in $seeds; do
  for m in pythia-tiny mamba-tiny; do
    for l in task-agnostic task-aware query-first; do
      name="$m+$l+s$s"
      OMP_NUM_THREADS=1 python3 -c "from cli import app; app()" vlm train --config "$config" \
        --model "$m" --layout "$l" --seed "$s" "${extra[@]}" --out "$out/$name" > "$out/$name.log" 2>&1 &
      pids+=($!)
      names+=("$name")
    done
  done
done
echo "started ${#pids[@]} runs in $out"
failed=0
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then
    failed=$((failed + 1))
    echo "FAILED: ${names[$i]} (see $out/${names[$i]}.log)"
  fi
done
echo "done: ${#pids[@]} runs, $failed failed, $(( $(date +%s) - start )) s"
[ "$failed" -eq 0 ]
