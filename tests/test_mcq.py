"""The multiple-choice scorer (rmu/evaluation/mcq.py) against a hand computation, one
unpadded sequence at a time."""

import torch

from rmu.data import MCQItem
from rmu.evaluation.mcq import choice_logprobs, prompt, score_set
from rmu.models.loading import load_model
from tests.conftest import make_cfg

ITEMS = [
    MCQItem("What is the chemical symbol for gold?", ["Au", "Ag", "Fe", "Copper and tin"], 0),
    MCQItem("Which planet is known as the Red Planet?", ["Venus", "Mars", "the largest gas giant", "Io"], 1),
    MCQItem("How many legs does a spider have?", ["eight", "six"], 0),
]


def test_batched_padded_scores_equal_one_sequence_at_a_time():
    model, tok = load_model(make_cfg(["model=tiny_random"]).model, seed=0)
    model.eval()
    batched = choice_logprobs(model, tok, ITEMS, batch_size=2)  # padding and two forward passes
    for item, scores in zip(ITEMS, batched):
        ctx = tok(prompt(item), add_special_tokens=False).input_ids
        for choice, score in zip(item.choices, scores):
            cont = tok(" " + choice, add_special_tokens=False).input_ids
            ids = torch.tensor([ctx + cont])
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ids).logits[0], dim=-1)
            hand = sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont))
            assert abs(score - hand) < 1e-4, (item.question, choice, score, hand)


def test_acc_takes_the_highest_sum_and_acc_norm_the_highest_per_character(monkeypatch):
    import rmu.evaluation.mcq

    # item 1: "Au" (-1.0 / 2 chars) wins on the sum, "Copper and tin" (-3.9 / 14) per character
    # item 2: " Venus" wins both ways (wrong); item 3: " eight" wins both ways (right)
    fake = [[-1.0, -2.0, -3.0, -3.9], [-1.0, -5.0, -5.0, -5.0], [-1.0, -9.0]]
    monkeypatch.setattr(rmu.evaluation.mcq, "choice_logprobs", lambda *a, **k: fake)
    r = score_set(torch.nn.Linear(1, 1), None, ITEMS)
    assert r["acc"] == 2 / 3 and r["acc_norm"] == 1 / 3 and r["n"] == 3
    assert abs(r["chance"] - (0.25 + 0.25 + 0.5) / 3) < 1e-12
