"""Relearning attacks: fine-tune the unlearned model a little and see what comes back.

`finetune`: causal-LM fine-tuning (full parameters or LoRA) on a few examples of
forget-topic text, retain text or unrelated text, over a grid of learning rates and step
counts. Knowledge that comes back after a few steps on *unrelated* text was hidden, not
removed.

`heldout_relearn`: fine-tune on questions and answers of one half of a forget set and
score the other half, for the unlearned and the base model alike: facts that return
without being trained on were still there. With `splits` (the lab's world: facts in
halves A and B that say nothing about each other) it fine-tunes on the documents of half
A and scores the questions of half B.

`relearn_speed`: fine-tune on the documents of a split and score its own questions after
each of several step counts: how fast the knowledge comes back, against how fast the
data-filtered twin (the oracle) learns it from nothing. The oracle's curve also says how
long the attack must run: until the oracle stops improving (its plateau), a fine-tune
cannot tell removed knowledge from hidden knowledge.
"""

from __future__ import annotations

import copy

import torch

from rmu.models.adapters import wrap
from rmu.data import MCQItem, tokenize
from rmu.unlearn.optim import learning_rate


PLATEAU = 0.02  # the oracle has stopped learning when its accuracy moves less than this to the end


def finetune_checkpoints(model, tokenizer, texts: list[str], mode: str, lr: float, checkpoints: list[int],
                         batch_size: int, max_length: int, lora_r: int, seed: int, schedule: str = "constant",
                         weight_decay: float = 0.0):
    """Fine-tune a copy of `model` (the input is left untouched) and yield (steps, tuned model
    in eval mode) after each of the step counts in `checkpoints`: one run serves every step
    count of a grid. AdamW, causal-LM loss on `texts` (cycled in order), full parameters or
    LoRA (rank `lora_r`, alpha 2r) on every linear layer. `schedule`: a constant learning
    rate, or `warmup_cosine` (linear warm-up over the first 10 % of the longest run, then
    cosine decay to 0 at its end: the durability attacks of Qi et al. 2024)."""
    torch.manual_seed(seed)
    tuned = copy.deepcopy(model)
    if mode == "lora":
        from peft import LoraConfig

        tuned.requires_grad_(False)
        tuned = wrap(tuned, LoraConfig(r=lora_r, lora_alpha=2 * lora_r, target_modules="all-linear"))
    else:
        tuned.requires_grad_(True)
    params = [p for p in tuned.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    total = max(checkpoints)
    lr_at = (lambda step: lr) if schedule == "constant" else (lambda step: warmup_cosine(step, total, lr))  # noqa: E731
    device = next(tuned.parameters()).device
    done = 0
    for target in sorted(set(checkpoints)):
        tuned.train()
        for step in range(done, target):
            batch = [texts[(step * batch_size + j) % len(texts)] for j in range(batch_size)]
            enc = tokenize(tokenizer, batch, max_length, device)
            labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)  # no loss on padding
            loss = tuned(**enc, labels=labels).loss
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        done = target
        yield target, tuned.eval()


def warmup_cosine(step: int, total: int, lr: float) -> float:
    """The learning rate at `step` of `total`: linear warm-up over the first 10 %, then cosine to 0."""
    return learning_rate(step, total, lr, warmup=max(1, total // 10), final_ratio=0.0)


def finetune(model, tokenizer, texts: list[str], mode: str, lr: float, steps: int, batch_size: int,
             max_length: int, lora_r: int, seed: int, schedule: str = "constant", weight_decay: float = 0.0):
    """A fine-tuned copy of `model` after `steps` steps (finetune_checkpoints), LoRA merged in."""
    *_, (_, tuned) = finetune_checkpoints(model, tokenizer, texts, mode, lr, [steps], batch_size, max_length,
                                          lora_r, seed, schedule, weight_decay)
    return tuned.merge_and_unload() if mode == "lora" else tuned.requires_grad_(False)


def relearn_curve(model, tokenizer, texts: list[str], score, s, steps: list[int], seed: int) -> dict[int, dict]:
    """{step count: score(tuned model)} after each of `steps`, fine-tuning a copy of `model`
    on `texts` with the settings `s` (mode, lr, batch_size, max_length, lora_r)."""
    return {k: score(tuned) for k, tuned in
            finetune_checkpoints(model, tokenizer, texts, s.mode, s.lr, steps, s.batch_size, s.max_length,
                                 s.lora_r, seed)}


def plateau_step(curve: dict[int, float]) -> int | None:
    """The first step count from which the accuracy stays within PLATEAU of its last value
    (the run was long enough), or None when it still moved at the end (run longer)."""
    steps = sorted(curve)
    if len(steps) < 2 or abs(curve[steps[-1]] - curve[steps[-2]]) > PLATEAU:
        return None
    first = steps[-1]
    for s in reversed(steps):
        if abs(curve[s] - curve[steps[-1]]) > PLATEAU:
            break
        first = s
    return first


def qa_texts(items: list[MCQItem]) -> list[str]:
    """Questions with their correct answers, as the evaluation phrases them."""
    return [f"Question: {item.question}\nAnswer: {item.choices[item.answer]}" for item in items]


def split_half(items: list[MCQItem], seed: int) -> tuple[list[MCQItem], list[MCQItem]]:
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    cut = len(items) // 2
    return [items[i] for i in order[:cut]], [items[i] for i in order[cut:]]
