"""Corpora (forget / retain text) and multiple-choice sets: where they come from and
how they are batched, as padded batches of whole texts (RMU, the attacks) or as packed rows
of tokens (`TokenStream`: the lab's pretraining, distillation).

A corpus entry in the config names exactly one source:
  - `path`: a local `.jsonl` (one JSON object per line, text under `field`; `field: null`
    takes every raw line, JSON and newline included, as the reference reads its cyber
    corpus) or `.txt` (one document per non-empty line) file; `bundled:<file>` names a
    file shipped in `rmu/corpora/`;
  - `dataset`: a `datasets` id or local dataset folder, with `subset`, `split`, `field`
    (how the WMDP corpora and wikitext are published).
Texts with fewer than `min_chars` characters are dropped (with `strictly_longer`, texts
of exactly `min_chars` too: the reference keeps `len(text) > min_len`).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from rmu.errors import DataError

BUNDLED_DIR = Path(__file__).parent / "corpora"


@dataclass
class Corpus:
    name: str
    texts: list[str]
    max_length: int  # tokens; longer texts are truncated


@dataclass
class MCQItem:
    question: str
    choices: list[str]
    answer: int  # index into choices


def resolve_path(path: str) -> Path:
    if path.startswith("bundled:"):
        return BUNDLED_DIR / path.removeprefix("bundled:")
    return Path(path).expanduser()


def _check_file(path: Path) -> None:
    if path.is_dir():
        raise DataError(f"{path}: is a folder; give one file (a corpus: .jsonl with one JSON object per line, or "
                        f".txt with one text per line; a multiple-choice set: .jsonl)")
    if not path.is_file():
        raise DataError(f"{path}: file not found")


def _lines(path: Path):
    """(line number, text) of a UTF-8 text file; a DataError naming the line that is not UTF-8."""
    _check_file(path)
    try:
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    yield lineno, raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{path}, line {lineno}: not UTF-8 (byte {raw[e.start]:#04x} at column "
                                    f"{e.start + 1}); re-encode the file as UTF-8") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def _read_jsonl(path: Path) -> list[tuple[int, dict]]:
    rows = []
    for lineno, line in _lines(path):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}, line {lineno}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}, line {lineno}: expected a JSON object, got {type(row).__name__}")
        rows.append((lineno, row))
    return rows


def load_texts(entry: dict, min_chars: int, strictly_longer: bool = False) -> list[str]:
    """All texts of one corpus entry, in source order, shorter ones dropped."""
    field = entry.get("field", "text")
    if entry.get("path"):
        path = resolve_path(entry["path"])
        _check_file(path)
        if field is None:  # every line as it is in the file
            texts = [line for _, line in _lines(path)]
        elif path.suffix == ".jsonl":
            texts = []
            for lineno, row in _read_jsonl(path):
                if not isinstance(row.get(field), str):
                    raise DataError(f"{path}, line {lineno}: no string field {field!r} "
                                    f"(keys: {sorted(row)}); set `field` to the key that holds the text")
                texts.append(row[field])
        elif path.suffix == ".txt":
            texts = [line.rstrip("\n") for _, line in _lines(path) if line.strip()]
        else:
            raise DataError(f"{path}: unsupported corpus file type {path.suffix!r}; use .jsonl or .txt")
        where = str(path)
    else:
        import datasets  # only needed for this source; slow to import

        ds = datasets.load_dataset(entry["dataset"], entry.get("subset"), split=entry.get("split") or "train")
        if field not in ds.column_names:
            raise DataError(f"dataset {entry['dataset']}: no column {field!r} (columns: {ds.column_names})")
        texts = [str(t) for t in ds[field]]
        where = f"dataset {entry['dataset']}"
    kept = [t for t in texts if len(t) > min_chars or (len(t) == min_chars and not strictly_longer)]
    if not kept:
        raise DataError(f"{where}: no text {'longer than' if strictly_longer else 'with at least'} {min_chars} "
                        f"characters ({len(texts)} texts read)")
    return kept


def load_corpus(entry: dict, min_chars: int, strictly_longer: bool = False) -> Corpus:
    return Corpus(name=entry["name"], texts=load_texts(entry, min_chars, strictly_longer),
                  max_length=int(entry["max_length"]))


def batch_texts(corpus: Corpus, index: int, batch_size: int, wrap: bool = True) -> list[str]:
    """Batch `index` of the corpus in file order. Past the end it wraps around to the
    start; with `wrap=False` (one pass, as the reference) the last batch may be short."""
    n = len(corpus.texts)
    if not wrap:
        return corpus.texts[index * batch_size:(index + 1) * batch_size]
    start = (index * batch_size) % n
    return [corpus.texts[(start + j) % n] for j in range(batch_size)]


def n_batches(corpus: Corpus, batch_size: int) -> int:
    """Batches in one pass over the corpus, a last short one included."""
    return -(-len(corpus.texts) // batch_size)


def tokenize(tokenizer, texts: list[str], max_length: int, device) -> dict[str, torch.Tensor]:
    enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=max_length)
    return {"input_ids": enc["input_ids"].to(device), "attention_mask": enc["attention_mask"].to(device)}


def load_mcq(path: str) -> list[MCQItem]:
    """A multiple-choice set: JSONL rows {"question": str, "choices": [str, ...], "answer": int}."""
    p = resolve_path(path)
    items = []
    for lineno, row in _read_jsonl(p):
        q, choices, answer = row.get("question"), row.get("choices"), row.get("answer")
        if not isinstance(q, str) or not isinstance(choices, list) or len(choices) < 2 \
                or not all(isinstance(c, str) for c in choices):
            raise DataError(f"{p}, line {lineno}: need 'question' (string) and 'choices' (list of ≥ 2 strings)")
        if not isinstance(answer, int) or not 0 <= answer < len(choices):
            raise DataError(f"{p}, line {lineno}: 'answer' must be an index into choices (0..{len(choices) - 1}), "
                            f"got {answer!r}")
        items.append(MCQItem(q, choices, answer))
    if not items:
        raise DataError(f"{p}: no questions")
    return items


class TokenStream:
    """Rows of `seq_len` tokens for any step: epoch e is the documents in the order of
    `random.Random(f"{seed}-{e}")`, each followed by `eos`, cut into whole rows."""

    def __init__(self, docs: list[list[int]], eos: int, seq_len: int, batch_size: int, seed: int):
        self.docs, self.eos, self.seq_len, self.batch_size, self.seed = docs, eos, seq_len, batch_size, seed
        self.rows_per_epoch = sum(len(d) + 1 for d in docs) // seq_len
        if self.rows_per_epoch == 0:
            raise ValueError(f"the documents hold fewer than seq_len={seq_len} tokens")
        self._epoch, self._rows = -1, None

    def _epoch_rows(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:  # steps move forward, so one cached epoch is enough
            order = list(range(len(self.docs)))
            random.Random(f"{self.seed}-{epoch}").shuffle(order)
            flat = [t for i in order for t in (*self.docs[i], self.eos)]
            n = self.rows_per_epoch * self.seq_len
            self._epoch, self._rows = epoch, torch.tensor(flat[:n]).view(self.rows_per_epoch, self.seq_len)
        return self._rows

    def batch(self, step: int) -> torch.Tensor:
        rows = []
        for r in range(step * self.batch_size, (step + 1) * self.batch_size):
            rows.append(self._epoch_rows(r // self.rows_per_epoch)[r % self.rows_per_epoch])
        return torch.stack(rows)
