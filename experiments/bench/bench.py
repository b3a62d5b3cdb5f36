"""`make bench`: the project's RMU step against the reference loop, on the bundled model.

    python experiments/bench/bench.py                      # CPU, float32, reference shapes (~10 min on 2 cores)
    python experiments/bench/bench.py --device cuda --dtype bfloat16
    python experiments/bench/bench.py --no-scaling          # only the main comparison

Each variant runs in its own child process (so its peak memory is its own): it loads the
model, trains `--warmup` + `--steps` steps on the same token batches with the same
control vectors, and reports every step's time and losses. Peak memory is the child's
peak RSS on CPU (getrusage) and `torch.cuda.max_memory_allocated` on GPU.

- reference: rmu/unlearn/reference_loop.py, the public code's loop (two full models, full-depth
  forwards, every parameter requiring grad);
- rmu: `rmu.unlearn.step.rmu_step`, the trainer's step, wired by `rmu.unlearn.recipe.setup`.

Both start from the model `setup` loads (the reference adds its second, frozen copy).

Batches are packed windows of exactly `--length` tokens cut from the bundled corpora
(both forget topics alternating, and the retain corpus), so every position is a real
token and the two variants' losses are directly comparable (the reference averages
over every position, the trainer over real tokens: here the same set).

The last line is `bench: speedup=<x> memory_ratio=<rmu/reference> max_loss_rel_diff=<d>`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def packed_batches(tokenizer, texts: list[str], length: int, batch: int, count: int):
    """`count` batches of `batch` windows of `length` tokens from the texts joined by EOS (cycled)."""
    import torch

    stream = []
    for t in texts:
        stream += tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    need = count * batch * length
    ids = torch.tensor((stream * (need // len(stream) + 1))[:need]).view(count, batch, length)
    return [{"input_ids": x, "attention_mask": torch.ones_like(x)} for x in ids]


def child(args) -> dict:
    import tempfile

    import torch

    sys.path.insert(0, str(ROOT))
    from hydra import compose, initialize_config_dir

    from rmu.config.checks import default_update_layers
    from rmu.data import load_corpus
    from rmu.unlearn.losses import random_directions
    from rmu.models.loading import load_model, read_config
    from rmu.config.plan import plan_train
    from rmu.config.schema import CONF_DIR
    from rmu.unlearn.recipe import setup
    from rmu.unlearn.reference_loop import ReferenceRMU

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        probe = compose("train", overrides=[f"model={args.model}"])
    layer_id = args.layer if args.layer >= 0 else read_config(probe.model).num_hidden_layers + args.layer
    # The trainer's own setup (rmu.unlearn.recipe.setup) with the reference's hyper-parameters: updated
    # tensors = down_proj of ℓ-2..ℓ (the default rule), fixed c, α, lr, eps 1e-6, no weight decay.
    overrides = [f"model={args.model}", f"model.dtype={args.dtype}", f"model.device={args.device}", "eval=none",
                 f"rmu.layer_id={layer_id}", f"rmu.steering_coeff={args.coeff}", f"rmu.alpha={args.alpha}",
                 f"optim.lr={args.lr}", "optim.eps=1e-6", "optim.weight_decay=0.0", "seed=42",
                 f"output_dir={tempfile.gettempdir()}/rmu-bench-never-written"]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    if args.variant == "reference":  # its own two models, as the public code loads them
        plan = plan_train(cfg)
        model, tok = load_model(cfg.model, cfg.seed)
        frozen, _ = load_model(cfg.model, cfg.seed)
        controls = random_directions(2, plan.hidden_size, cfg.seed) * args.coeff
        model.requires_grad_(True)  # as loaded: every parameter requires grad
        ref = ReferenceRMU(model, frozen, layer_id, plan.update_names, controls.to(model.device, model.dtype),
                           plan.alpha, args.lr, mask_padding=False)

        def step(i, f, r, k):
            return ref.step(f, r, k)
    else:
        run = setup(cfg)
        model, tok = run.model, run.tokenizer
        controls = run.controls.to(run.device, model.dtype)  # the same draw: seed 42, ‖c_k‖ = --coeff

        def step(i, f, r, k):
            rec = run.step(f, r, controls[k], run.plan.alpha[k], i)
            return rec["forget_loss"], rec["retain_loss"]

    device = next(model.parameters()).device
    steps = args.warmup + args.steps
    forget = [packed_batches(tok, load_corpus(c, 0).texts, args.length, args.batch, steps)
              for c in cfg.data.forget]
    retain = packed_batches(tok, load_corpus(cfg.data.retain[0], 0).texts, args.length, args.batch, steps)
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for i in range(steps):
        k = i % 2
        f = {key: v.to(device) for key, v in forget[k][i].items()}
        r = {key: v.to(device) for key, v in retain[i].items()}
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        losses.append(step(i, f, r, k))
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak_mb = (torch.cuda.max_memory_allocated() if cuda else
               resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2 ** 20
    return {"times": times[args.warmup:], "losses": losses, "peak_mb": peak_mb, "layer": layer_id,
            "updated": default_update_layers(layer_id),
            "device": torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine(),
            "threads": torch.get_num_threads()}


def run_child(args, variant: str, layer: int, length: int, steps: int, warmup: int) -> dict:
    cmd = [sys.executable, __file__, "--child", "--variant", variant, "--layer", str(layer), "--length", str(length),
           "--steps", str(steps), "--warmup", str(warmup), "--batch", str(args.batch), "--model", args.model,
           "--dtype", args.dtype, "--device", args.device, "--coeff", str(args.coeff), "--alpha", str(args.alpha),
           "--lr", str(args.lr)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        sys.exit(f"bench: {variant} (layer {layer}, length {length}) failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def rel_diff(a: float, b: float) -> float:
    return 0.0 if a == b else abs(a - b) / max(abs(a), abs(b))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2_135m", help="a conf/model group entry (tiny_random for a smoke run)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default="cpu", help="cpu | cuda")
    p.add_argument("--layer", type=int, default=7, help="hooked layer ℓ; updated layers ℓ-2..ℓ; negative counts from the end")
    p.add_argument("--length", type=int, default=512, help="tokens per forget and retain sequence")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=10, help="timed steps")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--coeff", type=float, default=20.0, help="steering coefficient (reference default)")
    p.add_argument("--alpha", type=float, default=100.0)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--scaling-layers", default="3,7,15,29", help="hooked layers for the scaling table ('' = none)")
    p.add_argument("--scaling-lengths", default="128,256,512", help="lengths for the scaling table ('' = none)")
    p.add_argument("--scaling-steps", type=int, default=3, help="timed steps per scaling point (after 1 warm-up)")
    p.add_argument("--no-scaling", action="store_true")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--variant", choices=["reference", "rmu"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    res = {v: run_child(args, v, args.layer, args.length, args.steps, args.warmup) for v in ("reference", "rmu")}
    ref, ours = res["reference"], res["rmu"]
    t_ref, t_ours = statistics.median(ref["times"]), statistics.median(ours["times"])
    diffs = [rel_diff(a, b) for (fa, ra), (fb, rb) in zip(ours["losses"], ref["losses"]) for a, b in ((fa, fb), (ra, rb))]
    speedup, memory_ratio, max_diff = t_ref / t_ours, ours["peak_mb"] / ref["peak_mb"], max(diffs)
    memory = "peak CUDA memory allocated" if args.device.startswith("cuda") else "peak RSS of the process"
    print(f"RMU step: {args.model}, {args.dtype}, {args.device} ({ours['device']}, {ours['threads']} threads, "
          f"{platform.system()}, Python {platform.python_version()}), batch {args.batch}, length {args.length}, "
          f"hooked layer {ours['layer']}, updated {ours['updated']}, "
          f"{args.steps} timed steps after {args.warmup} warm-up\n")
    print(f"| variant | median step (s) | min / max (s) | {memory} (MiB) | final forget loss | final retain loss |")
    print("|---|---|---|---|---|---|")
    for v in ("reference", "rmu"):
        r = res[v]
        print(f"| {v} | {statistics.median(r['times']):.3f} | {min(r['times']):.3f} / {max(r['times']):.3f} | "
              f"{r['peak_mb']:.0f} | {r['losses'][-1][0]:.6g} | {r['losses'][-1][1]:.6g} |")
    print(f"\nper-step losses agree to {max_diff:.2e} relative over {len(ref['losses'])} steps (forget and retain)\n")

    if not args.no_scaling:
        points = [("layer", int(x), args.length) for x in args.scaling_layers.split(",") if x]
        points += [("length", args.layer, int(x)) for x in args.scaling_lengths.split(",") if x]
        print(f"| varied | hooked layer | length | reference (s/step) | rmu (s/step) | speedup |")
        print("|---|---|---|---|---|---|")
        for what, layer, length in points:
            if layer == args.layer and length == args.length:
                r, o = t_ref, t_ours
            else:
                r = statistics.median(run_child(args, "reference", layer, length, args.scaling_steps, 1)["times"])
                o = statistics.median(run_child(args, "rmu", layer, length, args.scaling_steps, 1)["times"])
            print(f"| {what} | {layer} | {length} | {r:.3f} | {o:.3f} | {r / o:.1f}x |", flush=True)
        print()
    print(f"bench: speedup={speedup:.2f} memory_ratio={memory_ratio:.3f} max_loss_rel_diff={max_diff:.2e}")


if __name__ == "__main__":
    main()
