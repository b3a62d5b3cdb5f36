"""Test oracles: RMU the way the public WMDP code does it, written plainly (the baseline
of the equivalence tests and of `make bench`), and a layer's output read the plain way.

What makes it the reference, on purpose:
- two full models in memory, the updated one and a frozen one;
- `requires_grad` left on for every parameter of the updated model (backward then also
  computes gradients for embeddings and every layer below ℓ, which nobody uses);
- every activation read with a forward hook on layer ℓ while the model runs to full
  depth, final norm, LM head and logits included;
- three such passes per step: forget (updated), retain (updated), retain (frozen);
- the optimizer over the selected tensors only, transformers-style AdamW
  (weight decay 0, eps 1e-6), no scheduler, no clipping.

`mask_padding=True` averages the two losses over real tokens only (the project's
default); the public code averages over every position (`False`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rmu.hooks import StopForward, decoder_layers


def layer_output(model, layer_id: int, batch: dict, stop: bool = True) -> torch.Tensor:
    """Hidden state after decoder layer `layer_id`, shape (B, T, D), from a forward hook on
    an ordinary forward pass (ended right after the layer when `stop`)."""
    store = {}

    def hook(module, args, output):
        store["h"] = output[0] if isinstance(output, tuple) else output
        if stop:
            raise StopForward

    handle = decoder_layers(model)[layer_id].register_forward_hook(hook)
    try:
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
    except StopForward:
        pass
    finally:
        handle.remove()
    return store["h"]


class ReferenceRMU:
    def __init__(self, model, frozen, layer_id: int, update_names: list[str], controls: torch.Tensor,
                 alpha: list[float], lr: float, mask_padding: bool = False):
        self.model, self.frozen = model, frozen.eval()
        self.layer_id, self.controls, self.alpha, self.mask_padding = layer_id, controls, alpha, mask_padding
        params = dict(model.named_parameters())
        self.optimizer = torch.optim.AdamW([params[n] for n in update_names], lr=lr, weight_decay=0.0, eps=1e-6)

    def activations(self, model, inputs):
        cache = []
        hook = model.model.layers[self.layer_id].register_forward_hook(
            lambda module, args, out: cache.append(out[0] if isinstance(out, tuple) else out))
        model(**inputs)
        hook.remove()
        return cache[0]

    def mse(self, a, b, inputs):
        if not self.mask_padding:
            return F.mse_loss(a, b)
        mask = inputs["attention_mask"].unsqueeze(-1).to(a.dtype)  # (B, T, 1)
        return ((a - b) ** 2 * mask).sum() / (mask.sum() * a.shape[-1])

    def step(self, forget_inputs: dict, retain_inputs: dict, k: int) -> tuple[float, float]:
        """One update on topic k; returns (forget loss, retain loss before the α weight)."""
        h = self.activations(self.model, forget_inputs)
        control = self.controls[k].view(1, 1, -1).expand_as(h)
        unlearn_loss = self.mse(h, control, forget_inputs)
        with torch.no_grad():
            frozen_h = self.activations(self.frozen, retain_inputs)
        retain_loss = self.mse(self.activations(self.model, retain_inputs), frozen_h, retain_inputs)
        loss = unlearn_loss + self.alpha[k] * retain_loss
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return unlearn_loss.item(), retain_loss.item()
