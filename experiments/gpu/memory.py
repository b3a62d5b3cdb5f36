"""How much accelerator memory an RMU run needs, by estimate, and the estimate checked
against what a run on the CPU really holds. The estimate is the product's
(rmu/run/memory.py), which refuses a run that does not fit before any weights load.

    python experiments/gpu/memory.py             # the recipes' table (docs/gpu.md)
    HF_HUB_OFFLINE=1 python experiments/gpu/memory.py   # the same without trying the Hub
    python experiments/gpu/memory.py --check     # estimate vs measured, tiny and bundled models

Each recipe is composed as `python -m rmu.train experiment=<recipe>` composes it (conf/): its
batch size, text lengths, hooked and updated layers, dtype and master weights, and the tensors
it updates chosen by the trainer's own rule (rmu/config/plan.py). The model's architecture is
its config.json, read as training reads it (rmu.models.loading.read_config: the Hub or its
cache; the Llama and Gemma repositories are gated); where that file cannot be read, the copy of
its architecture fields in HUB_CONFIGS below.

What a run holds, part by part, is in rmu/run/memory.py's docstring; `--check` compares its
activation estimate with the bytes autograd really saves (saved-tensor hooks) on the tiny and
bundled models. The CUDA context and allocator slack (~1 GiB) come on top.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from rmu.run.memory import GIB, WIDTH, estimate, estimate_distill, per_token_layer  # noqa: E402 - the product's estimate, checked here


def measured_activations(cfg_overrides: list[str]) -> tuple[int, int]:
    """(bytes the forget and retain passes keep for backward, measured with saved-tensor
    hooks on a real step's batches; the matching estimate)."""
    import torch

    sys.path.insert(0, str(ROOT))
    from rmu.models import loading as models
    from rmu.data import batch_texts, tokenize
    from rmu.config.plan import plan_train
    from rmu.unlearn.recipe import setup

    cfg = compose_train(cfg_overrides)
    plan = plan_train(cfg)
    run = setup(cfg)
    bs = cfg.trainer.batch_size
    forget = tokenize(run.tokenizer, batch_texts(plan.forget[0], 0, bs), plan.forget[0].max_length, "cpu")
    retain = tokenize(run.tokenizer, batch_texts(plan.retain[0], 0, bs), plan.retain[0].max_length, "cpu")
    seen: dict[int, int] = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    params = {p.untyped_storage().data_ptr() for p in run.model.parameters()}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        h_f = run.span.run(run.span.prefix(forget))
        h_r = run.span.run(run.span.prefix(retain))
    measured = sum(n for ptr, n in seen.items() if ptr not in params)
    del h_f, h_r
    config = models.read_config(cfg.model)
    span = plan.layer_id - min(plan.update_layers) + 1
    est = per_token_layer(config) * span * bs * (forget["input_ids"].shape[1] + retain["input_ids"].shape[1]) \
        * WIDTH[cfg.model.dtype]
    return measured, est


RECIPES = ["zephyr_rmu", "mixtral_rmu", "llama3_8b_rmu", "mistral_7b_rmu", "qwen25_7b_rmu", "gemma2_9b_rmu"]  # conf/experiment

# The architecture fields of each recipe model's config.json on the Hub (conf/model/*.yaml
# `hub_id`), for where that file cannot be read (no network, or no login for a gated
# repository): what the estimate and a model on the meta device need, copied from those files.
HUB_CONFIGS = {
    "HuggingFaceH4/zephyr-7b-beta": dict(model_type="mistral", hidden_size=4096, intermediate_size=14336,
                                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                                         vocab_size=32000),
    "mistralai/Mixtral-8x7B-Instruct-v0.1": dict(model_type="mixtral", hidden_size=4096, intermediate_size=14336,
                                                 num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                                                 vocab_size=32000, num_local_experts=8, num_experts_per_tok=2),
    "meta-llama/Meta-Llama-3-8B-Instruct": dict(model_type="llama", hidden_size=4096, intermediate_size=14336,
                                                num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                                                vocab_size=128256),
    "mistralai/Mistral-7B-Instruct-v0.3": dict(model_type="mistral", hidden_size=4096, intermediate_size=14336,
                                               num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                                               vocab_size=32768),
    "Qwen/Qwen2.5-7B-Instruct": dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944,
                                     num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                                     vocab_size=152064, tie_word_embeddings=False),
    "google/gemma-2-9b-it": dict(model_type="gemma2", hidden_size=3584, intermediate_size=14336, num_hidden_layers=42,
                                 num_attention_heads=16, num_key_value_heads=8, head_dim=256, vocab_size=256000),
}


def compose_train(overrides: list[str]):
    """The train config as `python -m rmu.train <overrides>` composes it from conf/."""
    sys.path.insert(0, str(ROOT))
    from hydra import compose, initialize_config_dir

    from rmu.config.schema import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=overrides)


def model_config(mcfg):
    """The model's config (no weights): read as training reads it, else from HUB_CONFIGS."""
    from transformers import AutoConfig

    from rmu.models.loading import read_config

    try:
        return read_config(mcfg)
    except (OSError, ValueError):
        fields = HUB_CONFIGS.get(mcfg.hub_id or mcfg.path)
        if fields is None:
            raise
        return AutoConfig.for_model(**fields)


def recipe_estimate(recipe: str, *overrides: str) -> tuple[int, dict]:
    """(the recipe model's parameters, the estimate's parts in bytes) for `experiment=<recipe>
    <overrides>`, with the recipe's own batch size, lengths, layers, dtype and updated tensors."""
    from rmu.config.plan import update_names

    cfg = compose_train([f"experiment={recipe}", *overrides])
    config = model_config(cfg.model)
    layer_id, layers = int(cfg.rmu.layer_id), [int(i) for i in cfg.rmu.update_layers]
    names, sizes, *_ = update_names(cfg, config, layer_id, layers)
    e = estimate(config, sum(sizes.values()), sum(sizes[n] for n in names), dtype=cfg.model.dtype,
                 span_layers=layer_id - min(layers) + 1, batch=int(cfg.trainer.batch_size),
                 forget_length=max(int(d.max_length) for d in cfg.data.forget),
                 retain_length=max(int(d.max_length) for d in cfg.data.retain),
                 master_weights=bool(cfg.optim.master_weights))
    return sum(sizes.values()), e


def recipe_table() -> str:
    """One row per GPU recipe: its parts in GiB, from the architecture on the meta device."""
    lines = ["| recipe | parameters | weights | updated tensors + AdamW | activations | total |", "|---|---|---|---|---|---|"]
    for name in RECIPES:
        n_params, e = recipe_estimate(name)
        state = e["frozen copies"] + e["gradients"] + e["optimizer"]
        lines.append(f"| {name} | {n_params / 1e9:.2f} B | {e['weights'] / GIB:.1f} GiB | "
                     f"{state / GIB:.1f} GiB | {e['activations'] / GIB:.1f} GiB | {e['total'] / GIB:.1f} GiB |")
    return "\n".join(lines)


def distill_table() -> str:
    """`python -m rmu.distill model=zephyr_7b distill=zephyr_7b` per GPU at several batch
    sizes (rows of distill.seq_len tokens per process), as rmu/run/memory.py estimates it."""
    from hydra import compose, initialize_config_dir

    from rmu.config.schema import CONF_DIR
    from rmu.models.loading import parameter_layout

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("distill", overrides=["model=zephyr_7b", "distill=zephyr_7b"])
    config = model_config(cfg.model)
    n_params = sum(parameter_layout(config)[0].values())
    lines = ["| rows per GPU × tokens | weights (teacher + student) | gradients + AdamW | activations | logits | total |",
             "|---|---|---|---|---|---|"]
    runs = [(batch, masters, 1) for batch in (1, 4, 8, 14) for masters in (False, True)]
    runs += [(14, masters, 8) for masters in (False, True)]  # FSDP over 8 GPUs: both models sharded
    for batch, masters, shards in runs:
        e = estimate_distill(config, n_params, dtype=cfg.model.dtype, batch=batch, seq_len=cfg.distill.seq_len,
                             master_weights=masters, shards=shards)
        lines.append(f"| {batch} × {cfg.distill.seq_len}{' (float32 masters)' if masters else ''}"
                     f"{', FSDP over 8' if shards > 1 else ''} | "
                     f"{e['weights'] / GIB:.1f} GiB | {(e['gradients'] + e['optimizer']) / GIB:.1f} GiB | "
                     f"{e['activations'] / GIB:.1f} GiB | {e['logits'] / GIB:.1f} GiB | {e['total'] / GIB:.1f} GiB |")
    return f"Zephyr-7B ({n_params / 1e9:.2f} B parameters) distilled, per GPU:\n\n" + "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--check", action="store_true", help="estimate vs measured activations on the tiny and bundled models")
    args = p.parse_args()
    if not args.check:
        print(recipe_table())
        print()
        print(distill_table())
        return
    for label, overrides in (("tiny", ["debug=tiny", "eval=none", "data.forget.0.max_length=64"]),
                             ("bundled", ["eval=none", "trainer.batch_size=4"])):
        measured, est = measured_activations(overrides + ["output_dir=/tmp/rmu-memory-check"])
        print(f"{label}: activations measured {measured / 2**20:.1f} MiB, estimated {est / 2**20:.1f} MiB, "
              f"ratio {est / measured:.2f}")


if __name__ == "__main__":
    main()
