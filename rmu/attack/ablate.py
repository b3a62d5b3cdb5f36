"""Directional ablation: project a direction out of the residual stream and re-score.

RMU steers forget-text activations toward one random direction. If the knowledge is
only masked by that shift, removing it restores the answers. Forward hooks remove each
chosen layer's output component along its direction: h ← h − (h·d̂) d̂. Two ways to find
the directions:

- `ablate` (needs the base model): per edited layer, the mean output of the unlearned
  model minus that of the base model, on forget text;
- `ablate_unlearned` (the attacker has only the unlearned model): per layer, the mean
  output on forget-topic text minus the mean output on general text, both from the
  unlearned model; projected out at every layer, or at the single layer where that
  difference is largest relative to the layer's mean activation, whichever recovers more.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from rmu.data import tokenize
from rmu.models.hooks import decoder_layers


@torch.no_grad()
def layer_means(model, tokenizer, texts: list[str], layers: list[int], max_length: int,
                batch_size: int = 8) -> dict[int, torch.Tensor]:
    """Mean output (D,) of each decoder layer in `layers` over the real tokens of `texts`.

    Read with forward hooks on the layers themselves, the space `ablated` projects in
    (the model's last hidden state is taken after the final norm, not the last layer's output)."""
    device = next(model.parameters()).device
    blocks = decoder_layers(model)
    sums, count, outputs = {i: 0.0 for i in layers}, 0, {}

    def keep(i):
        def hook(module, args, output):
            outputs[i] = output[0] if isinstance(output, tuple) else output
        return hook

    handles = [blocks[i].register_forward_hook(keep(i)) for i in layers]
    try:
        for start in range(0, len(texts), batch_size):
            enc = tokenize(tokenizer, texts[start:start + batch_size], max_length, device)
            model(**enc, use_cache=False)
            mask = enc["attention_mask"].bool()
            for i in layers:
                sums[i] = sums[i] + outputs[i][mask].float().sum(0)
            count += int(mask.sum())
    finally:
        for h in handles:
            h.remove()
    return {i: s / count for i, s in sums.items()}


def differences(a: dict[int, torch.Tensor], b: dict[int, torch.Tensor]) -> dict[int, tuple[torch.Tensor, float]]:
    """Per layer, the unit vector of a − b and the norm of a − b."""
    return {i: ((a[i] - b[i]) / (a[i] - b[i]).norm(), (a[i] - b[i]).norm().item()) for i in a}


def directions(unlearned, base, tokenizer, texts: list[str], layers: list[int], max_length: int) -> dict:
    """Unit vector of (mean unlearned − mean base) output per layer, and its norm."""
    return differences(layer_means(unlearned, tokenizer, texts, layers, max_length),
                       layer_means(base, tokenizer, texts, layers, max_length))


def topic_directions(model, tokenizer, topic_texts: list[str], general_texts: list[str], max_length: int):
    """From one model alone, per decoder layer: (unit vector of mean topic − mean general
    output, its norm, that norm relative to the mean general output's norm)."""
    layers = list(range(len(decoder_layers(model))))
    topic = layer_means(model, tokenizer, topic_texts, layers, max_length)
    general = layer_means(model, tokenizer, general_texts, layers, max_length)
    return {i: (d, n, n / general[i].norm().item()) for i, (d, n) in differences(topic, general).items()}


@contextmanager
def ablated(model, dirs: dict[int, torch.Tensor]):
    """Within the block, the outputs of the given layers lose their component along d̂."""
    layers = decoder_layers(model)

    def hook(d):
        def project(module, args, output):
            h = output[0] if isinstance(output, tuple) else output
            dd = d.to(h.device)  # float32: no half-precision residue left along d̂
            h = h - ((h.float() @ dd).unsqueeze(-1) * dd).to(h.dtype)
            return (h, *output[1:]) if isinstance(output, tuple) else h
        return project

    handles = [layers[i].register_forward_hook(hook(d.float())) for i, d in dirs.items()]
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
