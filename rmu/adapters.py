"""LoRA mode (`adapter=lora`): the updated layers carry peft LoRA adapters.

The updated model is the base model with its adapters on; the frozen model is the same
model with them off (`disable_adapter()`), so no frozen copy of anything is kept and the
base weights never change. At the end the adapters are merged into a plain model folder
(`adapter.merge=true`) or written as a peft adapter folder.
"""

from __future__ import annotations

import warnings

from torch import nn


def add_lora(model: nn.Module, acfg, update_layers: list[int]):
    """Wrap `model` with LoRA adapters on `acfg.target_modules` of `update_layers`.

    Returns (peft model, the wrapped transformers model inside it, names of the adapter
    tensors in that inner model). Only the adapter tensors require grad.
    """
    from peft import LoraConfig

    config = LoraConfig(r=acfg.r, lora_alpha=acfg.alpha, lora_dropout=acfg.dropout,
                        target_modules=list(acfg.target_modules), layers_to_transform=list(update_layers),
                        layers_pattern="layers", bias="none")
    peft_model = wrap(model, config)
    inner = peft_model.base_model.model  # the original transformers model, LoRA layers swapped in
    names = [n for n, p in inner.named_parameters() if p.requires_grad]
    return peft_model, inner, names


def wrap(model: nn.Module, config):
    """`peft.get_peft_model`, without the deprecation warning peft 0.21 triggers in transformers 5."""
    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(model, config)


def module_names_per_layer(param_names: list[str], layers_prefix: str, layer: int) -> list[str]:
    """Last name component of every module holding a weight in decoder layer `layer`
    (what peft's target_modules matches), e.g. q_proj, down_proj, input_layernorm."""
    prefix = f"{layers_prefix}.{layer}."
    return sorted({n[len(prefix):].rsplit(".", 1)[0].rsplit(".", 1)[-1]
                   for n in param_names if n.startswith(prefix) and n.endswith(".weight")})
