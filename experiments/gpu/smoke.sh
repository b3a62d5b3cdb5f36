#!/usr/bin/env bash
# The first thing to run on a GPU machine: about 10 minutes on one GPU, no download.
#
#   bash experiments/gpu/smoke.sh                      # after `make install`
#   DEVICE=cpu MODEL=tiny_random bash experiments/gpu/smoke.sh   # the same checks on the CPU (tests/test_experiments_gpu.py)
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
if [ "$DEVICE" = cuda ]; then GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())"); else GPUS=${GPUS:-0}; fi
STEP=(model="$MODEL" model.device="$DEVICE" eval=none trainer.progress=false rmu.layer_id=3
      data.forget.0.max_length=256 data.forget.1.max_length=256 data.retain.0.max_length=256)
summary="smoke:"
run() {  # run <name> <command...>: its output in $OUT/<name>.log; on failure say where and stop
  local name=$1; shift
  "$@" > "$OUT/$name.log" 2>&1 || { echo "smoke: $name failed; the end of $OUT/$name.log:"; tail -n 20 "$OUT/$name.log"; exit 1; }
}

run bench "$PY" experiments/bench/bench.py --model "$MODEL" --device "$DEVICE" --dtype bfloat16 --layer 3 \
    --length 256 --steps 3 --warmup 1 --no-scaling
bench=$(tail -n 1 "$OUT/bench.log")
echo "$bench"
summary="$summary ${bench#bench: } |"

for dtype in bfloat16 float16; do
  run "$dtype" "$PY" -m rmu.train "${STEP[@]}" model.dtype=$dtype trainer.max_steps=20 output_dir="$OUT/$dtype"
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
  run one "$PY" -m rmu.train "${STEP[@]}" model.dtype=float32 trainer.max_steps=6 trainer.batch_size=4 \
      output_dir="$OUT/one"
  run ddp "$PY" -m torch.distributed.run --nproc_per_node 2 -m rmu.train "${STEP[@]}" model.dtype=float32 \
      trainer.max_steps=6 trainer.batch_size=2 output_dir="$OUT/ddp"
  run fsdp "$PY" -m accelerate.commands.launch --config_file experiments/accelerate/fsdp.yaml --num_processes 2 \
      -m rmu.train "${STEP[@]}" model.dtype=float32 trainer.max_steps=6 trainer.batch_size=2 output_dir="$OUT/fsdp"
  for run in ddp fsdp; do
    gap=$("$PY" - "$OUT/one" "$OUT/$run" <<'PY'
import sys
from pathlib import Path
from safetensors.torch import load_file
def weights(folder):  # every shard
    return {k: v for f in sorted(Path(folder).glob("*.safetensors")) if f.name != "control_vectors.safetensors"
            for k, v in load_file(f).items()}
a, b = weights(sys.argv[1]), weights(sys.argv[2])
print(f"{max(((a[k] - b[k]).abs().max() / a[k].abs().max()).item() for k in a):.1e}")
PY
)
    summary="$summary $run max rel diff $gap |"
  done
else
  summary="$summary ddp/fsdp skipped ($GPUS GPU) |"
fi
echo "${summary% |}"
