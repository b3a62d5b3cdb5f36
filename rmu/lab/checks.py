"""Value checks of the lab's config, before anything is built: a world, tokenizer or
model that cannot be made is refused with the key, the value and what is allowed."""

from __future__ import annotations

from omegaconf import DictConfig

from rmu.config.checks import check_int, check_num, fail
from rmu.lab.domains import DOMAINS

_BYTES_AND_SPECIALS = 256 + 3  # the byte-level alphabet and bos / eos / pad


def check_lab(cfg: DictConfig) -> None:
    w, m, t = cfg.world, cfg.model, cfg.pretrain
    if check_int("world.forget_entities", w.forget_entities, 2) % 2:
        fail("world.forget_entities", w.forget_entities, "must be even (halves A and B of equal size)")
    check_int("world.retain_entities", w.retain_entities, 1)
    check_int("world.values_per_relation", w.values_per_relation, 4)  # the answer and three distractors
    check_int("world.docs_per_entity", w.docs_per_entity, 1)
    check_int("world.filler_per_doc", w.filler_per_doc, 0, min(len(d.filler) for d in DOMAINS.values()))
    check_int("tokenizer.vocab_size", cfg.tokenizer.vocab_size, _BYTES_AND_SPECIALS + 1)
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads"):
        check_int(f"model.{key}", m[key], 1)
    if m.hidden_size % m.num_attention_heads or m.num_attention_heads % m.num_key_value_heads:
        fail("model", f"{m.hidden_size}/{m.num_attention_heads}/{m.num_key_value_heads}",
             "hidden_size must divide by num_attention_heads, and that by num_key_value_heads")
    check_int("pretrain.steps", t.steps, 1)
    check_int("pretrain.batch_size", t.batch_size, 1)
    check_int("pretrain.seq_len", t.seq_len, 2)
    check_int("pretrain.warmup", t.warmup, 1, t.steps)
    check_int("pretrain.checkpoint_every", t.checkpoint_every, 1)
    check_num("pretrain.lr", t.lr, positive=True)
    check_num("pretrain.final_lr_ratio", t.final_lr_ratio)
    check_num("pretrain.weight_decay", t.weight_decay)
    check_num("pretrain.grad_clip", t.grad_clip, positive=True)
    if len(t.betas) != 2 or not all(0 <= b < 1 for b in t.betas):
        fail("pretrain.betas", list(t.betas), "must be two numbers in [0, 1)")
    check_int("threads", cfg.threads, 0)
    check_int("eval_batch_size", cfg.eval_batch_size, 1)
