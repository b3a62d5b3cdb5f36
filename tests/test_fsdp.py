"""FSDP (rmu/run/fsdp.py): the frozen decoder layers sharded over processes (gloo on CPU,
started by torchrun with the variables an accelerate config sets) end where one process
does; what FSDP does not cover is refused before loading."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from rmu.config.checks import check_fsdp
from rmu.errors import ConfigError
from tests.conftest import ENV, ROOT, RUN, assert_same_weights, run_cli

def accelerate_env(config: Path) -> dict:
    """The FSDP variables the trainer reads (rmu/run/distributed.py `Ranks`), from the documented
    keys of an accelerate config file, as `accelerate launch --config_file <config>` sets them."""
    cfg = yaml.safe_load(config.read_text())
    fsdp = cfg.get("fsdp_config", {})
    return {"ACCELERATE_USE_FSDP": str(cfg["distributed_type"] == "FSDP").lower(),
            "FSDP_VERSION": str(fsdp["fsdp_version"]),
            "FSDP_RESHARD_AFTER_FORWARD": str(fsdp["fsdp_reshard_after_forward"]).lower(),
            "FSDP_OFFLOAD_PARAMS": str(fsdp["fsdp_offload_params"]).lower()}


@pytest.mark.distributed
@pytest.mark.slow
def test_fsdp_shards_the_frozen_layers_and_ends_where_one_process_does(tmp_path):
    # 6 layers, span 2..3 trained: layers 0, 1, 4, 5 are sharded over the 2 ranks.
    six = [o for o in RUN if o != "eval=none" and not o.startswith("rmu.layer_id")] + [
        "model.arch.num_hidden_layers=6", "rmu.layer_id=3", "rmu.update_layers=[2,3]", "harness.tasks=[]"]
    one = run_cli("rmu.train", *six, "trainer.batch_size=4", f"output_dir={tmp_path / 'one'}")
    assert one.returncode == 0, one.stderr[-3000:]
    env = accelerate_env(ROOT / "experiments" / "accelerate" / "fsdp.yaml")
    assert env == {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "true",
                   "FSDP_OFFLOAD_PARAMS": "false"}
    proc = subprocess.run([str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2", "-m", "rmu.train",
                           *six, "trainer.batch_size=2", f"output_dir={tmp_path / 'fsdp'}"], cwd=ROOT,
                          env={**ENV, **env}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "FSDP: 4 frozen decoder layers sharded over 2 processes" in proc.stdout

    assert_same_weights(tmp_path / "one", tmp_path / "fsdp", 1e-5)  # the gathered checkpoint: all 6 layers
    ref = json.loads((tmp_path / "one" / "results.json").read_text())
    ours = json.loads((tmp_path / "fsdp" / "results.json").read_text())
    assert ours["fsdp"] is True and ref["fsdp"] is False
    # Eval forwards through the sharded layers give the unsharded model's answers.
    assert ours["eval"] == ref["eval"]
    # Rank 0 held half of each sharded layer and all of the rest.
    weights = load_file(tmp_path / "one" / "model.safetensors")
    sharded = sum(t.numel() * 4 for k, t in weights.items() if k.split(".")[2:3] in (["0"], ["1"], ["4"], ["5"]))
    assert ref["rank0_parameter_mib"] - ours["rank0_parameter_mib"] == pytest.approx(sharded / 2 / 2 ** 20, abs=2e-3)


def test_what_fsdp_does_not_cover_is_refused_before_loading(tiny_cfg):
    with pytest.raises(ConfigError, match="adapter='lora': LoRA is not supported under FSDP"):
        check_fsdp(tiny_cfg("adapter=lora"))
    with pytest.raises(ConfigError, match=r"harness.tasks=\['rmu_chem'\]: lm-eval does not run on a sharded model"):
        check_fsdp(tiny_cfg("harness.tasks=[rmu_chem]"))
    check_fsdp(tiny_cfg())
