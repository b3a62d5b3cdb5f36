"""Directional ablation: project the direction RMU added out of the residual stream.

RMU steers forget-text activations toward one random direction. If the knowledge is
only masked by that shift, removing it restores the answers. For each edited layer,
the direction is the mean difference between the unlearned and the base model's
outputs of that layer on forget text (over real tokens); forward hooks on the unlearned
model then remove each output's component along it: h ← h − (h·d̂) d̂.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from rmu.data import tokenize
from rmu.hooks import decoder_layers


@torch.no_grad()
def layer_means(model, tokenizer, texts: list[str], layers: list[int], max_length: int,
                batch_size: int = 8) -> dict[int, torch.Tensor]:
    """Mean output (D,) of each decoder layer in `layers` over the real tokens of `texts`."""
    device = next(model.parameters()).device
    sums, count = {i: 0.0 for i in layers}, 0
    for start in range(0, len(texts), batch_size):
        enc = tokenize(tokenizer, texts[start:start + batch_size], max_length, device)
        hidden = model(**enc, output_hidden_states=True).hidden_states  # index i + 1 = output of layer i
        mask = enc["attention_mask"].bool()
        for i in layers:
            sums[i] = sums[i] + hidden[i + 1][mask].float().sum(0)
        count += int(mask.sum())
    return {i: s / count for i, s in sums.items()}


def directions(unlearned, base, tokenizer, texts: list[str], layers: list[int], max_length: int) -> dict:
    """Unit vector of (mean unlearned − mean base) output per layer, and its norm."""
    a = layer_means(unlearned, tokenizer, texts, layers, max_length)
    b = layer_means(base, tokenizer, texts, layers, max_length)
    return {i: ((a[i] - b[i]) / (a[i] - b[i]).norm(), (a[i] - b[i]).norm().item()) for i in layers}


@contextmanager
def ablated(model, dirs: dict[int, torch.Tensor]):
    """Within the block, the outputs of the given layers lose their component along d̂."""
    layers = decoder_layers(model)

    def hook(d):
        def project(module, args, output):
            h = output[0] if isinstance(output, tuple) else output
            dd = d.to(h.dtype)
            h = h - (h @ dd).unsqueeze(-1) * dd
            return (h, *output[1:]) if isinstance(output, tuple) else h
        return project

    handles = [layers[i].register_forward_hook(hook(d.to(next(model.parameters()).device))) for i, d in dirs.items()]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
