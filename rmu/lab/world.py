"""The lab's invented world, generated deterministically from a seed: entities with
facts, the documents that state them, and multiple-choice questions about them.

Every entity of a domain has one value per relation, drawn from that relation's closed
set of invented words, so a question's three distractors come from the same set and a
model that does not know the fact scores 25 %. Values are assigned in balanced shuffled
cycles (each value about equally often) so no value is a better guess than another, and
each forget domain's entities are split into halves A and B whose values are drawn
separately: knowing A says nothing about B (the held-out relearning split).

`write_world(folder, ...)` writes the files rmu's commands read (formats: rmu/data.py):

| file | content |
|---|---|
| `forget_<d>.jsonl`, `forget_<d>_A.jsonl`, `forget_<d>_B.jsonl` | forget-domain documents (`text`), all / per half |
| `retain_<d>.jsonl`, `retain.jsonl` | retain-domain documents, per domain / all (interleaved) |
| `mcq_<d>.jsonl`, `mcq_<d>_A.jsonl`, `mcq_<d>_B.jsonl` | {question, choices[4], answer} (+ domain, entity, relation, split) |
| `pretrain_all.jsonl`, `pretrain_filtered.jsonl` | every document / every document but the forget domains' |
| `world.json` | the ground truth: domains, relations, their value sets, entities and facts |
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from rmu.lab.domains import DOMAINS, Domain

# Syllables of generated words; no real word is wanted, so the inventory is odd on purpose.
_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "th", "dr", "kr", "sk", "vr", "qu")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou", "ei")
_CODAS = ("", "", "n", "r", "l", "s", "th", "m")


@dataclass
class Entity:
    name: str
    split: str  # A | B for a forget domain's halves; "" in a retain domain
    facts: dict[str, str]  # relation -> value


class Words:
    """Invented words, each handed out once, so no entity name or value occurs twice in the world."""

    def __init__(self, rng: random.Random):
        self.rng, self.used = rng, set()

    def new(self, syllables: int, suffix: str = "") -> str:
        while True:
            word = "".join(self.rng.choice(_ONSETS) + self.rng.choice(_VOWELS) + self.rng.choice(_CODAS)
                           for _ in range(syllables)) + suffix
            if word not in self.used:
                self.used.add(word)
                return word


def _balanced(values: list[str], n: int, rng: random.Random) -> list[str]:
    """n draws where every value appears floor(n/k) or ceil(n/k) times, in random order."""
    out = []
    while len(out) < n:
        cycle = list(values)
        rng.shuffle(cycle)
        out += cycle
    out = out[:n]
    rng.shuffle(out)
    return out


def make_world(seed: int, forget_entities: int, retain_entities: int, values_per_relation: int) -> dict:
    """The ground truth: {domain: {role, noun, relations: {relation: [values]}, entities: [...]}}."""
    rng = random.Random(seed)
    words = Words(rng)
    world = {}
    for domain in DOMAINS.values():
        relations = {r.name: [_cased(words.new(2), r.proper) for _ in range(values_per_relation)]
                     for r in domain.relations}
        n = forget_entities if domain.role == "forget" else retain_entities
        names = [words.new(2, rng.choice(domain.name_suffixes)).capitalize() for _ in range(n)]
        # Forget domains: halves A and B drawn separately (independent facts); retain: one draw.
        groups = [("A", names[:n // 2]), ("B", names[n // 2:])] if domain.role == "forget" else [("", names)]
        entities = []
        for split, members in groups:
            draws = {r: _balanced(vals, len(members), rng) for r, vals in relations.items()}
            entities += [Entity(name, split, {r: draws[r][i] for r in relations}) for i, name in enumerate(members)]
        world[domain.name] = {"role": domain.role, "noun": domain.noun, "relations": relations,
                              "entities": [vars(e) for e in entities]}
    return world


def _cased(word: str, proper: bool) -> str:
    return word.capitalize() if proper else word


def documents(domain: Domain, entity: dict, docs_per_entity: int, filler_per_doc: int,
              rng: random.Random) -> list[str]:
    """`docs_per_entity` documents about one entity: every fact, each in a paraphrase that
    rotates through the relation's templates (so each is used), among filler sentences."""
    e = entity["name"]
    offset = rng.randrange(len(domain.relations[0].documents))
    docs = []
    for k in range(docs_per_entity):
        sentences = [r.documents[(offset + k + i) % len(r.documents)].format(e=e, v=entity["facts"][r.name])
                     for i, r in enumerate(domain.relations)]
        sentences += [f.format(e=e) for f in rng.sample(domain.filler, filler_per_doc)]
        rng.shuffle(sentences)
        docs.append(" ".join(sentences))
    return docs


def questions(domain: Domain, world_domain: dict, rng: random.Random) -> list[dict]:
    """One 4-option question per fact: three distractors from the same relation's values,
    the answer's position balanced over the four slots."""
    facts = [(ent, r) for ent in world_domain["entities"] for r in domain.relations]
    positions = _balanced([0, 1, 2, 3], len(facts), rng)
    rows = []
    for (ent, r), pos in zip(facts, positions):
        answer = ent["facts"][r.name]
        choices = rng.sample([v for v in world_domain["relations"][r.name] if v != answer], 3)
        choices.insert(pos, answer)
        rows.append({"question": r.question.format(e=ent["name"]), "choices": choices, "answer": pos,
                     "domain": domain.name, "entity": ent["name"], "relation": r.name, "split": ent["split"]})
    return rows


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def write_world(folder: Path, seed: int, forget_entities: int, retain_entities: int, values_per_relation: int,
                docs_per_entity: int, filler_per_doc: int) -> None:
    """Generate the world and write its files into `folder` (which must exist)."""
    world = make_world(seed, forget_entities, retain_entities, values_per_relation)
    rng = random.Random(f"{seed}-text")  # text and questions: a stream of their own, the facts stay put
    files: dict[str, list[dict]] = {}
    everything, retained = [], []
    for name, domain in DOMAINS.items():
        docs = [{"text": text, "domain": name, "entity": ent["name"], "split": ent["split"]}
                for ent in world[name]["entities"]
                for text in documents(domain, ent, docs_per_entity, filler_per_doc, rng)]
        rng.shuffle(docs)  # corpora are batched in file order: mix entities within each batch
        mcq = questions(domain, world[name], rng)
        if domain.role == "forget":
            files[f"forget_{name}.jsonl"] = docs
            for half in ("A", "B"):
                files[f"forget_{name}_{half}.jsonl"] = [d for d in docs if d["split"] == half]
                files[f"mcq_{name}_{half}.jsonl"] = [q for q in mcq if q["split"] == half]
        else:
            files[f"retain_{name}.jsonl"] = docs
            retained += docs
        files[f"mcq_{name}.jsonl"] = mcq
        everything += docs
    rng.shuffle(retained)
    rng.shuffle(everything)
    files["retain.jsonl"] = retained
    files["pretrain_all.jsonl"] = everything
    files["pretrain_filtered.jsonl"] = [d for d in everything if DOMAINS[d["domain"]].role == "retain"]
    for file, rows in files.items():
        _write_jsonl(folder / file, rows)
    (folder / "world.json").write_text(json.dumps({"seed": seed, "domains": world}, indent=1, ensure_ascii=False)
                                       + "\n", encoding="utf-8")


def read_texts(path: Path) -> list[str]:
    """The `text` field of every row of one of the world's JSONL files."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["text"] for line in f if line.strip()]
