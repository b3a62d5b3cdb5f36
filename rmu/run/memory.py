"""How much memory a training run needs, estimated before any weights load, and a run
refused when the device it runs on cannot hold it (rmu/config/plan.py calls `check_memory`).

What a run holds (rmu keeps no second model: the frozen values are copies of the updated
tensors only, and nothing after layer ℓ runs):
- weights: every parameter in the model dtype;
- frozen copies and gradients of the updated tensors (gradients also in float32 with
  master weights), AdamW's two moments and the float32 masters (optim.master_weights);
  without masters the moments are in the model dtype;
- activations kept for backward: the forget and the retain pass through the span (first
  updated layer .. ℓ) are alive together until the backward. Per token and layer a
  Llama-style block keeps about 4·D + q + 2·kv + 3·I values (the two norms' inputs and
  outputs, q and k after rotary, v, the MLP's gate, up and the input to down_proj); a
  mixture of experts keeps 3·I per expert a token visits. Within 13 % of the bytes autograd
  really saves on the tiny and bundled models (experiments/gpu/memory.py --check).
The runtime (a CUDA context, allocator slack, the evaluation's logits) comes on top:
`RUNTIME` bytes. The lengths are the corpora's max_length, or the longest text's bytes
where all texts are shorter (`longest`; a batch is padded to its longest text): an upper bound.
"""

from __future__ import annotations

import os
from pathlib import Path

from rmu.errors import ConfigError

GIB = 2 ** 30
WIDTH = {"float32": 4, "bfloat16": 2, "float16": 2}
RUNTIME = GIB // 2


def per_token_layer(config) -> int:
    """Activation values one token keeps per span layer for the backward."""
    d = config.hidden_size
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or d // heads
    kv = (getattr(config, "num_key_value_heads", None) or heads) * head_dim
    inter = getattr(config, "moe_intermediate_size", None) or getattr(config, "intermediate_size", None) or 4 * d
    experts = getattr(config, "num_experts_per_tok", 1) if hasattr(config, "num_experts_per_tok") else 1
    shared = getattr(config, "shared_expert_intermediate_size", 0) or 0
    return 4 * d + heads * head_dim + 2 * kv + 3 * (inter * (experts or 1) + shared)


def estimate(config, n_params: int, n_updated: int, *, dtype: str, span_layers: int, batch: int,
             forget_length: int, retain_length: int, master_weights: bool = True) -> dict:
    """Bytes by part; `total` is their sum (the runtime not included)."""
    w = WIDTH.get(dtype, 4)
    masters = master_weights and w == 2
    parts = {
        "weights": n_params * w,
        "frozen copies": n_updated * w,
        "gradients": n_updated * (w + (4 if masters else 0)),
        "optimizer": n_updated * (12 if masters else 2 * w),
        "activations": per_token_layer(config) * span_layers * batch * (forget_length + retain_length) * w,
    }
    parts["total"] = sum(parts.values())
    return parts


def estimate_distill(config, n_params: int, *, dtype: str, batch: int, seq_len: int,
                     master_weights: bool = True, shards: int = 1) -> dict:
    """Bytes by part of one process of `rmu.distill` (rmu/harden/distill.py): the frozen
    teacher and the student whole, every student parameter trained (its gradient, AdamW's
    moments and, in half precision, its float32 master), the student's activations through
    every layer, and the logits: the teacher's and the student's, each in the model dtype and
    as float32 log-probabilities, and the gradient of the student's (5 vocabulary-wide
    float32 tensors per token at the peak, counted as 5 · 4 bytes). Under FSDP over `shards`
    processes each holds 1/shards of the weights and training state, plus one decoder layer
    of each model gathered whole at a time."""
    w = WIDTH.get(dtype, 4)
    masters = master_weights and w == 2
    tokens = batch * seq_len
    gathered = 0 if shards == 1 else 2 * n_params / config.num_hidden_layers * w
    parts = {
        "weights": 2 * n_params * w / shards + gathered,
        "gradients": n_params * (w + (4 if masters else 0)) / shards,
        "optimizer": n_params * (12 if masters else 2 * w) / shards,
        "activations": per_token_layer(config) * config.num_hidden_layers * tokens * w,
        "logits": tokens * config.vocab_size * (2 * w + 5 * 4),
    }
    parts["total"] = sum(parts.values())
    return parts


def check_distill_memory(cfg, config, n_params: int, shards: int = 1) -> None:
    """Refuse, before loading, a distillation whose estimate does not fit its device, naming
    the trainer.batch_size that would (`shards`: FSDP's processes, 1 without it)."""
    where, available, sharing = device_memory(str(cfg.model.device))
    if available is None:
        return
    batch = int(cfg.trainer.batch_size)
    parts = estimate_distill(config, n_params, dtype=cfg.model.dtype, batch=batch, seq_len=cfg.distill.seq_len,
                             master_weights=bool(cfg.distill.master_weights), shards=shards)
    need = (parts["total"] + RUNTIME) * sharing
    if need <= available:
        return
    per_row = (parts["activations"] + parts["logits"]) / batch
    room = available / sharing - (parts["total"] - parts["activations"] - parts["logits"] + RUNTIME)
    per_token = per_row / cfg.distill.seq_len
    if room >= per_row:
        fits = f"trainer.batch_size={int(room // per_row)} fits"
    elif room >= 2 * per_token:
        fits = f"even trainer.batch_size=1 does not fit; at batch size 1, distill.seq_len={int(room // per_token)} does"
    else:
        fits = ("the two models with the student's training state alone do not fit: use a device with more memory "
                "or model.dtype=bfloat16")
    from rmu.run.checkpoint import human

    detail = ", ".join(f"{k} {human(v)}" for k, v in parts.items() if k != "total" and v >= 2 ** 20)
    raise ConfigError(f"trainer.batch_size={batch}: distillation needs about {need / GIB:.1f} GiB of memory "
                      f"({detail}, for {batch} rows × {cfg.distill.seq_len} tokens), but {where} has "
                      f"{available / GIB:.1f} GiB available; {fits}")


def longest(corpora) -> int:
    """The most tokens a batch of these corpora can hold: max_length, or less where every
    text is shorter (a token is at least one byte of text, plus BOS and a prefix space)."""
    return max(min(c.max_length, max((len(t.encode()) for t in c.texts), default=0) + 2) for c in corpora)


def _cgroup_room() -> int | None:
    """What the process's cgroup (a container, a SLURM job) still allows, or None."""
    v1 = "/sys/fs/cgroup/memory/memory."
    for limit, usage in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                         (v1 + "limit_in_bytes", v1 + "usage_in_bytes")):
        try:
            text = Path(limit).read_text().strip()
            if text == "max" or int(text) >= 2 ** 60:
                continue
            return int(text) - int(Path(usage).read_text().strip())
        except (OSError, ValueError):
            continue
    return None


def cpu_available() -> int | None:
    """Bytes of RAM a new allocation can get: MemAvailable (/proc/meminfo), or less where a
    cgroup limits the process; None where neither can be read."""
    room = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                room = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if room is None:
        try:
            room = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            pass
    cgroup = _cgroup_room()
    return min(r for r in (room, cgroup) if r is not None) if (room, cgroup) != (None, None) else None


def device_memory(device: str) -> tuple[str, int | None, int]:
    """(the device in words, bytes available on it, processes sharing it) for
    `model.device` in this process (LOCAL_RANK: its own GPU under torchrun / accelerate)."""
    import torch

    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return "the CPU", cpu_available(), local_world
    if not torch.cuda.is_available():
        return device, None, 1  # another accelerator, or none: not estimated
    if device.startswith("cuda:"):
        index = int(device.split(":", 1)[1])
    else:
        local = os.environ.get("LOCAL_RANK")
        index = int(local) if local else torch.cuda.current_device()
    free, _ = torch.cuda.mem_get_info(index)
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})", free, 1


def check_memory(cfg, config, n_params: int, n_updated: int, span_layers: int, forget_length: int,
                 retain_length: int) -> None:
    """Refuse, before loading, a run whose estimate does not fit the memory of its device,
    naming the batch size (or, at batch size 1, the text length) that would fit."""
    where, available, sharing = device_memory(str(cfg.model.device))
    if available is None:
        return
    batch = int(cfg.trainer.batch_size)
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    lora = cfg.adapter is not None
    parts = estimate(config, n_params // (world if fsdp else 1), 0 if lora else n_updated, dtype=cfg.model.dtype,
                     span_layers=span_layers, batch=batch, forget_length=forget_length, retain_length=retain_length,
                     master_weights=bool(cfg.optim.master_weights))
    need = (parts["total"] + RUNTIME) * sharing
    if need <= available:
        return
    fixed = parts["total"] - parts["activations"] + RUNTIME
    per_sequence = parts["activations"] / batch
    per_token = per_sequence / (forget_length + retain_length)
    room = available / sharing - fixed
    if room >= per_sequence:
        fits = f"trainer.batch_size={int(room // per_sequence)} fits"
    elif room >= per_token * 2:
        longest = int(room // per_token) // 2
        fits = (f"even trainer.batch_size=1 does not fit; at batch size 1, texts of {longest} tokens do "
                f"(data.forget.*.max_length and data.retain.*.max_length)")
    else:
        fits = ("the model with its training state alone does not fit: use a device with more memory, "
                "model.dtype=bfloat16, an adapter (adapter=lora) or FSDP over several GPUs (docs/distributed.md)")
    from rmu.run.checkpoint import human

    detail = ", ".join(f"{k} {human(v)}" for k, v in parts.items() if k != "total" and v >= 2 ** 20)
    shared = f" for each of {sharing} processes" if sharing > 1 else ""
    raise ConfigError(
        f"trainer.batch_size={batch}: the run needs about {need / GIB:.1f} GiB of memory{shared} ({detail}, for "
        f"{span_layers} layers × {batch} texts × ({forget_length} + {retain_length}) tokens; runtime "
        f"{RUNTIME / GIB:.1f} GiB), but {where} has {available / GIB:.1f} GiB available; {fits}")
