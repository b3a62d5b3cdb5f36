"""LoRA mode (`adapter=lora`): the updated layers carry peft LoRA adapters.

The updated model is the base model with its adapters on; the frozen model is the same
model with them off (`disable_adapter()`), so no frozen copy of anything is kept and the
base weights never change. At the end the adapters are merged into a plain model folder
(`adapter.merge=true`) or written as a peft adapter folder.
"""

from __future__ import annotations

import warnings

from torch import nn


def add_lora(model: nn.Module, acfg, update_layers: list[int], targets: list[str], layers_prefix: str,
             fused: list[str] | None = None):
    """Wrap `model` with LoRA adapters on the `targets` modules (adapter.target_modules,
    `auto` resolved) of `update_layers`; `layers_prefix` is where the decoder layers are
    (model.layers, GPT-2's transformer.h), whose last part peft needs as layers_pattern.
    `fused`: fused expert tensors (relative to a layer) adapted through peft's
    target_parameters, named in full per layer (peft applies no layer filter to those).

    Returns (peft model, the wrapped transformers model inside it, names of the adapter
    tensors in that inner model). Only the adapter tensors require grad.
    """
    from peft import LoraConfig

    parameters = [f"{layers_prefix}.{i}.{p}" for i in update_layers for p in fused or []]
    config = LoraConfig(r=acfg.r, lora_alpha=acfg.alpha, lora_dropout=acfg.dropout, target_modules=targets,
                        layers_to_transform=list(update_layers) if targets else None,
                        layers_pattern=layers_prefix.rsplit(".", 1)[-1] if targets else None,
                        target_parameters=parameters or None, bias="none")
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
