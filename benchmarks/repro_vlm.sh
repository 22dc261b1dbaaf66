#!/usr/bin/env bash
# The headline VLM comparison (README "Findings"): Pythia-VL and Mamba-VL x three prompt layouts x
# 4 seeds = 24 runs of configs/repro-vlm-markers.yaml (a `kind: vlm` sweep), all at once on one GPU.
#   bash benchmarks/repro_vlm.sh OUTDIR
# = probes sweep --config "$CONFIG" --out OUTDIR --jobs "$JOBS" [--seed S ...] [--set marker_noise=X]
# Environment: CONFIG (default configs/repro-vlm-markers.yaml), MARKER_NOISE (e.g. 0: pass 6's equal
# markers at the same budget), SEEDS (default: the config's, 0 1 2 3), JOBS (runs at once, default 24).
# Each run logs to OUTDIR/<run>/train.log; OUTDIR/sweep.json lists the results. The same command
# again skips finished runs and resumes unfinished ones. Exits 1 if any run failed, 2 on bad input.
# Afterwards: probes plot OUTDIR --threshold 0.5 --out figures/...
set -u
out=${1:?usage: bash benchmarks/repro_vlm.sh OUTDIR}
config=${CONFIG:-configs/repro-vlm-markers.yaml}
cd "$(dirname "$0")/.."
args=(sweep --config "$config" --out "$out" --jobs "${JOBS:-24}")
for s in ${SEEDS:-}; do args+=(--seed "$s"); done
if [ -n "${MARKER_NOISE:-}" ]; then args+=(--set "marker_noise=$MARKER_NOISE"); fi
start=$(date +%s)
python3 -c "from cli import app; app()" "${args[@]}"
rc=$?
echo "done in $(( $(date +%s) - start )) s (exit $rc)"
exit $rc
