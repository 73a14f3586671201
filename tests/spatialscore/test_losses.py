import math

import pytest
import torch
import torch.nn.functional as F

from spatialscore.losses import (
    bradley_terry_loss,
    expected_bt_loss,
    gauss_hermite_normal,
    sigma_from_log_sigma,
)


def _pairs(n: int, *, seed: int = 0, dtype: torch.dtype = torch.float64, sigma_scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    mu_c = torch.randn(n, generator=g, dtype=dtype) * 3
    mu_r = torch.randn(n, generator=g, dtype=dtype) * 3
    sigma_c = torch.rand(n, generator=g, dtype=dtype) * sigma_scale
    sigma_r = torch.rand(n, generator=g, dtype=dtype) * sigma_scale
    return mu_c, sigma_c, mu_r, sigma_r


def _ebt(mu_c, sigma_c, mu_r, sigma_r, **kwargs):
    return expected_bt_loss(mu_chosen=mu_c, sigma_chosen=sigma_c, mu_rejected=mu_r, sigma_rejected=sigma_r, **kwargs)


def _fine_grid_expectation(mean: float, std: float) -> float:
    """E[-log sigmoid(z)], z ~ N(mean, std^2), by the trapezoid rule on 400k points over +-12 std (float64)."""
    t = torch.linspace(-12.0, 12.0, 400_001, dtype=torch.float64)
    density = torch.exp(-0.5 * t * t) / math.sqrt(2 * math.pi)
    return torch.trapezoid(-F.logsigmoid(mean + std * t) * density, t).item()


def test_bradley_terry_matches_formula_and_reductions():
    chosen = torch.tensor([2.0, -1.0, 0.0, 30.0])
    rejected = torch.tensor([1.0, 1.0, 0.0, -30.0])
    expected = torch.log1p(torch.exp(-(chosen - rejected)))
    loss = bradley_terry_loss(chosen=chosen, rejected=rejected, reduction="none")
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(bradley_terry_loss(chosen=chosen, rejected=rejected), expected.mean())
    torch.testing.assert_close(bradley_terry_loss(chosen=chosen, rejected=rejected, reduction="sum"), expected.sum())
    assert loss[2].item() == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="reduction"):
        bradley_terry_loss(chosen=chosen, rejected=rejected, reduction="max")


def test_losses_compute_in_fp32_for_low_precision_inputs():
    chosen = torch.tensor([3.0, -2.0], dtype=torch.bfloat16)
    rejected = torch.zeros(2, dtype=torch.bfloat16)
    assert bradley_terry_loss(chosen=chosen, rejected=rejected).dtype == torch.float32
    sigma = torch.full((2,), 0.5, dtype=torch.bfloat16)
    assert _ebt(chosen, sigma, rejected, sigma).dtype == torch.float32
    assert sigma_from_log_sigma(sigma).dtype == torch.float32
    assert _ebt(*_pairs(3)).dtype == torch.float64


def test_losses_are_keyword_only():
    with pytest.raises(TypeError):
        bradley_terry_loss(torch.zeros(1), torch.zeros(1))  # type: ignore[misc]
    with pytest.raises(TypeError):
        expected_bt_loss(torch.zeros(1), torch.ones(1), torch.zeros(1), torch.ones(1))  # type: ignore[misc]


@pytest.mark.parametrize("sigma", [0.0, 1e-7])
def test_expected_bt_reduces_to_bt_as_sigma_vanishes(sigma):
    mu_c, _, mu_r, _ = _pairs(64, dtype=torch.float32)
    mu_c = mu_c * 3  # differences up to ~40
    sig = torch.full_like(mu_c, sigma)
    bt = bradley_terry_loss(chosen=mu_c, rejected=mu_r, reduction="none")
    torch.testing.assert_close(_ebt(mu_c, sig, mu_r, sig, reduction="none"), bt, rtol=1e-6, atol=1e-6)
    mu_c64, mu_r64 = mu_c.double(), mu_r.double()
    bt64 = bradley_terry_loss(chosen=mu_c64, rejected=mu_r64, reduction="none")
    ebt64 = _ebt(mu_c64, sig.double(), mu_r64, sig.double(), reduction="none")
    torch.testing.assert_close(ebt64, bt64, rtol=1e-12, atol=1e-12)


def test_gradient_is_finite_and_matches_bt_at_zero_sigma():
    mu_c = torch.tensor([1.0, -2.0, 0.0], requires_grad=True)
    mu_r = torch.zeros(3)
    sigma = torch.zeros(3, requires_grad=True)
    _ebt(mu_c, sigma, mu_r, sigma.detach()).backward()
    expected = torch.autograd.grad(bradley_terry_loss(chosen=mu_c, rejected=mu_r), mu_c)[0]
    torch.testing.assert_close(mu_c.grad, expected)
    torch.testing.assert_close(sigma.grad, torch.zeros(3))


def test_expected_bt_matches_monte_carlo():
    g = torch.Generator().manual_seed(1234)
    num = 1_000_000
    cases = [(0.0, 0.3, 0.0, 0.4), (1.5, 1.0, -0.5, 0.5), (-2.0, 2.0, 1.0, 1.5), (4.0, 0.1, 3.0, 3.0)]
    for mu_c, s_c, mu_r, s_r in cases:
        std = math.hypot(s_c, s_r)
        z = (mu_c - mu_r) + std * torch.randn(num, generator=g, dtype=torch.float64)
        samples = -F.logsigmoid(z)
        mc, stderr = samples.mean().item(), samples.std().item() / math.sqrt(num)
        value = _ebt(*(torch.tensor([v], dtype=torch.float64) for v in (mu_c, s_c, mu_r, s_r))).item()
        assert abs(value - mc) < 5 * stderr, (mu_c, s_c, mu_r, s_r, value, mc, stderr)


@pytest.mark.parametrize(
    ("std", "tol"),
    [
        (0.05, 1e-12),
        (0.5, 1e-12),
        (1.0, 1e-10),
        (2.0, 1e-7),
        (3.0, 1e-5),
        (5.0, 1e-3),
        (10.0, 2e-2),
        (20.0, 0.1),
    ],
)
def test_expected_bt_matches_fine_grid_integration(std, tol):
    """Also pins the documented accuracy of the 32-node rule."""
    for mean in (-10.0, -3.0, -0.5, 0.0, 0.7, 2.0, 6.0):
        mu_c = torch.tensor([mean], dtype=torch.float64)
        sigma = torch.tensor([std / math.sqrt(2)], dtype=torch.float64)
        value = _ebt(mu_c, sigma, torch.zeros(1, dtype=torch.float64), sigma).item()
        assert value == pytest.approx(_fine_grid_expectation(mean, std), abs=tol), (mean, std)


def test_more_points_are_more_accurate_at_large_sigma():
    mu_c, sigma = (
        torch.zeros(1, dtype=torch.float64),
        torch.full((1,), 20.0 / math.sqrt(2), dtype=torch.float64),
    )
    reference = _fine_grid_expectation(0.0, 20.0)
    errors = [abs(_ebt(mu_c, sigma, mu_c, sigma, num_points=n).item() - reference) for n in (16, 32, 64, 128)]
    assert errors == sorted(errors, reverse=True)
    assert errors[-1] < 1e-2


def test_gradcheck_float64():
    mu_c, sigma_c, mu_r, sigma_r = (t.clone().requires_grad_() for t in _pairs(5, sigma_scale=2.0))
    sigma_c.data[0] = 0.0  # one pair with a single zero sigma
    margin = torch.tensor([0.0, 0.5, -1.0, 2.0, 0.1], dtype=torch.float64, requires_grad=True)

    def ebt(mc, sc, mr, sr, m):
        return _ebt(mc, sc, mr, sr, margin=m, num_points=16, reduction="none")

    assert torch.autograd.gradcheck(ebt, (mu_c, sigma_c, mu_r, sigma_r, margin))
    assert torch.autograd.gradcheck(
        lambda c, r, m: bradley_terry_loss(chosen=c, rejected=r, margin=m, reduction="none"),
        (mu_c, mu_r, margin),
    )


def test_margin_shifts_the_difference():
    mu_c, sigma_c, mu_r, sigma_r = _pairs(16)
    margin = torch.linspace(-1, 2, 16, dtype=torch.float64)
    torch.testing.assert_close(
        _ebt(mu_c, sigma_c, mu_r, sigma_r, margin=margin, reduction="none"),
        _ebt(mu_c - margin, sigma_c, mu_r, sigma_r, reduction="none"),
    )
    torch.testing.assert_close(
        bradley_terry_loss(chosen=mu_c, rejected=mu_r, margin=0.5, reduction="none"),
        bradley_terry_loss(chosen=mu_c - 0.5, rejected=mu_r, reduction="none"),
    )
    # A positive margin makes every pair harder: the loss grows.
    assert (
        bradley_terry_loss(chosen=mu_c, rejected=mu_r, margin=1.0, reduction="none")
        > bradley_terry_loss(chosen=mu_c, rejected=mu_r, reduction="none")
    ).all()
    assert (
        _ebt(mu_c, sigma_c, mu_r, sigma_r, margin=1.0, reduction="none")
        > _ebt(mu_c, sigma_c, mu_r, sigma_r, reduction="none")
    ).all()


def test_loss_grows_with_sigma():
    mu_c = torch.tensor([2.0]).expand(5)
    sigma = torch.tensor([0.0, 0.5, 1.0, 2.0, 4.0])
    loss = _ebt(mu_c, sigma, torch.zeros(5), torch.zeros(5), reduction="none")
    assert (loss.diff() > 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extreme_values_are_finite(dtype):
    diff = torch.tensor([50.0, -50.0, 50.0, -50.0, 0.0, 50.0], dtype=dtype)
    sigma = torch.tensor([0.0, 0.0, 20.0, 20.0, 20.0, 1e-3], dtype=dtype)
    mu_c = diff.clone().requires_grad_()
    sigma_c = sigma.clone().requires_grad_()
    zeros = torch.zeros(6, dtype=dtype)
    loss = _ebt(mu_c, sigma_c, zeros, sigma, reduction="none")
    assert torch.isfinite(loss).all()
    assert loss[0].item() < 1e-6 and loss[1].item() == pytest.approx(50.0, rel=1e-5)
    loss.sum().backward()
    assert torch.isfinite(mu_c.grad).all() and torch.isfinite(sigma_c.grad).all()
    bt = bradley_terry_loss(chosen=diff, rejected=zeros, reduction="none")
    assert torch.isfinite(bt).all()


def test_quadrature_cache_survives_inference_mode():
    gauss_hermite_normal.cache_clear()
    with torch.inference_mode():
        _ebt(*_pairs(4, dtype=torch.float32))
    mu_c, sigma_c, mu_r, sigma_r = (t.requires_grad_() for t in _pairs(4, dtype=torch.float32))
    _ebt(mu_c, sigma_c, mu_r, sigma_r).backward()
    assert torch.isfinite(sigma_c.grad).all()


def test_quadrature_rule_is_normalised_and_exact_for_low_moments():
    nodes, weights = gauss_hermite_normal(32, torch.device("cpu"), torch.float64)
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-15)
    assert (weights * nodes).sum().item() == pytest.approx(0.0, abs=1e-14)
    assert (weights * nodes**2).sum().item() == pytest.approx(1.0, abs=1e-13)
    assert (weights * nodes**4).sum().item() == pytest.approx(3.0, abs=1e-12)
    with pytest.raises(ValueError):
        gauss_hermite_normal(0, torch.device("cpu"), torch.float64)


def test_sigma_from_log_sigma():
    x = torch.tensor([-20.0, -5.0, 0.0, 5.0, 1e4], dtype=torch.bfloat16)
    sigma = sigma_from_log_sigma(x)
    assert sigma.dtype == torch.float32 and torch.isfinite(sigma).all() and (sigma > 0).all()
    small = torch.tensor([-20.0, -8.0])
    torch.testing.assert_close(sigma_from_log_sigma(small), small.exp(), rtol=1e-3, atol=0)
    x = torch.tensor([-30.0, 0.0, 30.0], requires_grad=True)
    sigma_from_log_sigma(x).sum().backward()
    assert (x.grad > 0).all()
