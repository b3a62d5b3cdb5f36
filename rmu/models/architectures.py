"""What differs between model families for RMU: which tensor is the MLP's output
projection, the tensor RMU updates by default (and the module LoRA wraps).

The rule, written once: RMU edits the last linear map of each updated layer's MLP, the
one that writes into the residual stream (Llama's `mlp.down_proj`). `rmu.update_params:
[auto]` and `adapter.target_modules: [auto]` read it from `MLP_OUTPUT` by the model's
`config.model_type` (a type not in the table that has Llama's `mlp.down_proj` gets that);
any other entry is taken as written.

Mixture-of-experts models in transformers 5 hold their routed experts as one 3-D tensor
per layer (`mlp.experts.down_proj`, experts × out × in): a full update trains every
expert (or those in `rmu.experts`); LoRA puts one adapter per expert on that tensor
through peft's `target_parameters` (there is no linear module to wrap).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MlpOutput:
    params: tuple[str, ...]  # parameter names relative to a decoder layer
    lora: tuple[str, ...]  # peft target_modules (qualified where a bare name is ambiguous)
    fused_experts: bool = False  # params include a 3-D tensor of routed experts
    lora_params: tuple[str, ...] = ()  # fused expert tensors LoRA adapts (peft target_parameters)


_LLAMA = MlpOutput(("mlp.down_proj.weight",), ("mlp.down_proj",))
_MOE = MlpOutput(("mlp.experts.down_proj",), (), fused_experts=True, lora_params=("mlp.experts.down_proj",))
MLP_OUTPUT: dict[str, MlpOutput] = {
    **dict.fromkeys(["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "olmo",
                     "olmo2", "granite", "cohere", "stablelm", "smollm3", "mistral3", "ministral"], _LLAMA),
    **dict.fromkeys(["gpt2", "starcoder2"], MlpOutput(("mlp.c_proj.weight",), ("mlp.c_proj",))),  # attn.c_proj too
    **dict.fromkeys(["gpt_neox", "falcon", "bloom"], MlpOutput(("mlp.dense_4h_to_h.weight",), ("mlp.dense_4h_to_h",))),
    "gptj": MlpOutput(("mlp.fc_out.weight",), ("mlp.fc_out",)),
    "phi": MlpOutput(("mlp.fc2.weight",), ("mlp.fc2",)),
    "opt": MlpOutput(("fc2.weight",), ("fc2",)),
    "mixtral": _MOE,
    "qwen3_moe": _MOE,
    "qwen2_moe": MlpOutput(("mlp.experts.down_proj", "mlp.shared_expert.down_proj.weight"),
                           ("mlp.shared_expert.down_proj",), fused_experts=True,
                           lora_params=("mlp.experts.down_proj",)),
}
# Name fragments of an MLP output projection, for the hint on an unknown architecture.
_HINTS = ("down_proj", "c_proj", "4h_to_h", "fc_out", "fc2", "w2", "wo")


def fused_experts(name: str) -> bool:
    """Whether a parameter name is a fused tensor of routed experts (experts × out × in)."""
    return ".experts." in name and not name.endswith((".weight", ".bias"))


def keep_experts(param, experts: list[int]) -> None:
    """Let only `experts` of a fused expert tensor change: their gradient rows pass, the
    others' are zero (with weight decay 0, AdamW then leaves those entries exactly)."""
    import torch

    mask = torch.zeros(param.shape[0], *([1] * (param.dim() - 1)), dtype=param.dtype, device=param.device)
    mask[experts] = 1
    param.register_hook(lambda grad: grad * mask)


def checkpoint_names(model, names: list[str], experts: list[int] | None) -> list[str]:
    """The names the updated tensors get in the written checkpoint: transformers 5 splits
    fused experts into one tensor per expert on saving (Mixtral: block_sparse_moe.experts.
    <i>.w2.weight); with `experts` only those experts' tensors."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # an older transformers saves the names it loads
        return list(names)
    params = dict(model.named_parameters())
    out = sorted(revert_weight_conversion(model, {n: params[n].detach() for n in names}))
    if experts is None:
        return out
    import re

    def index(n):
        m = re.search(r"\.experts\.(\d+)\.", n)
        return int(m.group(1)) if m else None
    return [n for n in out if index(n) is None or index(n) in experts]


def mlp_output(model_type: str, layer_params: list[str]) -> MlpOutput:
    """The table's entry, or a ValueError naming likely candidates among `layer_params`
    (names relative to one decoder layer)."""
    if model_type in MLP_OUTPUT:
        return MLP_OUTPUT[model_type]
    if "mlp.down_proj.weight" in layer_params:  # an unlisted Llama-like layout (custom code, new families)
        return _LLAMA
    candidates = [n for n in layer_params if any(h in n for h in _HINTS)]
    raise ValueError(f"rmu has no default for model_type {model_type!r}: name the MLP output projection "
                     f"(likely one of {candidates or layer_params})")


def resolve(patterns: list[str], model_type: str, layer_params: list[str], lora: bool) -> list[str]:
    """`patterns` with each `auto` replaced by the architecture's MLP output projection
    (parameter names, or with `lora` module names)."""
    if "auto" not in patterns:
        return list(patterns)
    out = mlp_output(model_type, layer_params)
    auto = list(out.lora if lora else out.params)
    return [q for p in patterns for q in (auto if p == "auto" else [p])]


def lora_parameters(patterns: list[str], model_type: str, layer_params: list[str]) -> list[str]:
    """The fused expert tensors (relative to a layer) LoRA adapts when `auto` is among
    adapter.target_modules; named fused tensors are taken as they are."""
    named = [p for p in patterns if p in layer_params and fused_experts(p)]
    if "auto" not in patterns:
        return named
    return list(mlp_output(model_type, layer_params).lora_params) + named
