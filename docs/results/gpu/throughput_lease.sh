#!/usr/bin/env bash
# Issue 25's throughput measurements in one lease: both benchmarks on one H100/H200 in at most 8 minutes,
# every log and JSON under a work folder, packed into one archive in OUT (the lease returns at most 8 files).
#
#   bash docs/results/gpu/throughput_lease.sh [OUT]      # default OUT: $OUT; writes OUT/throughput.tgz, OUT/summary.txt
#   env: LMLAB_LEASE_TINY=1 shrinks every size and runs on the CPU (the dry run: a few minutes on 2 cores);
#        LMLAB_LEASE_TOTAL_S (default 480) scales the four parts' time limits.
#
# Parts, each under its own limit (a part cut short keeps what it wrote: the benchmarks write JSON after each row):
#   1. tests/test_speed.py on the card: CUDA-graphed and chunked steps against the plain step
#   2. the tiny-model regime (d=128, 2 layers, batch 128 x 128): today's loop (--add-baseline) against the fast
#      eager step, the CUDA-graphed step and compiled + graphed; --check compares their losses with the plain step
#   3. sampling, 124M at batch 64: lmlab against HF generate with dynamic and static cache, 3 interleaved repeats
#   4. 124M pretraining, batch 64 (two micro-batches of 32), MFU by the PaLM count: eager lmlab against HF Llama
#      eager and today's eager step; then compiled lmlab against HF Llama compiled (no compiled baseline: a third
#      124M compilation does not fit the lease)
set -u
out=${1:-${OUT:?usage: throughput_lease.sh OUT (or set OUT)}}
total=${LMLAB_LEASE_TOTAL_S:-480}
work=$(mktemp -d /tmp/throughput.XXXXXX)/throughput
mkdir -p "$work" "$out"
start=$(date +%s)
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

limit() {  # this part's share of the total, in seconds
  echo $(( total * $1 / 100 ))
}

if [ -n "${LMLAB_LEASE_TINY:-}" ]; then
  dev=cpu
  export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
  tiny_args=(--configs micro --modes eager,graph --add-baseline --no-hf --tiny --check)
  gen_args=(--device cpu --tiny)
  eager_args=(--configs micro --modes eager --add-baseline --tiny)
  compiled_args=(--configs micro --modes compiled --tiny)
else
  dev=cuda
  tiny_args=(--configs d128 --modes eager,graph,compiled+graph --add-baseline --no-hf --steps 100 --rounds 4 --check)
  gen_args=(--device cuda --batch 64 --repeats 3 --check)
  eager_args=(--configs 124m --modes eager --add-baseline --steps 10 --rounds 3)
  compiled_args=(--configs 124m --modes compiled --steps 10 --rounds 3)
fi

{
  date -u +"date %Y-%m-%dT%H:%M:%SZ"
  echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  [ "$dev" = cuda ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  echo "device $dev; total limit $total s"
} > "$work/env.txt" 2>&1

part() {  # name, share of the total (%), command...
  local name=$1 share=$2
  shift 2
  local t0
  t0=$(date +%s)
  ( time timeout -s INT -k 15 "$(limit "$share")" "$@" ) > "$work/$name.log" 2>&1
  echo "$name: exit $?, $(( $(date +%s) - t0 )) s (limit $(limit "$share") s)" >> "$work/env.txt"
}

part tests 10 python3 -m pytest -q -x -p no:cacheprovider tests/test_speed.py
part tiny_regime 18 python3 bench/train_throughput.py --device "$dev" "${tiny_args[@]}" --json "$work/tiny_regime.json"
part sampling 27 python3 bench/generate_throughput.py "${gen_args[@]}" --json "$work/sampling.json"
part train_eager 13 python3 bench/train_throughput.py --device "$dev" "${eager_args[@]}" --json "$work/train_eager.json"
part train_compiled 32 python3 bench/train_throughput.py --device "$dev" "${compiled_args[@]}" \
  --json "$work/train_compiled.json"
echo "script done after $(( $(date +%s) - start )) s" >> "$work/env.txt"

{
  cat "$work/env.txt"
  echo; echo "== tests"; grep -E "passed|failed|error" "$work/tests.log"
  echo; echo "== tiny-model regime"; grep -E "check|MFU count|cfg |eager|graph|OOM|Error" "$work/tiny_regime.log" | grep -v Warning
  echo; echo "== sampling"; grep -E "check|batch|Error" "$work/sampling.log"
  echo; echo "== pretraining"
  grep -hE "device:|MFU count|cfg |eager|compiled|OOM|Error" "$work/train_eager.log" "$work/train_compiled.log" \
    | grep -v Warning
} > "$work/summary.txt" 2>&1
cp "$work/summary.txt" "$out/summary.txt"
tar czf "$out/throughput.tgz" -C "$(dirname "$work")" throughput
cat "$out/summary.txt"
