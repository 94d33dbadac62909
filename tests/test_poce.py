"""PoCE composition of expert predictions (memory/world/poce.py): weights, the x0 form, bad α."""
from __future__ import annotations

import math

import pytest
import torch

from memory.world.poce import MODES, check_alpha, compose, mix, weights


def eps_of(x0, x_t, alpha_bar):
    """ε implied by a clean estimate at x_t."""
    return (x_t - math.sqrt(alpha_bar) * x0) / math.sqrt(1 - alpha_bar)


def x0_of(eps, x_t, alpha_bar):
    """Clean estimate implied by ε at x_t."""
    return (x_t - math.sqrt(1 - alpha_bar) * eps) / math.sqrt(alpha_bar)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("alpha_bar", [0.9, 0.3, 0.02])
def test_compose_in_x0_equals_the_epsilon_formula_of_each_mode(mode, alpha_bar):
    torch.manual_seed(0)
    x_t = torch.randn(2, 4, 8, 8)
    alphas = [2.0, 1.5, 3.0]
    mem = [torch.randn(2, 4, 8, 8) for _ in alphas]
    null = [torch.randn(2, 4, 8, 8) for _ in alphas]
    e = [eps_of(x, x_t, alpha_bar) for x in mem]
    n = [eps_of(x, x_t, alpha_bar) for x in null]
    expected = {
        "poce": sum(a * ek + (1 - a) * nk for a, ek, nk in zip(alphas, e, n)),
        "poce_normalized": n[0] + sum(a * (ek - nk) for a, ek, nk in zip(alphas, e, n)),
        "poe": sum(e),
        "single": alphas[0] * e[0] + (1 - alphas[0]) * n[0],
    }[mode]
    got = compose(mode, alphas, mem, null, x_t, alpha_bar)
    assert torch.allclose(got, x0_of(expected, x_t, alpha_bar), atol=1e-4, rtol=1e-4)


def test_weights_summing_to_one_need_no_noisy_sample_term():
    w_mem, w_null = weights("poce_normalized", [2.0, 2.0])
    assert sum(w_mem) + sum(w_null) == pytest.approx(1.0)
    a, b = torch.ones(1, 4, 2, 2), torch.zeros(1, 4, 2, 2)
    # a sum that is 1 ignores x_t entirely, even where alpha_bar is tiny (the first step from pure noise)
    assert torch.equal(mix([(2.0, a), (-1.0, b)], torch.full_like(a, 1e6), 1e-9), 2 * a)


def test_single_uses_only_the_first_expert_and_alpha_one_is_the_expert_itself():
    w_mem, w_null = weights("single", [1.0, 5.0])
    assert w_mem == [1.0, 0.0] and w_null == [0.0, 0.0]


@pytest.mark.parametrize("alpha", [0.5, float("nan"), float("inf"), -2, True, "2"])
def test_alpha_below_one_or_not_a_number_is_refused(alpha):
    with pytest.raises(ValueError, match="^alpha: "):
        check_alpha(alpha)


def test_unknown_mode_or_no_expert_is_refused():
    with pytest.raises(ValueError, match="^mode: "):
        weights("cfg", [2.0])
    with pytest.raises(ValueError, match="^experts: "):
        weights("poce", [])
