"""Relearning attacks: fine-tune the unlearned model a little and see what comes back.

`finetune`: causal-LM fine-tuning (full parameters or LoRA) on a few examples of
forget-topic text, retain text or unrelated text, over a grid of learning rates and step
counts. Knowledge that comes back after a few steps on *unrelated* text was hidden, not
removed.

`heldout_relearn`: fine-tune on questions and answers of one half of a forget set and
score the other half, for the unlearned and the base model alike: facts that return
without being trained on were still there.
"""

from __future__ import annotations

import copy

import torch

from rmu.models.adapters import wrap
from rmu.data import MCQItem, tokenize


def finetune_checkpoints(model, tokenizer, texts: list[str], mode: str, lr: float, checkpoints: list[int],
                         batch_size: int, max_length: int, lora_r: int, seed: int):
    """Fine-tune a copy of `model` (the input is left untouched) and yield (steps, tuned model
    in eval mode) after each of the step counts in `checkpoints`: one run serves every step
    count of a grid. AdamW, causal-LM loss on `texts` (cycled in order), full parameters or
    LoRA (rank `lora_r`, alpha 2r) on every linear layer."""
    torch.manual_seed(seed)
    tuned = copy.deepcopy(model)
    if mode == "lora":
        from peft import LoraConfig

        tuned.requires_grad_(False)
        tuned = wrap(tuned, LoraConfig(r=lora_r, lora_alpha=2 * lora_r, target_modules="all-linear"))
    else:
        tuned.requires_grad_(True)
    params = [p for p in tuned.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    device = next(tuned.parameters()).device
    done = 0
    for target in sorted(set(checkpoints)):
        tuned.train()
        for step in range(done, target):
            batch = [texts[(step * batch_size + j) % len(texts)] for j in range(batch_size)]
            enc = tokenize(tokenizer, batch, max_length, device)
            labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)  # no loss on padding
            loss = tuned(**enc, labels=labels).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        done = target
        yield target, tuned.eval()


def finetune(model, tokenizer, texts: list[str], mode: str, lr: float, steps: int, batch_size: int,
             max_length: int, lora_r: int, seed: int):
    """A fine-tuned copy of `model` after `steps` steps (finetune_checkpoints), LoRA merged in."""
    *_, (_, tuned) = finetune_checkpoints(model, tokenizer, texts, mode, lr, [steps], batch_size, max_length,
                                          lora_r, seed)
    return tuned.merge_and_unload() if mode == "lora" else tuned.requires_grad_(False)


def qa_texts(items: list[MCQItem]) -> list[str]:
    """Questions with their correct answers, as the evaluation phrases them."""
    return [f"Question: {item.question}\nAnswer: {item.choices[item.answer]}" for item in items]


def split_half(items: list[MCQItem], seed: int) -> tuple[list[MCQItem], list[MCQItem]]:
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    cut = len(items) // 2
    return [items[i] for i in order[:cut]], [items[i] for i in order[cut:]]
