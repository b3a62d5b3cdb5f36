"""Everything `python -m rmu.distill` checks before a weight loads: the keys and values, the
teacher's run folder, the data, the evaluation sets and the output folder."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import yaml
from omegaconf import DictConfig

from rmu.config.checks import (check_data, check_eval, check_export_target, check_int, check_model, check_num,
                               check_schema, fail)
from rmu.config.plan import load_corpora, load_eval_sets, read_model_config
from rmu.data import Corpus, MCQItem
from rmu.evaluation.results import RunResults
from rmu.models.loading import parameter_layout
from rmu.run.memory import check_distill_memory
from rmu.run.checkpoint import check_output_dir, check_writable


@dataclass
class DistillPlan:
    teacher_config: dict  # the teacher's rmu_config.yaml: how RMU made it
    teacher_results: RunResults  # the teacher's results.json
    forget: list[Corpus]  # the forget corpora, one per topic
    retain: list[Corpus]  # the retain corpora without the held-out texts
    heldout: list[str]  # retain texts kept out of training: the retain CE of the stopping rule
    eval_sets: list[tuple[str, str, list[MCQItem]]]
    steps: int  # the budget in optimizer steps (fewer when the stopping rule ends the run)
    forget_rows: int  # rows per global batch from the forget corpora; the rest are retain rows
    global_rows: int  # rows per step over all processes
    config: object  # the teacher's transformers config (sizes the output)

    @property
    def topics(self) -> list[str]:
        return [c.name for c in self.forget]


def check_values(cfg: DictConfig) -> None:
    """Each distill and trainer key: its type, then its range."""
    check_schema(cfg)
    d, t = cfg.distill, cfg.trainer
    for key in ("alpha", "forget_fraction"):
        if not 0 <= check_num(f"distill.{key}", d[key]) <= 1:
            fail(f"distill.{key}", d[key], "must be in [0, 1]")
    check_num("distill.beta", d.beta)
    if d.beta < 0:
        fail("distill.beta", d.beta, "must be >= 0 (0 = shrink only)")
    check_num("distill.lr", d.lr, positive=True)
    if not 0 <= check_num("distill.final_lr_ratio", d.final_lr_ratio) <= 1:
        fail("distill.final_lr_ratio", d.final_lr_ratio, "must be in [0, 1]")
    check_int("distill.warmup", d.warmup, 0)
    if len(d.betas) != 2 or not all(0 <= b < 1 for b in d.betas):
        fail("distill.betas", list(d.betas), "must be two numbers in [0, 1), e.g. [0.9, 0.999]")
    check_num("distill.eps", d.eps, positive=True)
    if d.grad_clip is not None:
        check_num("distill.grad_clip", d.grad_clip, positive=True)
    check_int("distill.max_tokens", d.max_tokens, 1)
    check_int("distill.seq_len", d.seq_len, 2)
    if check_num("distill.hidden_mse", d.hidden_mse) < 0:
        fail("distill.hidden_mse", d.hidden_mse, "must be >= 0 (0 = off)")
    if d.retain_ce_gap is not None and check_num("distill.retain_ce_gap", d.retain_ce_gap) < 0:
        fail("distill.retain_ce_gap", d.retain_ce_gap, "must be >= 0, or null to run the whole budget")
    check_int("distill.eval_every", d.eval_every, 1)
    check_int("distill.heldout", d.heldout, 1)
    check_int("trainer.batch_size", t.batch_size, 1)
    check_int("trainer.save_every", t.save_every, 0)


def read_teacher(cfg: DictConfig) -> tuple[dict, RunResults]:
    """The teacher's rmu_config.yaml and results.json, and that `model` is the model config it
    was trained from."""
    folder = Path(cfg.model.path).expanduser()
    for name in ("rmu_config.yaml", "results.json", "config.json"):
        if not (folder / name).is_file():
            fail("model.path", cfg.model.path, f"must be the run folder of an rmu.train run, the teacher (no {name})")
    try:
        config = yaml.safe_load((folder / "rmu_config.yaml").read_text())
        name = config["model"]["name"]
    except (yaml.YAMLError, UnicodeDecodeError, KeyError, TypeError):
        fail("model.path", cfg.model.path, "holds an rmu_config.yaml that is not the one rmu.train writes "
                                           "(damaged or edited)")
    if name != cfg.model.name:
        fail("model", cfg.model.name, f"the teacher {folder} was trained from the model config named {name!r}; "
                                      f"choose that one (model=<its file in conf/model/>) with model.path={folder}")
    if config.get("adapter"):
        fail("model.path", cfg.model.path, "holds LoRA adapters only; distill a run with merged weights "
                                           "(rmu.train adapter.merge=true)")
    return config, RunResults.read(folder)


def plan_distill(cfg: DictConfig, processes: int) -> DistillPlan:
    """The checks in the order a user wants to hear of them; nothing here loads weights."""
    check_values(cfg)
    check_model(cfg.model)
    check_data(cfg.data)
    check_eval(cfg.eval)
    if cfg.export.repo_id is not None or cfg.export.push:
        check_export_target(cfg.export, "export.")
    teacher_config, teacher_results = read_teacher(cfg)
    config = read_model_config(cfg.model, "model")
    sizes, _ = parameter_layout(config, cfg.model.trust_remote_code)
    eval_sets = load_eval_sets(cfg.eval)
    check_output_dir(cfg.output_dir, cfg.overwrite, protected=(cfg.model.path,))
    if cfg.export.repo_id:
        check_output_dir(cfg.output_dir.rstrip("/") + "-hub", cfg.overwrite, protected=(cfg.model.path,),
                         key="output_dir (its -hub folder)")
    forget, retain = load_corpora(cfg.data)
    retain = list({id(c): c for c in retain}.values())  # one retain corpus shared by all topics counts once
    d = cfg.distill
    heldout = [t for c in retain for t in c.texts[-d.heldout:]]
    retain = [Corpus(c.name, c.texts[:-d.heldout], c.max_length) for c in retain]
    for c in retain:
        if not c.texts:
            fail("distill.heldout", d.heldout, f"holds out every text of the retain corpus {c.name!r}; lower it")
    global_rows = cfg.trainer.batch_size * processes
    forget_rows = round(d.forget_fraction * global_rows)
    if (forget_rows == 0) != (d.forget_fraction == 0) or (forget_rows == global_rows) != (d.forget_fraction == 1):
        fail("distill.forget_fraction", d.forget_fraction, f"gives {forget_rows} forget rows of {global_rows} per step "
                                                           f"(trainer.batch_size x processes); raise the batch size or "
                                                           f"change the fraction")
    steps = math.ceil(d.max_tokens / (global_rows * d.seq_len))
    # The student's weights, and a resume state of its weights and AdamW's two moments: 4x the teacher's.
    check_writable(cfg.output_dir, 4 * _folder_bytes(Path(cfg.model.path).expanduser()),
                   what="the run (the student's weights, and a resume state of weights and AdamW moments)")
    check_distill_memory(cfg, config, sum(sizes.values()))
    return DistillPlan(teacher_config, teacher_results, forget, retain, heldout, eval_sets, steps, forget_rows,
                       global_rows, config)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))
