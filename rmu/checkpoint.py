"""Writing the run's output folder so that it appears only when complete.

Everything is written into a hidden temporary sibling (`.<name>.tmp-XXXX`) and renamed
into place at the end: a crash, a Ctrl-C or a non-finite loss leaves no half-written
model where the user expects one. An existing non-empty folder is replaced only with
`overwrite=true`, and only after the new one is complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file


def _usual_modes(folder: Path) -> None:
    """mkdtemp makes the folder private (0700) and safetensors writes its files 0600; give them
    the modes any new folder and file get, so colleagues on a shared cluster can read the
    model when the umask lets them."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


@contextmanager
def staged_output(final: str | Path, overwrite: bool):
    """Yield a temporary folder; on success publish it as `final`, on error delete it."""
    final = Path(final).absolute()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{final.name}.tmp-"))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _usual_modes(tmp)
    if final.exists() and any(final.iterdir()):
        if not overwrite:  # someone else wrote there while we trained
            shutil.rmtree(tmp, ignore_errors=True)
            raise FileExistsError(f"{final} appeared during the run and is not empty; nothing was overwritten")
        old = final.with_name(f".{final.name}.old-{tmp.name.rsplit('-', 1)[-1]}")
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        if final.exists():
            final.rmdir()
        tmp.rename(final)


def save_run(folder: Path, model, tokenizer, cfg, controls: torch.Tensor, topics: list[str],
             coeffs: list[float], state_dict: dict | None = None):
    """The model folder (safetensors, config, tokenizer), the resolved config and the control
    vectors. `state_dict`: the weights to write when the model's own are sharded (FSDP)."""
    model.save_pretrained(folder, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(folder)
    (folder / "rmu_config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    save_file({"control_vectors": controls.contiguous()}, folder / "control_vectors.safetensors",
              metadata={"topics": json.dumps(topics), "steering_coeff": json.dumps(coeffs)})
