"""`python -m rmu.export` — a Hub-ready folder from a run folder, and optionally the upload.

    python -m rmu.export checkpoint=outputs/rmu-20261124-101500 repo_id=me/smollm2-rmu
    python -m rmu.export checkpoint=outputs/rmu-20261124-101500 repo_id=me/smollm2-rmu push=true private=true
    python -m rmu.train export.repo_id=me/smollm2-rmu        # the same at the end of training

The folder (default `<checkpoint>-hub`) holds the run's files — safetensors weights (or
the LoRA adapter folder), tokenizer, config, rmu_config.yaml, results, control vectors —
and a model card (README.md) whose YAML metadata names the base model, the library, the
tags `unlearning` and `rmu`, the datasets and a model-index with the evaluation results,
and whose text states the RMU settings and the before/after table. The token comes from
HF_TOKEN or a saved login and is never printed, logged or written.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import hydra
import yaml
from omegaconf import DictConfig, OmegaConf

from rmu.config.checks import check_export_target, check_schema, fail, is_repo_id
from rmu.config.overrides import check_command_line
from rmu.config.schema import CONF_DIR
from rmu.errors import ConfigError, ExportError
from rmu.evaluation.results import ANY, NUMBER, RunResults, list_of, map_of, optional, read_metrics, schema_problem
from rmu.models.weights import check_weights
from rmu.run.checkpoint import (MARKER, check_output_dir, check_writable, clean_leftovers, folder_size,
                                staged_output)
from rmu.run.cli import run_command
from rmu.run.lock import OutputLock, held
from rmu.run.signals import Stopped
from rmu.unlearn.robust import active_stages, describe_targets

# lm-eval tasks whose data lives on the Hub: (dataset id, config) for the model-index.
HARNESS_DATASETS = {"wmdp_bio": ("cais/wmdp", "wmdp-bio"), "wmdp_cyber": ("cais/wmdp", "wmdp-cyber"),
                    "wmdp_chem": ("cais/wmdp", "wmdp-chem"), "mmlu": ("cais/mmlu", "all")}


CARD_BYTES = 2 ** 20  # the model card, and the marker


# What the model card reads of rmu_config.yaml (rmu/evaluation/results.py's spec language).
RUN_CONFIG = {"seed": int,
              "model": {"name": str, "path": str, "dtype": str, "hub_id": optional(str), "arch": optional(map_of(ANY))},
              "data": {"forget": list_of({"name": str, "dataset": optional(str)}),
                       "retain": list_of({"name": str, "dataset": optional(str)})},
              "rmu": {"steering_coeff": ANY, "auto_beta": optional(NUMBER), "mask_padding": bool,
                      "numerics": optional(str)},
              "robust": optional(map_of(ANY)),
              "optim": {"name": optional(str), "lr": NUMBER, "weight_decay": NUMBER, "eps": NUMBER},
              "trainer": {"batch_size": int},
              "adapter": optional({"r": int, "alpha": NUMBER, "target_modules": ANY})}


def _read_run(checkpoint: Path) -> tuple[dict, RunResults]:
    """The run's config and results, its metrics and weights checked: everything the Hub
    folder will hold is what it claims before anything is copied."""
    for name in ("rmu_config.yaml", "results.json"):
        if not (checkpoint / name).is_file():
            fail("checkpoint", str(checkpoint), f"is not a run folder written by rmu.train (no {name})")
    if not (checkpoint / "config.json").is_file() and not (checkpoint / "adapter_config.json").is_file():
        fail("checkpoint", str(checkpoint), "holds neither a model (config.json) nor an adapter (adapter_config.json)")
    path = checkpoint / "rmu_config.yaml"
    try:
        run_cfg = yaml.safe_load(path.read_text())
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        mark = getattr(e, "problem_mark", None)
        where = f", line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(e, 'problem', None) or type(e).__name__}); "
                          "not the rmu_config.yaml an rmu.train run writes (damaged or edited)") from None
    problem = schema_problem(run_cfg, RUN_CONFIG)
    if problem:
        raise ConfigError(f"{path}: {problem}; not the rmu_config.yaml an rmu.train run writes (damaged or edited)")
    results = RunResults.read(checkpoint)
    if (checkpoint / "metrics.jsonl").exists():  # copied to the Hub as it is: checked like the rest
        read_metrics(checkpoint)
    check_weights(checkpoint, "checkpoint")
    return run_cfg, results


def _eval_results(results: RunResults):
    from huggingface_hub import EvalResult

    rows = []
    for name, r in results.eval.items():
        for metric in ("acc", "acc_norm"):
            rows.append(EvalResult(task_type="multiple-choice", dataset_type=f"rmu-bundled/{name}",
                                   dataset_name=f"rmu bundled {name} ({r['role']} set)", metric_type=metric,
                                   metric_name=f"{metric} (unlearned; base {r['base'][metric]:.3f})",
                                   metric_value=round(r["unlearned"][metric], 4)))
    for task, metrics in (results.harness or {}).get("unlearned", {}).items():
        dataset, config = HARNESS_DATASETS.get(task, (f"lm-eval/{task}", None))
        for metric in ("acc", "acc_norm"):
            if metric in metrics:
                rows.append(EvalResult(task_type="multiple-choice", dataset_type=dataset, dataset_config=config,
                                       dataset_name=task, metric_type=metric, metric_value=round(metrics[metric], 4),
                                       source_name="lm-evaluation-harness"))
    return rows


def _table(results: RunResults) -> str:
    table = results.table(markdown=True)
    if not table:
        return "No evaluation was run with this training run (`eval=none`)."
    harness = results.harness
    if harness:
        table += (f"\n\nlm-eval rows: lm-evaluation-harness {harness['setup'].get('lm_eval_version')}, "
                  f"{harness['setup'].get('num_fewshot')}-shot.")
    return table


def model_card(run_cfg: dict, results: RunResults, repo_id: str, adapter: bool):
    """The README.md of the Hub folder: metadata and a text stating how the model was made."""
    from huggingface_hub import ModelCard, ModelCardData

    m = run_cfg["model"]
    base_model = m.get("hub_id") or (m["path"] if is_repo_id(m["path"]) and not m.get("arch") else None)
    origin = f"{m['name']} (randomly initialised)" if m.get("arch") else base_model or m["path"]
    corpora = run_cfg["data"]["forget"] + run_cfg["data"]["retain"]
    datasets = sorted({c["dataset"] for c in corpora if c.get("dataset") and is_repo_id(c["dataset"])})
    datasets += sorted({HARNESS_DATASETS[t][0] for t in (results.harness or {}).get("unlearned", {})
                        if t in HARNESS_DATASETS} - set(datasets))
    distilled = results.distill
    data = ModelCardData(base_model=base_model, library_name="peft" if adapter else "transformers",
                         tags=["unlearning", "rmu", "wmdp"] + (["lora"] if adapter else []) +
                              (["distillation"] if distilled else []) + (["tar"] if results.tar else []),
                         datasets=datasets or None, model_name=repo_id.split("/")[-1],
                         eval_results=_eval_results(results) or None)
    robust = run_cfg.get("robust") or {}  # runs written before the robust variants have no section
    load = (f'from peft import AutoPeftModelForCausalLM\nmodel = AutoPeftModelForCausalLM.from_pretrained("{repo_id}")'
            if adapter else
            f'from transformers import AutoModelForCausalLM\nmodel = AutoModelForCausalLM.from_pretrained("{repo_id}")')
    text = f"""---
{data.to_yaml()}
---

# {repo_id.split('/')[-1]}

{origin} after RMU unlearning (Representation Misdirection for Unlearning,
Li et al. 2024, "The WMDP Benchmark"), made with the `rmu` trainer, for the
forget topics {', '.join(results.topics)}. RMU pushes the activations of one decoder
layer on forget-topic text {describe_targets(robust.get("targets", "topic"))} and keeps them
unchanged on retain text; it is meant to remove the knowledge, not to refuse. Check the
robustness of the removal before relying on it.{distillation_text(distilled)}{tar_text(results.tar)}

## How it was made

{settings_table(run_cfg, results, origin)}{distillation_table(distilled)}

The full configuration is `rmu_config.yaml`, the per-step losses `metrics.jsonl`, the
control vectors `control_vectors.safetensors`.

## Evaluation (before → after)

{_table(results)}

## Use

```python
{load}
```
"""
    return ModelCard(text)


def distillation_text(d: dict | None) -> str:
    """The card's paragraph on distillation, for a model rmu.distill made (empty otherwise)."""
    if not d:
        return ""
    return f"""

These weights are not the unlearned model's own: they are a student distilled from it (UNDO,
Lee et al. 2025, "Distillation Robustifies Unlearning"). The student started as the unlearned
model with every weight matrix shrunk by (1 − α) and noised (α·β × Xavier-uniform noise) and
every vector shrunk by (1 − α), α = {d['alpha']}, β = {d['beta']}, and was trained for
{d['tokens']} tokens to match the unlearned model's next-token distributions (forward KL) on
forget-domain and retain text. The accuracies below are the student's."""


def tar_text(t: dict | None) -> str:
    """The card's paragraph on tamper-resistant training, for a model rmu.tar made (empty otherwise)."""
    if not t:
        return ""
    return f"""

It was then trained with TAR (Tamirisa et al. 2025, "Tamper-Resistant Safeguards for Open-Weight
LLMs"): {t['outer_steps']} outer steps, each letting a sampled fine-tuning adversary run
{t['inner_steps']} steps and training the weights so that the adversary's result stays unsure on
held-out forget text, while a retain loss keeps general ability (`tar_config.yaml`,
`tar_metrics.jsonl`). TAR resists the attacks it trained against; check others before relying on it."""


def distillation_table(d: dict | None) -> str:
    """The card's distillation settings (the config is distill_config.yaml, the steps distill_metrics.jsonl)."""
    if not d:
        return ""
    rows = [("damage α, β", f"{d['alpha']}, {d['beta']}"), ("distilled tokens", f"{d['tokens']} in {d['steps']} steps"),
            ("stopped by", d["stopped"]), ("held-out retain CE (student, teacher)",
                                           f"{d['student_retain_ce']:.4f}, {d['teacher_retain_ce']:.4f}")]
    return ("\n\nThen distillation (`distill_config.yaml`, per-step `distill_metrics.jsonl`):\n\n" +
            "\n".join(["| setting | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows]))


def settings_table(run_cfg: dict, results: RunResults, origin: str) -> str:
    """The model card's "How it was made" table: the settings that made this model."""
    m, r, o, t = run_cfg["model"], run_cfg["rmu"], run_cfg["optim"], run_cfg["trainer"]
    adapter_cfg = run_cfg.get("adapter")
    how = (f"LoRA adapters (r = {adapter_cfg['r']}, alpha = {adapter_cfg['alpha']}) on "
           f"{adapter_cfg['target_modules']} of layers {results.update_layers}"
           if adapter_cfg else ", ".join(f"`{n}`" for n in results.updated_parameters))
    coeffs = ", ".join(f"{topic}: {c:.4g}" for topic, c in zip(results.topics, results.steering_coeff))
    auto = f"auto: β = {r['auto_beta']} × mean activation norm" if r["steering_coeff"] == "auto" else "fixed"
    # results.json names the stages; runs written before it did have only their config.
    stages = results.robust or (active_stages(OmegaConf.create(run_cfg["robust"])) if "robust" in run_cfg else {})
    rows = [("base model", origin + (f" (loaded from {m['path']})" if m["path"] != origin and not m.get("arch") else "")),
            ("hooked layer ℓ", results.layer_id), ("updated", how), ("steering coefficients c", f"{coeffs} ({auto})"),
            ("robust stages", "; ".join(f"{k} {v}" if v is not True else k for k, v in stages.items()) or
             "none (the plain RMU step)"),
            ("retain weight α", ", ".join(f"{a:g}" for a in results.alpha)),
            ("layered unlearning", "yes: one stage per topic, each retaining the later topics' text"
             if r.get("layered") else "no"),
            ("padding mask in the losses", r["mask_padding"]),
            ("optimizer", f"{o.get('name', 'adamw')}, lr {o['lr']}, weight decay {o['weight_decay']}, eps {o['eps']}"),
            ("numerics", r.get("numerics", "float32")),
            ("steps × batch", f"{results.steps} × {t['batch_size']}"), ("dtype", m["dtype"]), ("seed", run_cfg["seed"]),
            ("forget corpora", ", ".join(c["name"] for c in run_cfg["data"]["forget"])),
            ("retain corpora", ", ".join(c["name"] for c in run_cfg["data"]["retain"]))]
    return "\n".join(["| setting | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])


def prepare(checkpoint: str | Path, repo_id: str, output_dir: str | Path | None = None,
            overwrite: bool = False) -> Path:
    """Write the Hub folder (atomically) and return its path."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_dir():
        fail("checkpoint", str(checkpoint), "must be a run folder written by rmu.train")
    target = Path(output_dir) if output_dir else checkpoint.with_name(checkpoint.name + "-hub")
    check_output_dir(str(target), overwrite, protected=(str(checkpoint),))
    run_cfg, results = _read_run(checkpoint)
    adapter = (checkpoint / "adapter_config.json").is_file()
    card = model_card(run_cfg, results, repo_id, adapter)
    with OutputLock(target):
        for line in clean_leftovers(target, held):  # what killed commands left beside it (and the room it took)
            print(line)
        check_output_dir(str(target), overwrite, protected=(str(checkpoint),))  # also a finished folder restored
        check_writable(str(target), folder_size(checkpoint) + CARD_BYTES, what=f"a copy of {checkpoint}")
        with staged_output(target, overwrite) as tmp:
            for f in sorted(checkpoint.iterdir()):
                if f.is_file() and f.name not in ("README.md", MARKER):  # peft writes a stub card; ours replaces it
                    shutil.copy2(f, tmp / f.name)
            card.save(tmp / "README.md")
    return target.absolute()


def export_run(cfg) -> None:
    """After a training command (rmu.train, rmu.distill, rmu.tar) wrote `cfg.output_dir`: its Hub
    folder `<output_dir>-hub` when `cfg.export.repo_id` is set, and the upload when `export.push`."""
    if not cfg.export.repo_id:
        return
    try:
        hub = prepare(cfg.output_dir, cfg.export.repo_id, overwrite=cfg.overwrite)
    except Stopped as e:
        e.note = (f"{cfg.output_dir} is written, its Hub folder is not: python -m rmu.export "
                  f"checkpoint={cfg.output_dir} repo_id={cfg.export.repo_id} writes it")
        raise
    print(f"rmu: prepared the Hub folder {hub}")
    if cfg.export.push:
        print(f"rmu: pushed to {push(hub, cfg.export.repo_id, cfg.export.private)}")


def push(folder: Path, repo_id: str, private: bool) -> str:
    """Upload `folder` to `repo_id`; returns the repo URL. The folder is never modified."""
    from huggingface_hub import HfApi

    api = HfApi()  # token from HF_TOKEN or the saved login
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model", ignore_patterns=[MARKER],
                          commit_message="Upload RMU-unlearned model (rmu)")
    except Exception as e:  # network, auth, permissions: say what failed, keep the folder
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"push to {repo_id} failed ({type(e).__name__}: {first}); the prepared folder is "
                          f"intact at {folder}; upload it with `hf upload {repo_id} {folder}` once the cause is fixed") from None
    return f"https://huggingface.co/{repo_id}"


def run(cfg: DictConfig) -> Path:
    check_schema(cfg)
    if not cfg.checkpoint:
        fail("checkpoint", cfg.checkpoint, "required: the run folder written by rmu.train")
    check_export_target(cfg, "")
    folder = prepare(cfg.checkpoint, cfg.repo_id, cfg.output_dir, cfg.overwrite)
    print(f"export: prepared {folder}")
    if cfg.push:
        print(f"export: pushed to {push(folder, cfg.repo_id, cfg.private)}")
    return folder


@hydra.main(config_path=CONF_DIR, config_name="export", version_base="1.3")
def main(cfg: DictConfig) -> Path | None:
    return run_command(run, cfg)


if __name__ == "__main__":
    check_command_line("export", sys.argv[1:])  # one sentence for the mistakes Hydra answers with a traceback
    main()
