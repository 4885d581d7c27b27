#!/usr/bin/env bash
# Runs experiments' gpu presets side by side on one GPU (small models leave the card mostly idle, so
# running them concurrently uses a short GPU lease better), then, with the time left, the sampling-engine
# benchmark alone on the card. This is the script behind docs/results/gpu/.
#
#   bash docs/results/gpu/run_presets.sh OUT_DIR [experiment ...]
#   env: LMLAB_GPU_LIMIT_S (per-experiment wall limit, default 480; on expiry the run is interrupted and
#        writes a report marked "interrupted"), LMLAB_GPU_TOTAL_S (whole script, default 570),
#        LMLAB_GPU_THREADS (CPU threads per experiment, default 4: with torch's default of one thread per
#        core, experiments side by side oversubscribed the 16 cores in the first runs)
set -u
out=${1:?usage: run_presets.sh OUT_DIR [experiment ...]}
shift
exps=${*:-rl_checkpoints task_competition long_context_ttt}
limit=${LMLAB_GPU_LIMIT_S:-480}
total=${LMLAB_GPU_TOTAL_S:-570}
start=$(date +%s)
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export OMP_NUM_THREADS=${LMLAB_GPU_THREADS:-4} MKL_NUM_THREADS=${LMLAB_GPU_THREADS:-4}
mkdir -p "$out/logs"
{
  date -u +"date %Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
} > "$out/logs/env.txt" 2>&1
nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv -l 15 > "$out/logs/gpu_util.csv" 2>&1 &
smi=$!
pids=()
for e in $exps; do
  ( time timeout -s INT -k 20 "$limit" python3 -m lmlab run "$e" --preset gpu --device cuda \
      --out "$out/$e" ) > "$out/logs/$e.log" 2>&1 &
  pids+=($!)
done
wait "${pids[@]}"
echo "experiments done after $(( $(date +%s) - start )) s" >> "$out/logs/env.txt"
left=$(( total - ($(date +%s) - start) ))
if [ "$left" -gt 60 ]; then
  timeout -s INT "$left" python3 bench/generate_throughput.py --device cuda --check --batch 64 1 \
    > "$out/logs/generate_throughput.log" 2>&1
fi
kill "$smi" 2>/dev/null
echo "script done after $(( $(date +%s) - start )) s" >> "$out/logs/env.txt"
