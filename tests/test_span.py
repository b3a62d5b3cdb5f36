"""`LayerSpan` (rmu/unlearn/span.py): the span of decoder layers a step runs reproduces the
full forward at layer ℓ, and its frozen values are copies of just the updated tensors."""

import pytest
import torch

from rmu.data import tokenize
from rmu.models.loading import load_model
from rmu.unlearn.reference_loop import layer_output
from rmu.unlearn.span import LayerSpan
from tests.conftest import make_cfg

def test_span_reproduces_full_forward_on_a_model_mixing_attention_types():
    """Qwen2 with sliding-window layers above max_window_layers: layers of the span get
    different attention masks, so the prefix pass records each layer's own arguments."""
    cfg = make_cfg(["model=tiny_random", "+model.arch.sliding_window=4", "+model.arch.use_sliding_window=true",
                    "+model.arch.max_window_layers=2", "model.arch.model_type=qwen2"])
    model, tok = load_model(cfg.model, 0)
    types = model.config.layer_types
    assert types[1] != types[2], types
    batch = tokenize(tok, ["a longer sentence so that the sliding window matters here", "short"], 16, "cpu")
    names = ["model.layers.1.mlp.down_proj.weight", "model.layers.2.mlp.down_proj.weight"]
    span = LayerSpan(model, 3, names)
    assert not span.shared_kwargs
    with torch.no_grad():
        expected = layer_output(model, 3, batch)
        got = span.run(span.prefix(batch))
        frozen_before = span.run(span.prefix(batch), frozen=True)
    assert torch.allclose(got, expected, atol=1e-6), (got - expected).abs().max()
    assert torch.equal(frozen_before, got)
    # After an edit of an updated tensor the live span moves and the frozen span does not.
    with torch.no_grad():
        dict(model.named_parameters())[names[0]].add_(0.5)
        moved = span.run(span.prefix(batch))
        still = span.run(span.prefix(batch), frozen=True)
    assert not torch.allclose(moved, expected, atol=1e-4)
    assert torch.equal(still, frozen_before)


def test_frozen_values_are_copies_of_just_the_updated_tensors():
    cfg = make_cfg(["model=tiny_random"])
    model, _ = load_model(cfg.model, 0)
    names = ["model.layers.1.mlp.down_proj.weight", "model.layers.2.mlp.down_proj.weight"]
    span = LayerSpan(model, 2, names)
    params = dict(model.named_parameters())
    assert {i: set(d) for i, d in span.frozen.items()} == {1: {"mlp.down_proj.weight"}, 2: {"mlp.down_proj.weight"}}
    for name in names:
        i = int(name.split(".")[2])
        frozen = span.frozen[i]["mlp.down_proj.weight"]
        assert torch.equal(frozen, params[name]) and frozen.data_ptr() != params[name].data_ptr()
    with pytest.raises(ValueError, match="outside decoder layers 0..1"):
        LayerSpan(model, 1, names)
