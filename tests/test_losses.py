"""Formula tests: each loss and the control vectors against a hand computation."""

import torch

from rmu.unlearn.losses import forget_loss, masked_mse, mean_token_norm, random_directions, retain_loss


def hand_mse(x, t, mask=None):
    total, count = 0.0, 0
    B, T, D = x.shape
    for b in range(B):
        for s in range(T):
            if mask is not None and mask[b, s] == 0:
                continue
            for d in range(D):
                total += (x[b, s, d].item() - t[b, s, d].item()) ** 2
                count += 1
    return total / count


def test_forget_loss_matches_hand_computation_with_and_without_mask():
    torch.manual_seed(0)
    h = torch.randn(2, 5, 3)
    control = torch.tensor([1.0, -2.0, 0.5])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    target = control.expand(2, 5, 3)
    assert torch.isclose(forget_loss(h, control, None), torch.tensor(hand_mse(h, target)), rtol=1e-6)
    assert torch.isclose(forget_loss(h, control, mask), torch.tensor(hand_mse(h, target, mask)), rtol=1e-6)
    # the mask really changes the value: pad positions are not counted
    assert not torch.isclose(forget_loss(h, control, mask), forget_loss(h, control, None))


def test_retain_loss_matches_hand_computation_with_and_without_mask():
    torch.manual_seed(1)
    h, h0 = torch.randn(3, 4, 6), torch.randn(3, 4, 6)
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]])  # left padding
    assert torch.isclose(retain_loss(h, h0, None), torch.tensor(hand_mse(h, h0)), rtol=1e-6)
    assert torch.isclose(retain_loss(h, h0, mask), torch.tensor(hand_mse(h, h0, mask)), rtol=1e-6)
    assert retain_loss(h0, h0, mask) == 0


def test_unmasked_loss_is_torch_mse_like_the_reference():
    torch.manual_seed(2)
    h, c = torch.randn(2, 7, 5), torch.rand(1, 1, 5)
    assert torch.isclose(masked_mse(h, c.expand_as(h), None), torch.nn.functional.mse_loss(h, c.expand_as(h)))


def test_control_vectors_are_uniform_draws_normalised_and_scaled():
    u = random_directions(3, 64, seed=42)
    assert u.shape == (3, 64)
    assert torch.allclose(u.norm(dim=-1), torch.ones(3), atol=1e-6)
    assert (u >= 0).all()  # torch.rand, not randn: every component is non-negative
    coeffs = torch.tensor([6.5, 20.0, 300.0])
    controls = u * coeffs.unsqueeze(1)
    assert torch.allclose(controls.norm(dim=-1), coeffs, rtol=1e-6)
    # the same draws as torch.rand(1, 1, D) per topic from a generator seeded with the run seed
    gen = torch.Generator().manual_seed(42)
    for k in range(3):
        r = torch.rand(1, 1, 64, generator=gen)[0, 0]
        assert torch.allclose(u[k], r / r.norm())
    assert torch.equal(random_directions(3, 64, seed=42), u)
    assert not torch.equal(random_directions(3, 64, seed=43), u)


def test_mean_token_norm_ignores_padding():
    h = torch.zeros(1, 3, 2)
    h[0, 0] = torch.tensor([3.0, 4.0])  # norm 5
    h[0, 1] = torch.tensor([0.0, 1.0])  # norm 1
    h[0, 2] = torch.tensor([100.0, 0.0])  # pad
    assert mean_token_norm(h, torch.tensor([[1, 1, 0]])).item() == 3.0
    assert abs(mean_token_norm(h, None).item() - 106 / 3) < 1e-5
