"""`results.json`, the contract between a training run and everything that reads it
afterwards (the report, the model card, the sweep summary, the tracker, the attacks),
and its one before/after table.

    eval: {set: {"role": "forget"|"retain", "base": scores, "unlearned": scores}}
    scores: {"acc", "acc_norm", "chance", "n"}               (rmu/evaluation/mcq.py, score_set)
    harness: {"setup", "base_model", "base": {task: metrics}, "unlearned": {task: metrics}} or absent

and `metrics.jsonl`, one row per step (rmu/unlearn/step.py, step_record). Both are checked
against these shapes when read (RESULTS, METRICS_ROW): a file of the wrong shape is one
sentence naming the file, the line and the field, never a KeyError deep in a report.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from rmu.errors import ConfigError

NUMBER, ANY = "a number", "anything"


def optional(spec):
    return ("optional", spec)


def list_of(spec):
    return ("list", spec)


def map_of(spec):
    return ("map", spec)


SCORES = {"acc": NUMBER, "acc_norm": NUMBER, "chance": NUMBER, "n": int}
TASK_METRICS = map_of(optional({"acc": optional(NUMBER), "acc_norm": optional(NUMBER), "n": optional(int)}))
RESULTS = {  # required: what every run writes and the readers use; optional: what older runs lack
    "model": str, "output_dir": str, "steps": int, "topics": list_of(str), "steering_coeff": list_of(NUMBER),
    "alpha": list_of(NUMBER), "layer_id": int, "update_layers": list_of(int), "updated_parameters": list_of(str),
    "checkpoint_parameters": optional(list_of(str)), "processes": optional(int), "fsdp": optional(bool),
    "rank0_parameter_mib": optional(NUMBER),
    "eval": optional(map_of({"role": ("one of", "forget", "retain"), "base": SCORES, "unlearned": SCORES})),
    "seconds": {"train": NUMBER}, "resumed_at": optional(int), "optimizer": optional(str), "numerics": optional(str), "robust": optional(map_of(ANY)),
    "distill": optional(map_of(ANY)), "tar": optional(map_of(ANY)),
    "harness": optional({"setup": map_of(ANY), "base": optional(TASK_METRICS), "unlearned": TASK_METRICS}),
}
METRICS_ROW = {"step": int, "topic": str, "forget_loss": NUMBER, "retain_loss": NUMBER, "retain_cos_frozen": NUMBER}


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__) + (
        f" {value!r}" if isinstance(value, (int, float, str)) and not isinstance(value, bool) else "")


def schema_problem(value, spec, where: str = "") -> str | None:
    """Where `value` (parsed JSON) departs from `spec`, as `field <a.b.c>: …`, or None. A spec
    is a type (str, int, bool), NUMBER, ANY, ("one of", …), optional(…), list_of(…),
    map_of(…) (an object of any keys) or a dict of required keys (extra keys pass)."""
    field_ = f"field {where}" if where else "top level"
    if isinstance(spec, tuple) and spec[0] == "optional":
        return None if value is None else schema_problem(value, spec[1], where)
    if isinstance(spec, dict) or (isinstance(spec, tuple) and spec[0] == "map"):
        if not isinstance(value, dict):
            return f"{field_}: expected an object, got {_kind(value)}"
        items = spec.items() if isinstance(spec, dict) else ((k, spec[1]) for k in value)
        for key, sub in items:
            inner = f"{where}.{key}" if where else str(key)
            if key not in value:
                if not (isinstance(sub, tuple) and sub[0] == "optional"):
                    return f"field {inner}: missing"
                continue
            problem = schema_problem(value[key], sub, inner)
            if problem:
                return problem
        return None
    if isinstance(spec, tuple) and spec[0] == "list":
        if not isinstance(value, list):
            return f"{field_}: expected a list, got {_kind(value)}"
        for i, item in enumerate(value):
            problem = schema_problem(item, spec[1], f"{where}[{i}]")
            if problem:
                return problem
        return None
    if isinstance(spec, tuple) and spec[0] == "one of":
        return None if value in spec[1:] else f"{field_}: expected one of {', '.join(spec[1:])}, got {_kind(value)}"
    if spec is ANY:
        return None
    if spec is NUMBER:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif spec is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, spec)
    name = {NUMBER: "a number", int: "an integer", str: "a string", bool: "true or false"}.get(spec, str(spec))
    return None if ok else f"{field_}: expected {name}, got {_kind(value)}"


def read_metrics(folder: str | Path) -> list[dict]:
    """The rows of a run's metrics.jsonl, each checked against METRICS_ROW; a ConfigError naming
    the file, the line and the field otherwise."""
    path = Path(folder) / "metrics.jsonl"
    rows = []
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read it ({e.strerror or e})") from None
    for lineno, raw in enumerate(lines, 1):
        try:
            line = raw.decode("utf-8")
            if not line.strip():
                continue
            row = json.loads(line)
        except UnicodeDecodeError as e:
            problem = f"not UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})"
        except ValueError as e:
            problem = f"not valid JSON ({getattr(e, 'msg', e)})"
        else:
            problem = schema_problem(row, METRICS_ROW)
            if problem is None:
                rows.append(row)
                continue
        raise ConfigError(f"{path}, line {lineno}: {problem}; not a row of the metrics.jsonl an rmu.train run "
                          f"writes (damaged or edited)")
    if not rows:
        raise ConfigError(f"{path}: holds no row; an rmu.train run writes one per step")
    return rows


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
    resumed_at: int = 0  # the step this run's last process started at: seconds["train"] covers the steps from there
    harness: dict | None = None
    optimizer: str | None = None  # optim.name (runs written before this field lack it)
    numerics: str | None = None  # rmu.numerics: float32 losses and controls, or the reference's dtype
    robust: dict | None = None  # the robust stages the step ran, with their settings; absent for the plain step
    distill: dict | None = None  # a distilled model (rmu.distill): how the student was made from this run's teacher
    tar: dict | None = None  # a model trained further with TAR (rmu.tar): its settings and cost

    @classmethod
    def read(cls, folder: str | Path) -> "RunResults":
        path = Path(folder) / "results.json"
        known = {f.name for f in dataclasses.fields(cls)}
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:  # missing, not UTF-8, not JSON
            raise ConfigError(f"{path}: not the results.json of an rmu.train run ({type(e).__name__}: {e})") from None
        problem = schema_problem(data, RESULTS)
        lengths = {k: len(data[k]) for k in ("topics", "steering_coeff", "alpha")} if problem is None else {}
        if problem is None and len(set(lengths.values())) > 1:
            problem = "fields topics, steering_coeff and alpha: one value per topic expected, got " + ", ".join(
                f"{n} {k}" for k, n in lengths.items())
        if problem:
            raise ConfigError(f"{path}: not the results.json of an rmu.train run: {problem} (damaged or edited)")
        return cls(**{k: v for k, v in data.items() if k in known and v is not None})

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
