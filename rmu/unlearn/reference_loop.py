"""The public reference code's loop, written independently: RMU the way the public WMDP
code does it, in plain code, and a layer's output read the plain way. It is the oracle the
tests (tests/test_step.py, test_reference_loop.py, …) and the bench (experiments/bench/bench.py)
compare the trainer against; the trainer itself never imports it.

What makes it the reference, on purpose:
- two full models in memory, the updated one and a frozen one;
- `requires_grad` left on for every parameter of the updated model (backward then also
  computes gradients for embeddings and every layer below ℓ, which nobody uses);
- every activation read with a forward hook on layer ℓ while the model runs to full
  depth, final norm, LM head and logits included;
- three such passes per step: forget (updated), retain (updated), retain (frozen);
- the optimizer over the selected tensors only, AdamW (weight decay 0, eps 1e-6; with
  `old_adamw` transformers 4.38's, eps before the bias correction), no scheduler, no clipping.

`mask_padding=True` averages the two losses over real tokens only (the project's
default); the public code averages over every position (`False`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rmu.models.hooks import StopForward, decoder_layers


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
                 alpha: list[float], lr: float, mask_padding: bool = False, old_adamw: bool = False):
        self.model, self.frozen = model, frozen.eval()
        self.layer_id, self.controls, self.alpha, self.mask_padding = layer_id, controls, alpha, mask_padding
        params = [dict(model.named_parameters())[n] for n in update_names]
        # old_adamw: transformers 4.38's AdamW, the reference code's (HandAdamW below)
        self.optimizer = (HandAdamW(params, lr) if old_adamw else
                          torch.optim.AdamW(params, lr=lr, weight_decay=0.0, eps=1e-6))

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


class HandAdamW:
    """transformers 4.38's AdamW, written out: eps is added to √v before the bias
    correction. Weight decay 0, as the reference runs it."""

    def __init__(self, params, lr: float, betas=(0.9, 0.999), eps: float = 1e-6):
        self.params, self.lr, self.betas, self.eps, self.t = list(params), lr, betas, eps, 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]

    @torch.no_grad()
    def step(self):
        self.t += 1
        b1, b2 = self.betas
        scale = self.lr * (1 - b2 ** self.t) ** 0.5 / (1 - b1 ** self.t)
        for p, m, v in zip(self.params, self.m, self.v):
            m.copy_(b1 * m + (1 - b1) * p.grad)
            v.copy_(b2 * v + (1 - b2) * p.grad * p.grad)
            p.sub_(scale * m / (v.sqrt() + self.eps))

    def zero_grad(self):
        for p in self.params:
            p.grad = None


def hooked_output(model, layer_id: int, inputs: dict) -> torch.Tensor:
    """Decoder layer `layer_id`'s output on `inputs`, read by a forward hook as the reference does."""
    out = []
    handle = model.model.layers[layer_id].register_forward_hook(
        lambda mod, args, o: out.append(o[0] if isinstance(o, tuple) else o))
    model(**inputs)
    handle.remove()
    return out[0]


def wmdp_reference_run(model_dir, work_dir, retain_file, *, seed=42, max_num_batches=80, batch_size=4, layer_id=7,
                       layer_ids=(5, 6, 7), param="mlp.down_proj.weight", coeffs=(20.0, 20.0),
                       alpha=(100.0, 100.0), lr=5e-5, min_len=0):
    """The WMDP reference code's semantics end to end, in plain code: seed, two full models
    (frozen in eval mode), a use_fast=False tokenizer padding left with eos, the bio corpus's
    `text` field and the cyber corpus's raw lines from <work_dir>/data/, texts kept when
    len > min_len, batches cut in file order, control vectors from torch.rand after the
    seed, min(max_num_batches, shortest corpus) steps, right truncation at 512 / 768 / 512,
    unmasked MSEs, the old AdamW. Returns (steps run, {parameter name: final tensor})."""
    import json
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(seed)
    frozen = AutoModelForCausalLM.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    frozen.eval()
    model.train()
    tok = AutoTokenizer.from_pretrained(model_dir, use_fast=False)
    tok.pad_token_id = tok.eos_token_id
    tok.padding_side = "left"

    def batches(texts):
        kept = [t for t in texts if len(t) > min_len]
        return [kept[i:i + batch_size] for i in range(0, len(kept), batch_size)]

    data = Path(work_dir) / "data"
    bio = [json.loads(line)["text"] for line in open(data / "bio-forget-corpus.jsonl")]
    cyber = list(open(data / "cyber-forget-corpus.jsonl"))
    wiki = [json.loads(line)["text"] for line in open(retain_file)]
    forget, retain = [batches(bio), batches(cyber)], [batches(wiki), batches(wiki)]
    names = [f"model.layers.{i}.{param}" for i in layer_ids]
    params = dict(model.named_parameters())
    optimizer = HandAdamW([params[n] for n in names], lr)
    controls = []
    for c in coeffs:
        r = torch.rand(1, 1, model.config.hidden_size, dtype=model.dtype, device=model.device)
        controls.append(r / torch.norm(r) * c)
    steps = min(max_num_batches, min(len(f) for f in forget), min(len(r) for r in retain))
    tok.truncation_side = "right"

    for idx in range(steps):
        k, b = idx % len(forget), idx // len(forget)
        f_in = tok(forget[k][b], return_tensors="pt", padding=True, truncation=True, max_length=512 if k == 0 else 768)
        unlearn = F.mse_loss(hooked_output(model, layer_id, f_in), controls[k])
        r_in = tok(retain[k][b], return_tensors="pt", padding=True, truncation=True, max_length=512)
        with torch.no_grad():
            frozen_h = hooked_output(frozen, layer_id, r_in)
        retain_loss = F.mse_loss(hooked_output(model, layer_id, r_in), frozen_h) * alpha[k]
        optimizer.zero_grad()
        (unlearn + retain_loss).backward()
        optimizer.step()
    return steps, {n: params[n].detach().clone() for n in names}
