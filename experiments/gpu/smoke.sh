#!/usr/bin/env bash
# The first thing to run on a GPU machine: about 10 minutes on one GPU, no download.
#
#   bash experiments/gpu/smoke.sh                      # after `make install`
#   DEVICE=cpu MODEL=tiny_random bash experiments/gpu/smoke.sh   # the same checks on the CPU (tests/test_gpu_smoke.py)
#
# 1. the bench (rmu step vs the reference loop) in bf16 on a random model of Zephyr-7B's
#    shape (conf/model/zephyr_7b_random.yaml): speed, peak memory, loss agreement;
# 2. the default step in bf16 and fp16 on that model (20 steps each, finite losses,
#    a reloadable checkpoint);
# 3. with two or more GPUs: DDP (torchrun, 2 processes × batch 2) and FSDP (accelerate,
#    experiments/accelerate/fsdp.yaml) each against one process × batch 4: same weights.
# The last line is one summary: `smoke: bench speedup=… memory_ratio=… | bf16 ok | fp16 ok | ddp … | fsdp …`.
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
DEVICE=${DEVICE:-cuda}
MODEL=${MODEL:-zephyr_7b_random}
OUT=${OUT:-outputs/gpu-smoke-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
if [ "$DEVICE" = cuda ]; then GPUS=$(nvidia-smi -L | wc -l); else GPUS=${GPUS:-0}; fi
STEP=(model="$MODEL" model.device="$DEVICE" eval=none trainer.progress=false rmu.layer_id=3
      data.forget.0.max_length=256 data.forget.1.max_length=256 data.retain.0.max_length=256)
summary="smoke:"

bench=$("$PY" experiments/bench/bench.py --model "$MODEL" --device "$DEVICE" --dtype bfloat16 --layer 3 \
        --length 256 --steps 3 --warmup 1 --no-scaling | tail -n 1)
echo "$bench"
summary="$summary ${bench#bench: } |"

for dtype in bfloat16 float16; do
  "$PY" -m rmu.train "${STEP[@]}" model.dtype=$dtype trainer.max_steps=20 output_dir="$OUT/$dtype" > "$OUT/$dtype.log" 2>&1
  "$PY" - "$OUT/$dtype" <<'PY'
import json, math, sys
rows = [json.loads(line) for line in open(f"{sys.argv[1]}/metrics.jsonl")]
assert len(rows) == 20 and all(math.isfinite(r["loss"]) for r in rows), "non-finite or missing steps"
from transformers import AutoModelForCausalLM
AutoModelForCausalLM.from_pretrained(sys.argv[1])
PY
  summary="$summary $dtype ok |"
done

if [ "$GPUS" -ge 2 ]; then
  "$PY" -m rmu.train "${STEP[@]}" model.dtype=float32 trainer.max_steps=6 trainer.batch_size=4 \
      output_dir="$OUT/one" > "$OUT/one.log" 2>&1
  "$(dirname "$PY")/torchrun" --nproc_per_node 2 -m rmu.train "${STEP[@]}" model.dtype=float32 trainer.max_steps=6 \
      trainer.batch_size=2 output_dir="$OUT/ddp" > "$OUT/ddp.log" 2>&1
  "$(dirname "$PY")/accelerate" launch --config_file experiments/accelerate/fsdp.yaml --num_processes 2 -m rmu.train \
      "${STEP[@]}" model.dtype=float32 trainer.max_steps=6 trainer.batch_size=2 output_dir="$OUT/fsdp" > "$OUT/fsdp.log" 2>&1
  for run in ddp fsdp; do
    gap=$("$PY" - "$OUT/one" "$OUT/$run" <<'PY'
import sys
from safetensors.torch import load_file
a, b = load_file(f"{sys.argv[1]}/model.safetensors"), load_file(f"{sys.argv[2]}/model.safetensors")
print(f"{max(((a[k] - b[k]).abs().max() / a[k].abs().max()).item() for k in a):.1e}")
PY
)
    summary="$summary $run max rel diff $gap |"
  done
else
  summary="$summary ddp/fsdp skipped ($GPUS GPU) |"
fi
echo "${summary% |}"
