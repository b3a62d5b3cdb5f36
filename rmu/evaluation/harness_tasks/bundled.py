"""Data loader for the rmu_* lm-eval tasks: a bundled multiple-choice file as a test split."""

import datasets

from rmu.data import load_mcq


def load(file: str, **_) -> datasets.DatasetDict:
    items = load_mcq(f"bundled:{file}")
    rows = [{"question": i.question, "choices": i.choices, "answer": i.answer} for i in items]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
