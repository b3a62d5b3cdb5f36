"""rmu/run/memory.py: the memory estimate, and a run that cannot fit refused in one sentence
naming what fits (the CLI case is in tests/test_faults.py)."""

from __future__ import annotations

import pytest
from transformers import AutoConfig

from rmu.errors import ConfigError
from rmu.run import memory
from tests.conftest import TINY, make_cfg

GIB = 2 ** 30


def tiny_config():
    return AutoConfig.for_model(**dict(make_cfg(TINY).model.arch))


def test_the_estimate_adds_up_and_activations_grow_with_batch_and_length():
    config = tiny_config()
    small = memory.estimate(config, 1000, 100, dtype="float32", span_layers=3, batch=2, forget_length=32,
                            retain_length=32)
    assert small["total"] == sum(v for k, v in small.items() if k != "total")
    assert small["activations"] == memory.per_token_layer(config) * 3 * 2 * 64 * 4
    big = memory.estimate(config, 1000, 100, dtype="float32", span_layers=3, batch=4, forget_length=64,
                          retain_length=64)
    assert big["activations"] == 4 * small["activations"] and big["weights"] == small["weights"]
    half = memory.estimate(config, 1000, 100, dtype="bfloat16", span_layers=3, batch=2, forget_length=32,
                           retain_length=32)
    assert half["optimizer"] == 100 * 12  # two float32 moments and the float32 masters


def test_fsdp_divides_the_distillations_weights_and_training_state_over_its_processes():
    config = tiny_config()
    one = memory.estimate_distill(config, 8000, dtype="float32", batch=2, seq_len=32)
    four = memory.estimate_distill(config, 8000, dtype="float32", batch=2, seq_len=32, shards=4)
    layer = 2 * 8000 / config.num_hidden_layers * 4  # one decoder layer of each model gathered at a time
    assert four["weights"] == one["weights"] / 4 + layer
    assert four["gradients"] == one["gradients"] / 4 and four["optimizer"] == one["optimizer"] / 4
    assert four["activations"] == one["activations"] and four["logits"] == one["logits"]


def refusal(monkeypatch, available: int, *overrides: str) -> str:
    monkeypatch.setattr(memory, "device_memory", lambda device: ("the CPU", available, 1))
    cfg = make_cfg(TINY + list(overrides))
    with pytest.raises(ConfigError) as e:
        memory.check_memory(cfg, tiny_config(), 3_300_000, 24_576, 3, 32, 32)
    return str(e.value)


def test_a_batch_too_large_names_the_batch_size_that_fits(monkeypatch):
    message = refusal(monkeypatch, 2 * GIB, "trainer.batch_size=100000")
    assert message.startswith("trainer.batch_size=100000: the run needs about")
    assert "the CPU has 2.0 GiB available; trainer.batch_size=" in message
    fits = int(message.rsplit("trainer.batch_size=", 1)[1].split()[0])
    assert 1 <= fits < 100000
    cfg = make_cfg(TINY + [f"trainer.batch_size={fits}"])
    memory.check_memory(cfg, tiny_config(), 3_300_000, 24_576, 3, 32, 32)  # what it names does fit


def test_when_even_one_text_does_not_fit_it_names_the_length_or_says_the_model_does_not_fit(monkeypatch):
    per_token = memory.per_token_layer(tiny_config()) * 3 * 4
    fixed = memory.RUNTIME + 3_300_000 * 4 + 24_576 * 16
    message = refusal(monkeypatch, fixed + 40 * per_token, "trainer.batch_size=4")
    assert "even trainer.batch_size=1 does not fit; at batch size 1, texts of 20 tokens do" in message
    assert "the model with its training state alone does not fit" in refusal(monkeypatch, fixed // 2)


def test_a_run_that_fits_passes_and_an_unknown_device_is_not_estimated(monkeypatch):
    monkeypatch.setattr(memory, "device_memory", lambda device: ("the CPU", 64 * GIB, 1))
    memory.check_memory(make_cfg(TINY), tiny_config(), 3_300_000, 24_576, 3, 32, 32)
    monkeypatch.setattr(memory, "device_memory", lambda device: ("mps", None, 1))
    memory.check_memory(make_cfg(TINY + ["trainer.batch_size=100000"]), tiny_config(), 3_300_000, 24_576, 3, 32, 32)


def test_the_cpu_has_a_measurable_amount_of_memory():
    available = memory.cpu_available()
    assert available is None or available > 0


def test_the_length_is_max_length_or_the_longest_text_when_every_text_is_shorter():
    from rmu.data import Corpus

    short = Corpus("a", ["déjà vu", "xy"], max_length=100_000)  # "déjà vu": 9 bytes
    assert memory.longest([short]) == 11
    assert memory.longest([Corpus("b", ["x" * 500], max_length=32), short]) == 32
