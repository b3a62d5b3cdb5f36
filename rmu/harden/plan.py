"""Everything `python -m rmu.distill` and `python -m rmu.tar` check before a weight loads: the
keys and values, the starting run's folder, the data, the evaluation sets and the output folder."""

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
    """The rmu_config.yaml and results.json of the run folder `model.path` (the teacher to distill,
    the model TAR starts from), and that `model` is the model config it was trained from."""
    folder = Path(cfg.model.path).expanduser()
    for name in ("rmu_config.yaml", "results.json", "config.json"):
        if not (folder / name).is_file():
            fail("model.path", cfg.model.path, f"must be the run folder of an rmu.train run, the model to harden "
                                               f"(no {name})")
    try:
        config = yaml.safe_load((folder / "rmu_config.yaml").read_text())
        name = config["model"]["name"]
    except (yaml.YAMLError, UnicodeDecodeError, KeyError, TypeError):
        fail("model.path", cfg.model.path, "holds an rmu_config.yaml that is not the one rmu.train writes "
                                           "(damaged or edited)")
    if name != cfg.model.name:
        fail("model", cfg.model.name, f"the run {folder} was trained from the model config named {name!r}; "
                                      f"choose that one (model=<its file in conf/model/>) with model.path={folder}")
    if config.get("adapter"):
        fail("model.path", cfg.model.path, "holds LoRA adapters only; distill a run with merged weights "
                                           "(rmu.train adapter.merge=true)")
    return config, RunResults.read(folder)


def check_start(cfg: DictConfig) -> tuple[dict, RunResults, object, list]:
    """What distillation and TAR check alike, in order: the model, data, evaluation and export
    sections, the starting run folder, the model's config, the evaluation sets, the output
    folder (and its -hub folder). Returns (the run's config, its results, the model's
    transformers config, the evaluation sets)."""
    check_model(cfg.model)
    check_data(cfg.data)
    check_eval(cfg.eval)
    if cfg.export.repo_id is not None or cfg.export.push:
        check_export_target(cfg.export, "export.")
    teacher_config, teacher_results = read_teacher(cfg)
    config = read_model_config(cfg.model, "model")
    eval_sets = load_eval_sets(cfg.eval)
    check_output_dir(cfg.output_dir, cfg.overwrite, protected=(cfg.model.path,))
    if cfg.export.repo_id:
        check_output_dir(cfg.output_dir.rstrip("/") + "-hub", cfg.overwrite, protected=(cfg.model.path,),
                         key="output_dir (its -hub folder)")
    return teacher_config, teacher_results, config, eval_sets


def plan_distill(cfg: DictConfig, processes: int, shards: int = 1) -> DistillPlan:
    """The checks in the order a user wants to hear of them; nothing here loads weights.
    `shards`: the processes FSDP shards both models over (1 without FSDP)."""
    check_values(cfg)
    teacher_config, teacher_results, config, eval_sets = check_start(cfg)
    sizes, _ = parameter_layout(config, cfg.model.trust_remote_code)
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
    check_distill_memory(cfg, config, sum(sizes.values()), shards)
    return DistillPlan(teacher_config, teacher_results, forget, retain, heldout, eval_sets, steps, forget_rows,
                       global_rows, config)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*.safetensors"))


@dataclass
class TarPlan:
    teacher_config: dict  # the starting run's rmu_config.yaml
    teacher_results: RunResults  # the starting run's results.json
    attack_forget: list[Corpus]  # forget text the sampled adversaries train on
    tr_forget: list[Corpus]  # held-out forget text of the tamper-resistance loss
    retain: list[Corpus]
    eval_sets: list[tuple[str, str, list[MCQItem]]]
    steps: int  # safeguard steps + outer steps
    max_length: int  # tokens per text (the longest corpus max_length)
    passes_per_step: int  # forward/backward passes of one outer step


def check_tar_values(cfg: DictConfig) -> None:
    """Each tar and trainer key: its type, then its range."""
    check_schema(cfg)
    c, a = cfg.tar, cfg.tar.adversary
    for key in ("safeguard_steps", "outer_steps", "inner_steps"):
        check_int(f"tar.{key}", c[key], 0)
    check_int("tar.tr_every", c.tr_every, 1)
    if c.inner_steps and c.tr_every > c.inner_steps:
        fail("tar.tr_every", c.tr_every, f"must be <= tar.inner_steps ({c.inner_steps}): no tamper-resistance loss "
                                         f"would be taken")
    for key in ("tr_batch_size",):
        check_int(f"tar.{key}", c[key], 1)
    for key in ("tr_coef", "retain_coef"):
        if check_num(f"tar.{key}", c[key]) < 0:
            fail(f"tar.{key}", c[key], "must be >= 0")
    for key in ("lr", "safeguard_lr", "eps"):
        check_num(f"tar.{key}", c[key], positive=True)
    if not 0 <= check_num("tar.final_lr_ratio", c.final_lr_ratio) <= 1:
        fail("tar.final_lr_ratio", c.final_lr_ratio, "must be in [0, 1]")
    check_int("tar.warmup", c.warmup, 0)
    if len(c.betas) != 2 or not all(0 <= b < 1 for b in c.betas):
        fail("tar.betas", list(c.betas), "must be two numbers in [0, 1), e.g. [0.9, 0.999]")
    if not 0 < check_num("tar.heldout_fraction", c.heldout_fraction) < 1:
        fail("tar.heldout_fraction", c.heldout_fraction, "must be in (0, 1): the share of forget texts kept for the "
                                                         "tamper-resistance loss")
    kinds = ("forget", "retain", "retain_then_forget")
    if not a.data or any(d not in kinds for d in a.data):
        fail("tar.adversary.data", list(a.data), f"a non-empty list of {', '.join(kinds)}")
    if not a.lrs or any(check_num("tar.adversary.lrs", x, positive=True) <= 0 for x in a.lrs):
        fail("tar.adversary.lrs", list(a.lrs), "a non-empty list of learning rates > 0")
    check_int("tar.adversary.batch_size", a.batch_size, 1)
    if len(a.switch_beta) != 2 or any(check_num("tar.adversary.switch_beta", x, positive=True) <= 0
                                      for x in a.switch_beta):
        fail("tar.adversary.switch_beta", list(a.switch_beta), "two numbers > 0: the Beta(a, b) of the switch point")
    check_int("trainer.batch_size", cfg.trainer.batch_size, 1)
    check_int("trainer.save_every", cfg.trainer.save_every, 0)
    if c.safeguard_steps + c.outer_steps == 0:
        fail("tar.outer_steps", 0, "and tar.safeguard_steps are both 0: nothing to train")


def plan_tar(cfg: DictConfig) -> TarPlan:
    """The checks of `python -m rmu.tar` in the order a user wants to hear of them; nothing here loads weights."""
    check_tar_values(cfg)
    teacher_config, teacher_results, config, eval_sets = check_start(cfg)
    forget, retain = load_corpora(cfg.data)
    retain = list({id(c): c for c in retain}.values())
    attack, held = [], []
    for c in forget:
        n = max(1, round(len(c.texts) * cfg.tar.heldout_fraction))
        if n >= len(c.texts):
            fail("tar.heldout_fraction", cfg.tar.heldout_fraction, f"leaves no text of the forget corpus {c.name!r} "
                                                                   f"for the adversaries ({len(c.texts)} texts)")
        attack.append(Corpus(c.name, c.texts[:-n], c.max_length))
        held.append(Corpus(c.name, c.texts[-n:], c.max_length))
    k = cfg.tar.inner_steps
    passes = k + k // cfg.tar.tr_every + 1  # adversary steps, tamper-resistance losses, the retain pass
    del config  # read for its checks: a folder that is not a causal LM is refused here
    check_writable(cfg.output_dir, 4 * _folder_bytes(Path(cfg.model.path).expanduser()),
                   what="the run (the weights, and a resume state of weights and AdamW moments)")
    return TarPlan(teacher_config, teacher_results, attack, held, retain, eval_sets,
                   cfg.tar.safeguard_steps + cfg.tar.outer_steps, max(c.max_length for c in forget + retain), passes)
