"""In-context attack: worked examples of the forget topic in the prompt.

Each scored question gets k other questions of the same set, each followed by its
correct answer, in front of it, formatted as the evaluation formats them:

    Question: <other q1>
    Answer: <its correct answer>

    ...
    Question: <scored q>
    Answer:

and is scored as usual (rmu/evaluation/mcq.py). The examples are drawn per question with a seeded
generator, never the scored question itself nor another item with the same question text.
If the unlearned model answers better with examples in front, the knowledge is still
reachable by prompting alone.
"""

from __future__ import annotations

import random

from rmu.data import MCQItem
from rmu.evaluation.mcq import prompt


def shot_contexts(items: list[MCQItem], k: int, seed: int) -> list[str]:
    """For each item, the text of k worked examples drawn from the other items."""
    rng = random.Random(seed)
    contexts = []
    for item in items:
        others = [o for o in items if o.question != item.question]
        shots = rng.sample(others, min(k, len(others)))
        contexts.append("".join(f"{prompt(o)} {o.choices[o.answer]}\n\n" for o in shots))
    return contexts
