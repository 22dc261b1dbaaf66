#!/usr/bin/env bash
# Issue 15's study on one GPU (README "Findings", part b): pretrained vs random-init twins on the probe.
#   bash benchmarks/study_pretrained.sh WORKDIR [DEADLINE_SECONDS]
# 1. pretrain the ~20M GPT-NeoX / Mamba pair on the same tokens (configs/pretrain-{pythia,mamba}-20m.yaml); first
#    each model's config.json and byte tokenizer alone go to WORKDIR/init/MODEL (probes pretrain --save-config):
#    the random twins are config:WORKDIR/init/MODEL (same architecture and tokenizer, seeded fresh weights; the
#    same twins as config:PRETRAIN/model), so with WEIGHTS=config nothing is pretrained
# 2. copy test of each pretrained model and of its random twin
# 3. learning-rate search: N=32 suffix, 3,000 steps, lr 1e-4 / 3e-4 / 1e-3, per model (configs/study-lr.yaml)
# 4. the probe with each model's best lr: N = 16, 32, 64, both layouts, seeds 0-2, 20,000 steps or 95%,
#    evaluation every 1% on the whole held-out set (configs/study-probe.yaml)
# Every step resumes: run the same command again after a kill (a finished pretraining or copy test is
# kept, not redone). Past DEADLINE_SECONDS (default: none) the sweeps still running are stopped (their runs
# stay resumable and are reported as unfinished).
# A run whose worker died (out of GPU memory as the packed runs start, say) is started again by its sweep after
# 30 s, up to RETRIES times (default: the sweep's 3); one that still died is failed in its sweep's sweep.json, and
# when the sweeps end before the deadline, those with such a run go once more (step 4b), which runs it again.
# Environment: NS="32 64" limits the probe's N (default: the config's 16 32 64); CELLS="16:suffix 32:prefix"
# runs only those (N, layout) cells instead, one sweep each (WORKDIR/probe/WEIGHTS-MODEL-nN-LAYOUT);
# SEEDS="0,1" replaces the config's seeds; JOBS runs at once per sweep (default 6); SET="cuda_graphs=true"
# adds --set KEY=VALUE to every probe run; WEIGHTS="hf" runs steps 2-4 on the pretrained models only,
# WEIGHTS="config" on their random twins only, without pretraining (default: both); MODELS="mamba-20m" keeps
# one of the pair (default: pythia-20m mamba-20m); MPS=1 runs the GPU under CUDA MPS (nvidia-cuda-mps-control,
# started here and stopped at the end) so that the packed runs' kernels can share it. The best lrs are kept
# in WORKDIR/best_lr.txt ("hf:pythia-20m 0.0001" per line); when that file exists step 3 is skipped. A line may
# list several lrs ("hf:mamba-20m 0.0001,0.0003"): every probe cell of that model then runs each of them (an lr
# search at the cell's own N).
# SNAPSHOT=FILE.tgz packs WORKDIR's small files (logs, copy tests, run directories without checkpoints, models
# or a pretraining's tokenised corpus/) into FILE after each step and every SNAPSHOT_EVERY seconds (default
# 60) while the probe runs, replacing it atomically: on a machine that may vanish, copy FILE off now and then
# and lose at most that.
# A bad setting (of these, or a second argument that is not seconds) is one line and exit 2, before anything starts.
set -u
W=${1:?usage: bash benchmarks/study_pretrained.sh WORKDIR [DEADLINE_SECONDS]}
DEADLINE=${2:-0}
cd "$(dirname "$0")/.."
# an array, not a shell function: a background "${PROBES[@]}" ... & is the python process itself ($!), so the
# deadline's SIGTERM reaches the sweep (which checkpoints its runs) instead of a subshell that would orphan it
PROBES=(python3 -c "from cli import app; app()")
T0=$(date +%s)
JOBS=${JOBS:-6}
N_ARGS=(); for n in ${NS:-}; do N_ARGS+=(--n "$n"); done
SWEEP_ARGS=(); for kv in ${SET:-}; do SWEEP_ARGS+=(--set "$kv"); done  # options of every probe sweep
if [ -n "${SEEDS:-}" ]; then SWEEP_ARGS+=(--seed "$SEEDS"); fi
if [ -n "${RETRIES:-}" ]; then SWEEP_ARGS+=(--retries "$RETRIES"); fi
refuse() { echo "error: $*" >&2; exit 2; }  # a bad setting: one line, exit 2, before anything starts
for c in ${CELLS:-}; do
  [[ $c =~ ^[0-9]+:(suffix|prefix)$ ]] || refuse "CELLS: '$c' is not N:LAYOUT (e.g. 16:suffix; layouts: suffix, prefix)"
done
for n in ${NS:-}; do [[ $n =~ ^[0-9]+$ ]] || refuse "NS: '$n' is not a whole number (e.g. NS=\"16 32\")"; done
[[ -z ${SEEDS:-} || $SEEDS =~ ^[0-9]+(,[0-9]+)*$ ]] || refuse "SEEDS: '$SEEDS' is not seeds separated by commas (e.g. 0,1,2)"
[[ $JOBS =~ ^[1-9][0-9]*$ ]] || refuse "JOBS: '$JOBS' is not a number of runs above 0"
[[ -z ${RETRIES:-} || $RETRIES =~ ^[0-9]+$ ]] || refuse "RETRIES: '$RETRIES' is not a whole number of restarts (e.g. 0)"
[[ $DEADLINE =~ ^[0-9]+$ ]] || refuse "DEADLINE_SECONDS: '$DEADLINE' is not a whole number of seconds"
SNAPSHOT=${SNAPSHOT:-}; SNAPSHOT_EVERY=${SNAPSHOT_EVERY:-60}
[[ $SNAPSHOT_EVERY =~ ^[1-9][0-9]*$ ]] || refuse "SNAPSHOT_EVERY: '$SNAPSHOT_EVERY' is not a number of seconds above 0"
[[ -z $SNAPSHOT || -d $(dirname "$SNAPSHOT") ]] || refuse "SNAPSHOT: '$SNAPSHOT' is not in an existing directory"
for w in ${WEIGHTS:-}; do [[ $w =~ ^(hf|config)$ ]] || refuse "WEIGHTS: '$w' is not hf or config"; done
# the best lr of a search: the fewest steps to 95% among runs that reached it, else the best accuracy
best_lr() {
  python3 - "$1" <<'PY'
import json, pathlib, sys, yaml
best = []
for p in pathlib.Path(sys.argv[1]).glob("*/summary.json"):
    r, lr = json.loads(p.read_text()), yaml.safe_load((p.parent / "config.yaml").read_text())["lr"]
    best.append((r["status"] != "reached", r["step_reached"] or 0, -(r["best_accuracy"] or 0), lr))
print(min(best)[3])
PY
}
read -r -a MODELS <<< "${MODELS:-pythia-20m mamba-20m}"
for m in "${MODELS[@]}"; do
  if [ ! -f "configs/pretrain-$m.yaml" ]; then
    known=$(cd configs && ls pretrain-*.yaml | sed 's/^pretrain-//; s/[.]yaml$//' | paste -sd, -)
    refuse "MODELS: no configs/pretrain-$m.yaml for '$m' (allowed: ${known//,/, })"
  fi
done
if [ "${MPS:-0}" = 1 ]; then
  command -v nvidia-cuda-mps-control > /dev/null || refuse "MPS=1 but nvidia-cuda-mps-control is not installed"
  nvidia-cuda-mps-control -d && trap 'echo quit | nvidia-cuda-mps-control' EXIT
fi
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
snapshot() {  # WORKDIR without models, checkpoints and tokenised corpora into $SNAPSHOT (tar exit 1: a file
  [ -n "$SNAPSHOT" ] || return 0  # changed while read)
  tar czf "$SNAPSHOT.tmp" -C "$(dirname "$W")" --exclude='checkpoint*' --exclude=model --exclude=corpus --exclude='.*.tmp' \
    --exclude="$(basename "$SNAPSHOT")*" "$(basename "$W")" 2> /dev/null
  if [ $? -le 1 ]; then mv -f "$SNAPSHOT.tmp" "$SNAPSHOT"; else rm -f "$SNAPSHOT.tmp"; fi
}
mkdir -p "$W/copy" "$W/lr" "$W/probe" "$W/init"
PT=$W/pretrain
read -r -a WS <<< "${WEIGHTS:-hf config}"
# the model a probe run starts from: the pretrained weights, or a random twin built from the pair's config alone
# (WORKDIR/init/MODEL: config.json + byte tokenizer, the files of PT/MODEL/model), so twins need no pretraining
model_of() { if [ "$1" = hf ]; then echo "hf:$PT/$2/model"; else echo "config:$W/init/$2"; fi; }

stamp "1. pretraining ${MODELS[*]}"
for m in "${MODELS[@]}"; do
  [ -f "$W/init/$m/config.json" ] || "${PROBES[@]}" pretrain --config "configs/pretrain-$m.yaml" \
    --save-config "$W/init/$m" > "$W/init-$m.log" 2>&1 || { cat "$W/init-$m.log" >&2; exit 1; }
done
if [[ " ${WS[*]} " == *" hf "* ]]; then
  for m in "${MODELS[@]}"; do
    [ -f "$PT/$m/model/config.json" ] && continue  # finished earlier
    "${PROBES[@]}" pretrain --config "configs/pretrain-$m.yaml" --out "$PT/$m" --no-progress > "$W/pretrain-$m.log" 2>&1 &
  done
  wait
  for m in "${MODELS[@]}"; do tail -n 1 "$W/pretrain-$m.log"; done
else
  echo "WEIGHTS=${WS[*]}: random twins only, no pretraining"
fi
snapshot

stamp "2. copy test"
for m in "${MODELS[@]}"; do
  for w in "${WS[@]}"; do
    out="$W/copy/$m-$([ "$w" = hf ] && echo pretrained || echo random).parquet"
    [ -f "$out" ] || "${PROBES[@]}" copytest --model "$(model_of "$w" "$m")" --lengths 16,64,128 --batch 64 --out "$out"
  done
done

stamp "3. learning-rate search"
LRS=$W/best_lr.txt
if [ -s "$LRS" ]; then echo "using $LRS"; else
pids=()
for m in "${MODELS[@]}"; do
  for w in "${WS[@]}"; do
    "${PROBES[@]}" sweep --config configs/study-lr.yaml --model "$(model_of "$w" "$m")" --out "$W/lr/$w-$m" \
      --jobs 3 --no-progress > "$W/lr-$w-$m.log" 2>&1 &
    pids+=($!)
  done
done
wait "${pids[@]}"
for m in "${MODELS[@]}"; do for w in "${WS[@]}"; do echo "$w:$m $(best_lr "$W/lr/$w-$m")"; done; done > "$LRS"
fi
cat "$LRS"
snapshot

stamp "4. the probe"
probe() {  # probe WEIGHTS:MODEL LR NAME [GRID OPTIONS]: one sweep in the background into WORKDIR/probe/NAME
  if [ "$AGAIN" = 1 ] && ! has_failed_run "$W/probe/$3/sweep.json"; then return; fi
  "${PROBES[@]}" sweep --config configs/study-probe.yaml --model "$(model_of "${1%%:*}" "${1#*:}")" --lr "$2" \
    --out "$W/probe/$3" "${@:4}" "${SWEEP_ARGS[@]}" --jobs "$JOBS" --no-progress >> "$W/probe-$3.log" 2>&1 &
  pids+=($!)
}
probe_pass() {  # every cell's sweep at once (AGAIN=1: only the sweeps a run of which failed), until done or the deadline
  pids=()
  for m in "${MODELS[@]}"; do
    for w in "${WS[@]}"; do
      lr=$(awk -v k="$w:$m" '$1 == k {print $2}' "$LRS")
      if [ -z "${CELLS:-}" ]; then probe "$w:$m" "$lr" "$w-$m" "${N_ARGS[@]}"; fi
      for c in ${CELLS:-}; do probe "$w:$m" "$lr" "$w-$m-n${c%:*}-${c#*:}" --n "${c%:*}" --layout "${c#*:}"; done
    done
  done
  packed=$(date +%s)
  while alive && before_deadline; do
    sleep 1
    if [ $(( $(date +%s) - packed )) -ge "$SNAPSHOT_EVERY" ]; then snapshot; packed=$(date +%s); fi
  done
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done  # past the deadline (else they have all ended)
  wait
}
alive() { for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && return 0; done; return 1; }
before_deadline() { [ "$DEADLINE" -eq 0 ] || [ $(( $(date +%s) - T0 )) -lt "$DEADLINE" ]; }
has_failed_run() { grep -qs '"status": "failed"' "$@"; }  # has_failed_run SWEEP.JSON...: a run there is failed
AGAIN=0 probe_pass
# a run whose worker died (e.g. out of GPU memory while the packed runs started) is failed in its sweep.json; the
# same sweep resumes it (a run that failed on its own, e.g. by diverging, is finished and stays as it is)
if before_deadline && has_failed_run "$W"/probe/*/sweep.json; then
  stamp "4b. the probe again, for the runs whose worker died"
  AGAIN=1 probe_pass
fi
snapshot
stamp "done"
