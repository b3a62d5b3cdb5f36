"""Export to the Hub, offline: the prepared folder loads, the card's metadata parses with
huggingface_hub's card tools, and a push that cannot happen fails clearly and keeps the folder."""

import json
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM

from rmu.train import train
from tests.conftest import run_cli

TOKEN = "hf_" + "x" * 34  # a fake token: it must never show up anywhere


@pytest.fixture
def run_dir(tiny_cfg):
    cfg = tiny_cfg("eval=bundled", "eval.batch_size=32", "model.hub_id=HuggingFaceTB/SmolLM2-135M-Instruct")
    train(cfg)
    return Path(cfg.output_dir)


def test_prepared_folder_loads_and_its_card_parses(run_dir, tmp_path):
    proc = run_cli("rmu.export", f"checkpoint={run_dir}", "repo_id=someone/tiny-rmu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    hub = run_dir.with_name(run_dir.name + "-hub")
    assert AutoModelForCausalLM.from_pretrained(hub).config.num_hidden_layers == 4
    for name in ("model.safetensors", "config.json", "tokenizer.json", "rmu_config.yaml", "results.json"):
        assert (hub / name).is_file(), name
    card = ModelCard.load(hub / "README.md")
    data = card.data.to_dict()
    assert data["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert data["library_name"] == "transformers" and {"unlearning", "rmu"} <= set(data["tags"])
    results = json.loads((run_dir / "results.json").read_text())
    evals = {(e.dataset_type, e.metric_type): e.metric_value for e in card.data.eval_results}
    for name in ("chem", "astro", "general"):
        assert evals[(f"rmu-bundled/{name}", "acc")] == pytest.approx(results["eval"][name]["unlearned"]["acc"], abs=1e-4)
    index = data["model-index"][0]
    assert index["name"] == "tiny-rmu" and [len(r["metrics"]) for r in index["results"]] == [2, 2, 2]
    text = card.text
    for fact in ("hooked layer ℓ | 2", "model.layers.0.mlp.down_proj.weight", "chem: 10, astro: 10", "| seed | 42 |",
                 "4 × 2", "| chem | forget | 90 |"):
        assert fact in text, fact
    # Nothing is overwritten: a second export into the same folder is refused.
    again = run_cli("rmu.export", f"checkpoint={run_dir}", "repo_id=someone/tiny-rmu")
    assert again.returncode != 0 and "already exists and is not empty" in again.stderr


def test_push_without_a_token_fails_before_writing(run_dir, tmp_path, monkeypatch):
    env_home = tmp_path / "hf-home"  # no saved login there
    proc = run_cli("rmu.export", f"checkpoint={run_dir}", "repo_id=someone/tiny-rmu", "push=true",
                   env={"HF_HOME": str(env_home), "HF_TOKEN": ""})
    assert proc.returncode != 0
    assert "push=True: no Hugging Face token: set HF_TOKEN" in proc.stderr
    assert not run_dir.with_name(run_dir.name + "-hub").exists()


def test_push_without_network_fails_clearly_and_keeps_the_folder(run_dir, tmp_path):
    out = tmp_path / "hub-folder"
    proc = run_cli("rmu.export", f"checkpoint={run_dir}", "repo_id=someone/tiny-rmu", "push=true", "private=true",
                   f"output_dir={out}", env={"HF_HOME": str(tmp_path / "hf-home"), "HF_TOKEN": TOKEN,
                                             "HF_ENDPOINT": "http://127.0.0.1:9"})  # nothing listens there
    assert proc.returncode != 0
    assert "push to someone/tiny-rmu failed" in proc.stderr and f"intact at {out}" in proc.stderr
    assert TOKEN not in proc.stdout + proc.stderr
    assert AutoModelForCausalLM.from_pretrained(out) is not None
    assert all(TOKEN not in f.read_text(errors="ignore") for f in out.iterdir())


def test_lora_adapter_folder_exports_as_a_peft_model(tiny_cfg):
    cfg = tiny_cfg("adapter=lora", "adapter.r=4", "adapter.merge=false", "export.repo_id=someone/tiny-rmu-lora")
    train(cfg)
    hub = Path(cfg.output_dir + "-hub")
    assert (hub / "adapter_config.json").is_file() and (hub / "adapter_model.safetensors").is_file()
    data = ModelCard.load(hub / "README.md").data.to_dict()
    assert data["library_name"] == "peft" and "lora" in data["tags"]
    assert "LoRA adapters (r = 4" in ModelCard.load(hub / "README.md").text


def test_bad_repo_id_is_refused_before_training(tiny_cfg):
    from rmu.config.checks import check_train_values
    from rmu.errors import ConfigError

    with pytest.raises(ConfigError, match="export.repo_id='not a repo': must be a Hub repo id"):
        check_train_values(tiny_cfg("export.repo_id='not a repo'"))
    with pytest.raises(ConfigError, match="export.push=True: needs export.repo_id"):
        check_train_values(tiny_cfg("export.push=true"))


def test_the_outputs_say_what_made_them_on_a_token_id_run(tiny_cfg):
    """results.json records the robust stages, the optimizer and the numerics; the model card
    describes the targets and stages this run used (not plain RMU's fixed direction)."""
    from rmu.export import prepare

    cfg = tiny_cfg("robust.targets=token_id", "robust.lat_eps=0.1", "robust.lat_steps=2", "trainer.max_steps=2")
    train(cfg)
    results = json.loads((Path(cfg.output_dir) / "results.json").read_text())
    assert results["robust"] == {"targets": "token_id", "latent_adversary": {"eps": 0.1, "steps": 2}}
    assert results["optimizer"] == "adamw" and results["numerics"] == "float32"
    card = (prepare(cfg.output_dir, "someone/token-id") / "README.md").read_text()
    assert "toward a fixed random direction per vocabulary token" in card
    assert "one fixed random direction per forget topic" not in card
    assert "| robust stages | targets token_id; latent_adversary {'eps': 0.1, 'steps': 2} |" in card


def test_a_plain_run_says_it_is_plain(run_dir):
    from rmu.export import prepare

    assert "robust" not in json.loads((run_dir / "results.json").read_text())
    card = (prepare(run_dir, "someone/plain") / "README.md").read_text()
    assert "toward one fixed random direction per forget topic" in card
    assert "| robust stages | none (the plain RMU step) |" in card
