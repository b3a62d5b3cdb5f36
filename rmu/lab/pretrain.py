"""Pretraining a small Llama-style decoder from scratch on the lab's documents: our own
short loop (AdamW, linear warm-up then cosine decay, gradient clipping), resumable.

Documents are joined into one token stream per epoch (each epoch in its own seeded order,
`eos` after every document) and cut into rows of `seq_len` tokens; step s takes rows
s·B .. s·B+B-1 of the endless sequence of epochs. The batch of a step is therefore a
function of the step alone, and the model starts from a seeded initialisation, so a run
resumed from a checkpoint ends with the same weights as one that never stopped.

The state (weights, AdamW moments, step) is saved atomically every `checkpoint_every`
steps and when SIGTERM arrives; a rerun continues from it. The finished model is a
Hugging Face folder (safetensors, config, tokenizer) written under a temporary name and
renamed, so a folder that exists is complete.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from rmu.data import TokenStream
from rmu.errors import Preempted, ResumeError
from rmu.unlearn.optim import learning_rate


def build_model(arch, vocab_size: int, seq_len: int, tokenizer, seed: int):
    """A randomly initialised LlamaForCausalLM; the same `seed` gives the same weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab_size, hidden_size=arch.hidden_size,
                         intermediate_size=arch.intermediate_size, num_hidden_layers=arch.num_hidden_layers,
                         num_attention_heads=arch.num_attention_heads, num_key_value_heads=arch.num_key_value_heads,
                         max_position_embeddings=seq_len, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def _optimizer(model, t) -> torch.optim.AdamW:
    """AdamW; no weight decay on norms (1-D tensors): decaying a gain only fights the loss."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    keep = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": t.weight_decay}, {"params": keep, "weight_decay": 0.0}],
                             lr=t.lr, betas=tuple(t.betas))


class _Sigterm:
    """While active, SIGTERM only sets a flag: the loop saves its state at the end of the step."""

    def __enter__(self):
        self.requested = False
        self.previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGTERM, self.previous)


class _Progress:
    """A tqdm bar on a terminal; in a log file one plain line per 10 % of the steps."""

    def __init__(self, enabled: bool, name: str, start: int, total: int):
        self.tty = enabled and sys.stderr.isatty()
        self.enabled, self.name, self.total, self.every = enabled, name, total, max(1, total // 10)
        self.bar = tqdm(desc=name, initial=start, total=total) if self.tty else None

    def update(self, step: int, loss: float, lr: float, tokens_per_s: float) -> None:
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_s:.0f}")
        elif self.enabled and ((step + 1) % self.every == 0 or step + 1 == self.total):
            print(f"lab: {self.name} step {step + 1}/{self.total} loss {loss:.4f} lr {lr:.2e} "
                  f"{tokens_per_s:.0f} tokens/s", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _save_state(path: Path, step: int, model, opt, fingerprint: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"step": step, "model": model.state_dict(), "optim": opt.state_dict(), "fingerprint": fingerprint}, tmp)
    os.replace(tmp, path)  # atomic: a kill leaves the previous state or this one, never half of one


def pretrain(name: str, texts: list[str], tokenizer, out: Path, state: Path, arch, t, seed: int,
             device: torch.device, fingerprint: str, progress: bool, on_step=None) -> dict:
    """Train `name` on `texts` for `t.steps` steps and write the model folder `out`.

    `arch`: hidden_size, intermediate_size, num_hidden_layers, num_attention_heads,
    num_key_value_heads. `t`: steps, batch_size, seq_len, lr, warmup, final_lr_ratio,
    weight_decay, betas, grad_clip, checkpoint_every. `state`: the resume file (continued if
    present, removed once `out` is written); `fingerprint` ties it to the build's config.
    `on_step(step)` is called after each finished step (the tests interrupt a build there).
    Returns (and writes as `out/pretrain.json`) parameters, steps, final loss, and the
    seconds and tokens/s of this process's steps.
    """
    docs = tokenizer(texts, add_special_tokens=False).input_ids
    stream = TokenStream(docs, tokenizer.eos_token_id, t.seq_len, t.batch_size, seed)
    model = build_model(arch, len(tokenizer), t.seq_len, tokenizer, seed).to(device).train()
    opt = _optimizer(model, t)
    start = 0
    if state.is_file():
        saved = torch.load(state, map_location=device, weights_only=True)
        if saved["fingerprint"] != fingerprint:
            raise ResumeError(f"{state}: a pretraining state of another lab config; remove it to start over")
        model.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optim"])
        start = saved["step"]
        print(f"lab: {name}: resuming at step {start} from {state}", flush=True)
    bar = _Progress(progress, name, start, t.steps)
    began, tokens, loss_value = time.perf_counter(), 0, float("nan")
    try:
        with _Sigterm() as sigterm:
            for step in range(start, t.steps):
                lr = learning_rate(step, t.steps, t.lr, t.warmup, t.final_lr_ratio)
                for group in opt.param_groups:
                    group["lr"] = lr
                ids = stream.batch(step).to(device)
                loss = model(input_ids=ids, labels=ids).loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                opt.step()
                tokens += ids.numel()
                loss_value = loss.item()
                bar.update(step, loss_value, lr, tokens / (time.perf_counter() - began))
                done = step + 1
                if done < t.steps and (sigterm.requested or done % t.checkpoint_every == 0):
                    _save_state(state, done, model, opt, fingerprint)
                if sigterm.requested and done < t.steps:
                    raise Preempted(f"{name}: stopped by SIGTERM after step {done}; the state is in {state}: "
                                    f"run the same command again to continue")
                if on_step is not None:
                    on_step(done)
    finally:
        bar.close()
    seconds = time.perf_counter() - began
    stats = {"parameters": sum(p.numel() for p in model.parameters()), "steps": t.steps,
             "resumed_at": start, "final_loss": round(loss_value, 4), "seconds": round(seconds, 1),
             "tokens_per_s": round(tokens / seconds) if seconds > 0 and tokens else None,
             "epochs": round(t.steps * t.batch_size / stream.rows_per_epoch, 2)}
    _write_model(model, tokenizer, out, stats)
    state.unlink(missing_ok=True)
    return stats


def _write_model(model, tokenizer, out: Path, stats: dict) -> None:
    """The Hugging Face folder with `pretrain.json` (the statistics), written under a hidden
    name and renamed when complete."""
    tmp = out.with_name(f".tmp-{out.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "pretrain.json").write_text(json.dumps(stats, indent=2) + "\n")
    umask = os.umask(0)
    os.umask(umask)
    for path in tmp.iterdir():  # safetensors writes 0600; readable by others as the umask allows
        path.chmod(0o666 & ~umask)
    os.replace(tmp, out)
