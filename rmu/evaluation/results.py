"""`results.json`, the contract between a training run and everything that reads it
afterwards (the report, the model card, the sweep summary, the tracker, the attacks),
and its one before/after table.

    eval: {set: {"role": "forget"|"retain", "base": scores, "unlearned": scores}}
    scores: {"acc", "acc_norm", "chance", "n"}               (rmu/evaluation/mcq.py, score_set)
    harness: {"setup", "base_model", "base": {task: metrics}, "unlearned": {task: metrics}} or absent
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from rmu.errors import ConfigError

COLUMNS = ("set", "role", "n", "chance", "base acc", "unlearned acc", "base acc_norm", "unlearned acc_norm")
MIN_WIDTHS = (10, 7, 4, 7, 9, 14, 14, 19)  # the text table's columns, wider where a cell needs it


@dataclass
class RunResults:
    model: str  # the model config's name
    output_dir: str
    steps: int
    topics: list[str]
    steering_coeff: list[float]  # c_k as used (measured, with steering_coeff=auto)
    alpha: list[float]
    layer_id: int
    update_layers: list[int]
    updated_parameters: list[str]  # full names in the model; with LoRA the weights the merge changes
    checkpoint_parameters: list[str] | None = None  # the same tensors' names in model.safetensors (MoE: per expert)
    processes: int = 1  # (runs written before multi-process support lack the next three)
    fsdp: bool = False
    rank0_parameter_mib: float | None = None  # parameter memory on rank 0 (its shards only, under FSDP)
    eval: dict[str, dict] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # load, eval_before, train, eval_after, save, total
    harness: dict | None = None
    optimizer: str | None = None  # optim.name (runs written before this field lack it)
    numerics: str | None = None  # rmu.numerics: float32 losses and controls, or the reference's dtype
    robust: dict | None = None  # the robust stages the step ran, with their settings; absent for the plain step

    @classmethod
    def read(cls, folder: str | Path) -> "RunResults":
        path = Path(folder) / "results.json"
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            data = json.loads(path.read_text())
            return cls(**{k: v for k, v in data.items() if k in known})
        except (OSError, ValueError, TypeError, AttributeError) as e:  # missing, not JSON, not a run's results
            raise ConfigError(f"{path}: not the results.json of an rmu.train run ({type(e).__name__}: {e})") from None

    def write(self, folder: Path) -> None:
        data = {k: v for k, v in dataclasses.asdict(self).items() if v is not None}
        (folder / "results.json").write_text(json.dumps(data, indent=2) + "\n")

    def mean_unlearned_acc(self, role: str) -> float | None:
        """Mean accuracy after unlearning over the eval sets of `role` (forget / retain)."""
        accs = [e["unlearned"]["acc"] for e in self.eval.values() if e["role"] == role]
        return sum(accs) / len(accs) if accs else None

    def table(self, markdown: bool = False) -> str:
        """Before/after accuracy of every eval set and lm-eval task: aligned text (stdout,
        eval_table.txt) or Markdown (report.md, the model card)."""
        rows = [(name, r["role"], str(r["base"]["n"]), f"{r['base']['chance']:.3f}", f"{r['base']['acc']:.3f}",
                 f"{r['unlearned']['acc']:.3f}", f"{r['base']['acc_norm']:.3f}", f"{r['unlearned']['acc_norm']:.3f}")
                for name, r in self.eval.items()]
        for task, m in (self.harness or {}).get("unlearned", {}).items():
            b = self.harness.get("base", {}).get(task, {})
            rows.append((f"{task} (lm-eval)", "", str(m.get("n") or ""), "", _fmt(b.get("acc")), _fmt(m.get("acc")),
                         _fmt(b.get("acc_norm")), _fmt(m.get("acc_norm"))))
        if not rows:
            return ""
        if markdown:
            return "\n".join(["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)] +
                             ["| " + " | ".join(row) + " |" for row in rows])
        widths = [max(w, len(c), *(len(row[i]) for row in rows)) for i, (c, w) in enumerate(zip(COLUMNS, MIN_WIDTHS))]
        return "\n".join(" ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
                         for row in [COLUMNS, *rows])


def _fmt(x) -> str:
    return "" if x is None else f"{x:.3f}"
