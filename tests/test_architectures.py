"""Every common architecture, as a 4-layer random model of width 64 with the bundled
tokenizer: the default update (`auto`) finds its MLP output projection, the span equals
the full forward, two steps change exactly the selected tensors, the step-0 retain loss
is exactly 0 (no dropout), the checkpoint reloads, and LoRA runs or is refused before
loading. `pytest -k arch` selects them."""

from __future__ import annotations

import time

import pytest
import torch
from transformers import AutoModelForCausalLM

from rmu.errors import ConfigError
from rmu.config.plan import plan_train
from rmu.unlearn.recipe import fit, setup, write_run
from rmu.unlearn.reference_loop import layer_output

LLAMA_LIKE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2)
MOE = dict(LLAMA_LIKE, num_local_experts=4, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32,
           shared_expert_intermediate_size=32)
ARCHS = {  # model_type: config fields; expected update (relative to the layer)
    "llama": (LLAMA_LIKE, ["mlp.down_proj.weight"]),
    "mistral": (LLAMA_LIKE, ["mlp.down_proj.weight"]),
    "qwen2": (LLAMA_LIKE, ["mlp.down_proj.weight"]),
    "qwen3": (dict(LLAMA_LIKE, head_dim=16), ["mlp.down_proj.weight"]),
    "gemma2": (dict(LLAMA_LIKE, head_dim=16), ["mlp.down_proj.weight"]),
    "phi3": (LLAMA_LIKE, ["mlp.down_proj.weight"]),
    "olmo2": (LLAMA_LIKE, ["mlp.down_proj.weight"]),
    "starcoder2": (LLAMA_LIKE, ["mlp.c_proj.weight"]),
    "gpt2": (dict(n_embd=64, n_layer=4, n_head=4), ["mlp.c_proj.weight"]),
    "gpt_neox": (dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4),
                 ["mlp.dense_4h_to_h.weight"]),
    "falcon": (dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=4), ["mlp.dense_4h_to_h.weight"]),
    "gptj": (dict(n_embd=64, n_layer=4, n_head=4, rotary_dim=8), ["mlp.fc_out.weight"]),
    "phi": (dict(LLAMA_LIKE, num_key_value_heads=4), ["mlp.fc2.weight"]),
    "opt": (dict(hidden_size=64, ffn_dim=128, num_hidden_layers=4, num_attention_heads=4, word_embed_proj_dim=64),
            ["fc2.weight"]),
    "mixtral": (MOE, ["mlp.experts.down_proj"]),
    "qwen3_moe": (MOE, ["mlp.experts.down_proj"]),
    "qwen2_moe": (MOE, ["mlp.experts.down_proj", "mlp.shared_expert.down_proj.weight"]),
}


def arch_cfg(tiny_cfg, model_type: str, *extra: str):
    cfg = tiny_cfg("trainer.max_steps=2", "rmu.steering_coeff=auto", *extra)
    cfg.model.arch = {"model_type": model_type, **ARCHS[model_type][0]}
    return cfg


def run_steps(run) -> list[dict]:
    return fit(run, ({}, None))


# make test-fast keeps one of each kind (Llama-like, GPT-2's names, fused experts); make test runs all.
FAST = ("llama", "gpt2", "mixtral")


@pytest.mark.parametrize("model_type", [t if t in FAST else pytest.param(t, marks=pytest.mark.slow) for t in ARCHS])
def test_arch_default_update_trains_exactly_the_mlp_output_projection(tiny_cfg, model_type):
    cfg = arch_cfg(tiny_cfg, model_type)
    plan = plan_train(cfg)
    prefix = plan.layers_prefix
    assert plan.update_names == [f"{prefix}.{i}.{p}" for i in (0, 1, 2) for p in ARCHS[model_type][1]]
    run = setup(cfg)
    batch = {k: v for k, v in run.tokenizer(["The cell divides.", "Stars burn hydrogen into helium."],
                                            return_tensors="pt", padding=True).items()
             if k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        assert torch.equal(run.span.run(run.span.prefix(batch)), layer_output(run.model, plan.layer_id, batch))
    before = {n: p.detach().clone() for n, p in run.model.named_parameters()}
    rows = run_steps(run)
    changed = {n for n, p in run.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == set(plan.update_names)
    assert rows[0]["retain_loss"] == 0.0  # no dropout: the updated and frozen passes agree exactly at step 0
    write_run(run, rows, ({}, None), ({}, None), {"train": 0.0}, time.perf_counter())
    reloaded = AutoModelForCausalLM.from_pretrained(cfg.output_dir)
    with torch.no_grad():
        assert torch.allclose(layer_output(reloaded, plan.layer_id, batch),
                              layer_output(run.model, plan.layer_id, batch), atol=1e-5)


@pytest.mark.slow  # make test runs it; make test-fast keeps the full-update case of every architecture
@pytest.mark.parametrize("model_type", list(ARCHS))
def test_arch_lora_trains_on_exactly_the_mlp_output_projection(tiny_cfg, model_type):
    cfg = arch_cfg(tiny_cfg, model_type, "adapter=lora")
    plan = plan_train(cfg)
    run = setup(cfg)
    rows = run_steps(run)
    with torch.no_grad():
        batch = run.tokenizer(["The cell divides."], return_tensors="pt")
        adapted = layer_output(run.model, plan.layer_id, dict(batch))
    wrapped = {n.rsplit(".lora_", 1)[0] for n, _ in run.model.named_parameters() if ".lora_" in n}
    write_run(run, rows, ({}, None), ({}, None), {"train": 0.0}, time.perf_counter())  # merged
    merged = AutoModelForCausalLM.from_pretrained(cfg.output_dir)
    with torch.no_grad():
        assert torch.allclose(layer_output(merged, plan.layer_id, dict(batch)), adapted, atol=1e-5)
    assert run.updated and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    # Linear modules by name; fused expert tensors (peft target_parameters) on their experts module.
    expected = {f"{plan.layers_prefix}.{i}.{t}" for i in (0, 1, 2) for t in plan.lora_targets}
    expected |= {f"{plan.layers_prefix}.{i}.{p.rsplit('.', 1)[0]}" for i in (0, 1, 2) for p in plan.lora_parameters}
    assert wrapped == expected and (plan.lora_parameters != []) == (model_type in ("mixtral", "qwen3_moe", "qwen2_moe"))
    assert rows[0]["retain_loss"] == 0.0  # LoRA's B starts at zero: step 0 is the frozen model exactly


def test_arch_unknown_type_suggests_its_mlp_output(tiny_cfg):
    cfg = arch_cfg(tiny_cfg, "llama")
    cfg.model.arch = {"model_type": "mpt", "d_model": 64, "n_layers": 4, "n_heads": 4, "expansion_ratio": 2}
    with pytest.raises(ConfigError, match=r"no default for model_type 'mpt'.*ffn.down_proj.weight"):
        plan_train(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("model_type", ["mixtral", "qwen2_moe"])
def test_arch_moe_updates_only_the_chosen_experts_and_names_them_as_the_checkpoint_does(tiny_cfg, model_type):
    from safetensors import safe_open

    from rmu.evaluation.results import RunResults
    cfg = arch_cfg(tiny_cfg, model_type, "rmu.experts=[1,3]")
    plan = plan_train(cfg)
    run = setup(cfg)
    before = {n: p.detach().clone() for n, p in run.model.named_parameters()}
    rows = run_steps(run)
    write_run(run, rows, ({}, None), ({}, None), {"train": 0.0}, time.perf_counter())
    params = dict(run.model.named_parameters())
    for name in plan.update_names:
        if name.endswith("experts.down_proj"):
            moved = [not torch.equal(params[name][e], before[name][e]) for e in range(params[name].shape[0])]
            assert moved == [False, True, False, True], (name, moved)
    saved = RunResults.read(cfg.output_dir).checkpoint_parameters
    with safe_open(f"{cfg.output_dir}/model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert set(saved) <= keys and all(".experts.1." in n or ".experts.3." in n or "shared" in n for n in saved)
    assert len([n for n in saved if ".experts." in n]) == 2 * 3  # two experts in each of three layers
    with pytest.raises(ConfigError, match="rmu.experts=\\[9\\]: must be expert indices in 0..3"):
        plan_train(arch_cfg(tiny_cfg, model_type, "rmu.experts=[9]", "overwrite=true"))
    with pytest.raises(ConfigError, match="rmu.experts=\\[1\\]: the updated tensors hold no routed experts"):
        plan_train(arch_cfg(tiny_cfg, "llama", "rmu.experts=[1]", "overwrite=true"))
