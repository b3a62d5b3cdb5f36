"""Linear probes for the answer of multiple-choice questions, on every layer's hidden states.

If RMU only hid the knowledge, a linear read-out of the hidden states may still find the
right answer. Each question is shown with its lettered options (MMLU style); features:

- `last_token`: the hidden state of the prompt's last token (after "Answer:"), and a
  4-way softmax regression on it (one class per option letter);
- `option_mean`: the mean hidden state over each option's tokens, and one linear scorer
  shared by the options (softmax over the options' scores) — the ablation.

Probes are trained on one half of each set and scored on the other half, per layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rmu.data import MCQItem

LETTERS = "ABCDEFGHIJ"


def lettered_prompt(item: MCQItem) -> tuple[str, list[tuple[int, int]]]:
    """The prompt and the character span of each option's text in it."""
    text, spans = f"Question: {item.question}\n", []
    for letter, choice in zip(LETTERS, item.choices):
        text += f"{letter}. "
        spans.append((len(text), len(text) + len(choice)))
        text += choice + "\n"
    return text + "Answer:", spans


@torch.no_grad()
def features(model, tokenizer, items: list[MCQItem], poolings: list[str]) -> dict[str, torch.Tensor]:
    """One forward pass per item, pooled every requested way: last_token gives
    (layers + 1, items, D), option_mean (layers + 1, items, options, D). Index 0 is the
    embedding output, index i the output of decoder layer i-1."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = {pooling: [] for pooling in poolings}
    for item in items:
        text, spans = lettered_prompt(item)
        enc = tokenizer(text, return_tensors="pt", return_offsets_mapping=True, add_special_tokens=False)
        offsets = enc.pop("offset_mapping")[0].tolist()
        hidden = model(input_ids=enc["input_ids"].to(device), output_hidden_states=True).hidden_states
        h = torch.stack(hidden)[:, 0].float().cpu()  # (layers + 1, T, D)
        if "last_token" in out:
            out["last_token"].append(h[:, -1])
        if "option_mean" in out:
            pooled = []
            for start, end in spans:
                tokens = [i for i, (a, b) in enumerate(offsets) if a < end and b > start]
                pooled.append(h[:, tokens].mean(dim=1))
            out["option_mean"].append(torch.stack(pooled, dim=1))  # (layers + 1, options, D)
    model.train(was_training)
    return {pooling: torch.stack(xs, dim=1) for pooling, xs in out.items()}


def fit_and_score(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                  weight_decay: float, steps: int, lr: float) -> float:
    """Train a linear probe on one layer's features and return its test accuracy.

    x: (N, D) with one class per output (last_token), or (N, options, D) scored by one
    shared linear map (option_mean). Features are standardised with training statistics.
    """
    flat = x_train.reshape(-1, x_train.shape[-1])
    mean, std = flat.mean(0), flat.std(0) + 1e-6
    x_train, x_test = (x_train - mean) / std, (x_test - mean) / std
    options = x_train.dim() == 3
    n_out = 1 if options else int(max(y_train.max(), y_test.max())) + 1
    probe = torch.nn.Linear(x_train.shape[-1], n_out)
    opt = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        logits = probe(x_train).squeeze(-1) if options else probe(x_train)  # (N, classes)
        loss = F.cross_entropy(logits, y_train)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        logits = probe(x_test).squeeze(-1) if options else probe(x_test)
        return (logits.argmax(-1) == y_test).float().mean().item()


def probe_features(x: torch.Tensor, items: list[MCQItem], train_fraction: float, weight_decay: float,
                   steps: int, lr: float, seed: int) -> list[float]:
    """Test accuracy of a probe on every layer of precomputed features (index 0 = embeddings)."""
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(items), generator=gen)
    cut = int(len(items) * train_fraction)
    train_idx, test_idx = order[:cut], order[cut:]
    y = torch.tensor([item.answer for item in items])
    accs = []
    for layer in range(x.shape[0]):
        torch.manual_seed(seed)  # the probe's initialisation
        accs.append(fit_and_score(x[layer, train_idx], y[train_idx], x[layer, test_idx], y[test_idx],
                                  weight_decay, steps, lr))
    return accs
