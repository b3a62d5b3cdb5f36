"""The part of the model an RMU step runs: the decoder layers from the first updated one to ℓ.

The losses read only h_ℓ, and only layers `first..ℓ` (first = the lowest updated layer)
change. So a step needs:

- the *prefix*: embeddings and layers 0..first-1, identical in the updated and the frozen
  model and with nothing to train. It runs once per batch, without autograd, and its
  output is shared by the updated and the frozen pass of that batch;
- the *span* `first..ℓ` with the current weights (with autograd), and the same span with
  the original values of the updated tensors (the frozen pass). Those original values are
  the only copy kept: no second model.

Nothing after layer ℓ runs (no later layers, final norm, LM head or logits).

The prefix pass records what the model hands each decoder layer (the hidden state and
its keyword arguments: attention mask, rotary embeddings, position ids), so the span is
run with exactly what a full forward would give it. Layers of one attention type share
those arguments; models that mix types (e.g. sliding and full attention) give each layer
its own, and then the prefix pass runs on through ℓ to record them all.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from rmu.models.hooks import StopForward, decoder_layers


class LayerSpan:
    """Decoder layers `first..layer_id` of `model`, with a frozen copy of the updated tensors.

    `update_names` are full parameter names (`model.layers.5.mlp.down_proj.weight`); they
    must all lie in layers `first..layer_id`. With `disable_adapter` (LoRA mode: a context
    manager that turns the adapters off) the frozen pass is the same layers with their
    adapters off, and nothing is copied.
    """

    def __init__(self, model: nn.Module, layer_id: int, update_names: list[str], disable_adapter=None):
        self.model = model
        self.layers = decoder_layers(model)
        owner = {id(p): name for name, p in model.named_parameters()}
        layer_of = {}  # full parameter name -> (layer index, name inside the layer)
        for i, layer in enumerate(self.layers):
            for local, p in layer.named_parameters():
                layer_of[owner[id(p)]] = (i, local)
        outside = [n for n in update_names if n not in layer_of or layer_of[n][0] > layer_id]
        if outside:
            raise ValueError(f"updated parameters outside decoder layers 0..{layer_id}: {outside}")
        self.first = min(layer_of[n][0] for n in update_names)
        self.last = layer_id
        # The frozen pass: original values of the updated tensors, per layer, outside autograd.
        params = dict(model.named_parameters())
        self.disable_adapter = disable_adapter
        self.frozen: dict[int, dict[str, torch.Tensor]] = {}
        for name in update_names if disable_adapter is None else []:
            i, local = layer_of[name]
            self.frozen.setdefault(i, {})[local] = params[name].detach().clone()
        types = getattr(model.config, "layer_types", None)
        self.shared_kwargs = types is None or len({types[i] for i in range(self.first, self.last + 1)}) == 1

    @torch.no_grad()
    def prefix(self, batch: dict) -> dict[int, tuple[tuple, dict]]:
        """Run embeddings and layers 0..first-1; return each span layer's call arguments.

        Keys are layer indices; the hidden state is the first positional argument of
        `first`'s entry. Without autograd: nothing below `first` trains.
        """
        calls: dict[int, tuple[tuple, dict]] = {}
        stop_at = self.first if self.shared_kwargs else self.last

        def record(i):
            def hook(module, args, kwargs):
                if not args:  # hidden state passed by keyword: make it the first positional argument
                    kwargs = dict(kwargs)
                    args = (kwargs.pop("hidden_states"),)
                calls[i] = (args, kwargs)
                if i == stop_at:
                    raise StopForward
            return hook

        handles = [self.layers[i].register_forward_pre_hook(record(i), with_kwargs=True)
                   for i in range(self.first, stop_at + 1)]
        try:
            self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        except StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        return calls

    def hidden_in(self, calls: dict[int, tuple[tuple, dict]]) -> torch.Tensor:
        """The hidden state entering the first span layer (B, T, D), from `prefix`'s output."""
        return calls[self.first][0][0]

    def with_hidden(self, calls: dict[int, tuple[tuple, dict]], h: torch.Tensor) -> dict[int, tuple[tuple, dict]]:
        """`prefix`'s output with another hidden state `h` entering the first span layer
        (the latent adversary's perturbed input); the other call arguments are shared."""
        args, kwargs = calls[self.first]
        return {**calls, self.first: ((h, *args[1:]), kwargs)}

    def run(self, calls: dict[int, tuple[tuple, dict]], frozen: bool = False) -> torch.Tensor:
        """h_ℓ, shape (B, T, D), from the prefix output: current weights (differentiable), or
        with `frozen=True` the original values of the updated tensors (call under no_grad)."""
        if frozen and self.disable_adapter is not None:
            with self.disable_adapter():
                return self.run(calls)
        args, kwargs = calls[self.first]
        h, rest = args[0], args[1:]
        for i in range(self.first, self.last + 1):
            if not self.shared_kwargs:
                rest, kwargs = calls[i][0][1:], calls[i][1]
            if frozen and i in self.frozen:
                out = functional_call(self.layers[i], self.frozen[i], (h, *rest), kwargs, strict=False)
            else:
                out = self.layers[i](h, *rest, **kwargs)
            h = out[0] if isinstance(out, tuple) else out
        return h
