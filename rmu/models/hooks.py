"""Finding a model's decoder layers, and stopping a forward pass early.

RMU's losses only read the hidden state after decoder layer ℓ, so nothing after ℓ
(later layers, final norm, LM head, logits) needs to run. A hook raises `StopForward`
once it has what it needs (rmu/unlearn/span.py); the autograd graph up to that point is intact
because the tensors were already computed when the exception unwinds the call stack.
"""

from __future__ import annotations

from torch import nn

from rmu.errors import ConfigError


class StopForward(Exception):
    """Raised by a forward hook to end a pass once it has what it needs (rmu/unlearn/span.py)."""


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks: `model.model.layers` for Llama, Mistral, Qwen2, Gemma…"""
    base = getattr(model, "model", None)
    layers = getattr(base, "layers", None)
    if isinstance(layers, nn.ModuleList):
        return layers
    n = getattr(model.config, "num_hidden_layers", None)
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise ConfigError(f"model.path: cannot find the decoder layers of {type(model).__name__}: no `model.layers` "
                      f"and no ModuleList of num_hidden_layers={n} blocks")
