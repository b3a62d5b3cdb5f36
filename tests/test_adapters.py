"""LoRA mode (rmu/models/adapters.py) on the tiny random Llama: the frozen pass is the base
model, the base weights never move, merging changes nothing the model computes, and both
output forms load."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from rmu.errors import ConfigError
from rmu.config.plan import plan_train
from rmu.data import batch_texts, tokenize
from rmu.unlearn.reference_loop import layer_output
from rmu.models.loading import load_model
from rmu.train import train
from rmu.unlearn.recipe import setup

LORA = ["adapter=lora", "adapter.r=4", "optim.lr=1e-2"]


def lora_setup(tiny_cfg, steps=3):
    """The trainer's LoRA wiring (`setup`), then `steps` RMU steps so the adapters are non-zero."""
    cfg = tiny_cfg(*LORA)
    run = setup(cfg)
    plan, inner, span, tok = run.plan, run.model, run.span, run.tokenizer
    base, _ = load_model(cfg.model, cfg.seed)
    names = [n for n, p in inner.named_parameters() if any(p is u for u in run.updated)]  # what the optimizer moves
    control = torch.full((inner.config.hidden_size,), 3.0)
    for step in range(steps):
        forget = tokenize(tok, batch_texts(plan.forget[0], step, 2), 32, "cpu")
        retain = tokenize(tok, batch_texts(plan.retain[0], step, 2), 32, "cpu")
        run.step(forget, retain, control, 100.0, step)
    batch = tokenize(tok, batch_texts(plan.retain[0], 5, 3), 32, "cpu")
    return cfg, plan, run.peft_model, inner, names, span, base, batch


def test_only_adapter_tensors_train_in_the_chosen_layers(tiny_cfg):
    cfg, plan, peft_model, inner, names, *_ = lora_setup(tiny_cfg, steps=0)
    assert names and all(".lora_" in n for n in names)
    assert {int(n.split(".")[2]) for n in names} == set(plan.update_layers) == {0, 1, 2}
    assert all("down_proj" in n for n in names)
    assert [n for n, p in inner.named_parameters() if p.requires_grad] == names


def test_frozen_pass_with_adapters_disabled_is_the_base_model(tiny_cfg):
    cfg, plan, peft_model, inner, names, span, base, batch = lora_setup(tiny_cfg)
    with torch.no_grad():
        frozen = span.run(span.prefix(batch), frozen=True)
        live = span.run(span.prefix(batch))
        expected = layer_output(base, plan.layer_id, batch)
    assert torch.allclose(frozen, expected, atol=1e-6)
    assert not torch.allclose(live, expected, atol=1e-3)  # the adapters did change layer ℓ


def test_base_weights_never_change_before_merging(tiny_cfg):
    cfg, plan, peft_model, inner, names, span, base, batch = lora_setup(tiny_cfg)
    base_sd = base.state_dict()
    for name, t in inner.state_dict().items():
        if ".lora_" in name:
            continue
        plain = name.replace(".base_layer", "")
        assert torch.equal(t, base_sd[plain]), name


def test_merged_model_computes_what_the_adapter_model_computes(tiny_cfg):
    cfg, plan, peft_model, inner, names, span, base, batch = lora_setup(tiny_cfg)
    with torch.no_grad():
        with_adapters = inner(**batch).logits
        merged = peft_model.merge_and_unload()
        after_merge = merged(**batch).logits
    assert torch.allclose(with_adapters, after_merge, rtol=1e-5, atol=1e-5)


def test_lora_run_writes_a_plain_model_or_an_adapter_folder(tiny_cfg):
    from peft import PeftModel

    merged_cfg = tiny_cfg(*LORA, output="merged")
    results = train(merged_cfg)
    out = Path(merged_cfg.output_dir)
    assert not (out / "adapter_config.json").exists()
    w = load_file(out / "model.safetensors")
    assert not any("lora" in k for k in w)
    base, tok = load_model(merged_cfg.model, merged_cfg.seed)
    base_sd = base.state_dict()
    changed = {k for k in w if not torch.equal(w[k], base_sd[k])}
    assert changed == set(results.updated_parameters) == {f"model.layers.{i}.mlp.down_proj.weight" for i in range(3)}
    plain = AutoModelForCausalLM.from_pretrained(out)  # no peft needed

    adapter_cfg = tiny_cfg(*LORA, "adapter.merge=false", output="adapter")
    train(adapter_cfg)
    folder = Path(adapter_cfg.output_dir)
    assert (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()
    fresh, _ = load_model(adapter_cfg.model, adapter_cfg.seed)
    with_adapter = PeftModel.from_pretrained(fresh, folder)
    batch = tokenize(tok, ["Water boils at one hundred degrees."], 16, "cpu")
    with torch.no_grad():
        # Same seed, same data: the adapter folder and the merged folder are the same model.
        assert torch.allclose(with_adapter(**batch).logits, plain(**batch).logits, atol=1e-4)


def test_lora_config_errors_name_the_key(tiny_cfg):
    with pytest.raises(ConfigError, match=r"adapter.target_modules=\['gate'\]: layer 0 has no module 'gate'.*down_proj"):
        plan_train(tiny_cfg(*LORA, "adapter.target_modules=[gate]"))
    with pytest.raises(ConfigError, match="adapter.r=0"):
        plan_train(tiny_cfg(*LORA, "adapter.r=0"))
    with pytest.raises(ConfigError, match="unknown config key 'adapter.rank'"):
        plan_train(tiny_cfg(*LORA, "+adapter.rank=4"))
