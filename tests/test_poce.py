"""PoCE composition of expert predictions (memory/world/poce.py): weights, the x0 form, bad α."""
from __future__ import annotations

import math

import pytest
import torch

from memory.world.poce import (
    MODES, check_alpha, expert_variance, gaussian_product, mix_denoised, prior_variance, weighted_mean, weights,
)
from memory.world.world_model import composed_step


def eps_of(x0, x_t, alpha_bar):
    """ε implied by a clean estimate at x_t."""
    return (x_t - math.sqrt(alpha_bar) * x0) / math.sqrt(1 - alpha_bar)


def compose(mode, alphas, with_memory, null, x_t, alpha_bar):
    """The clean chunk of each mode's ε mixture, as mix_denoised gives it at x_t with ᾱ = alpha_bar."""
    w_memory, w_null = weights(mode, alphas)
    return mix_denoised([*zip(w_memory, with_memory), *zip(w_null, null)], x_t, math.sqrt(alpha_bar))


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
    assert torch.equal(mix_denoised([(2.0, a), (-1.0, b)], torch.full_like(a, 1e6), math.sqrt(1e-9)), 2 * a)


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


def ddim_alphas(steps):
    """(ᾱ before, ᾱ after) of each trailing-spaced DDIM step of the embedded model's schedule, as denoise takes them."""
    from diffusers import DDIMScheduler

    from memory.world.backbones.mosaic_dit import training_schedule
    scheduler = DDIMScheduler.from_config(training_schedule(1000).config, timestep_spacing="trailing")
    scheduler.set_timesteps(steps)
    stride = 1000 // steps
    pairs = [(float(scheduler.alphas_cumprod[int(t)]),
              float(scheduler.alphas_cumprod[int(t) - stride] if int(t) >= stride else scheduler.final_alpha_cumprod))
             for t in scheduler.timesteps]
    return scheduler, pairs


@pytest.mark.parametrize("steps", [1, 4, 16])
def test_composed_step_of_weight_one_is_the_ddim_step(steps):
    scheduler, pairs = ddim_alphas(steps)
    torch.manual_seed(1)
    for t, (before, after) in zip(scheduler.timesteps, pairs):
        x, x0 = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
        expected = scheduler.step(x0, t, x).prev_sample
        assert torch.allclose(composed_step(x, x0, before, after, 1.0), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("weight", [1.0, 2.0, 3.0])
def test_composed_step_solves_the_flow_of_the_summed_scores(weight):
    """dx̃/dσ = Σ w·ε_k = (W·x̃ − Σ w·x0_k)/σ, integrated finely with the estimates held, lands where the step does."""
    torch.manual_seed(2)
    a, b = torch.randn(3), torch.randn(3)
    terms = [(weight - 1.0, a), (1.0, b)] if weight > 1 else [(1.0, a)]
    mean, total = weighted_mean(terms)
    assert total == weight
    before, after = 0.05, 0.6
    x = torch.randn(3)
    sigma, sigma_next = math.sqrt((1 - before) / before), math.sqrt((1 - after) / after)
    scaled = x / math.sqrt(before)
    grid = torch.linspace(sigma, sigma_next, 200_001, dtype=torch.float64)
    y = scaled.double()
    for s0, s1 in zip(grid[:-1], grid[1:]):
        eps = sum(w * (y - x0.double()) / s0 for w, x0 in terms)
        y = y + (s1 - s0) * eps
    assert torch.allclose(composed_step(x, mean, before, after, weight).double(), math.sqrt(after) * y, atol=1e-3)


def test_composed_step_stays_finite_from_pure_noise_where_the_x0_form_explodes():
    _, pairs = ddim_alphas(1)
    before, after = pairs[0]
    torch.manual_seed(3)
    x, a, b = torch.randn(2, 4, 8, 8), torch.rand(2, 4, 8, 8), torch.rand(2, 4, 8, 8)
    terms = [(1.0, a), (1.0, b)]
    mean, total = weighted_mean(terms)
    # one step to the end of the schedule lands on the experts' weighted mean, a value within their range
    assert torch.allclose(composed_step(x, mean, before, after, total), (a + b) / 2, atol=1e-3)
    assert mix_denoised(terms, x, math.sqrt(before)).abs().max() > 100


def test_gaussian_product_weighs_experts_by_how_sure_they_are():
    sure, unsure = torch.full((1, 4, 2, 2), 1.0), torch.full((1, 4, 2, 2), 0.0)
    x = torch.randn(1, 4, 2, 2)
    top = 1e-14  # the last timestep: the noisy sample says nothing
    equal = gaussian_product([(1.0, sure, torch.ones_like(x)), (1.0, unsure, torch.ones_like(x))], x, top)
    assert torch.allclose(equal, torch.full_like(x, 0.5), atol=1e-6)
    weighed = gaussian_product([(1.0, sure, torch.full_like(x, 0.01)), (1.0, unsure, torch.ones_like(x))], x, top)
    assert torch.allclose(weighed, torch.full_like(x, 1 / 1.01), atol=1e-5)


def test_gaussian_poce_against_a_null_that_knows_nothing_keeps_a_sure_pixel():
    x = torch.randn(1, 4, 2, 2)
    mean, null = torch.full_like(x, 0.8), torch.zeros_like(x)
    w_memory, w_null = weights("single", [2.0])
    got = gaussian_product([(w_memory[0], mean, torch.full_like(x, 0.01)), (w_null[0], null, torch.ones_like(x))], x, 1e-9)
    # precision 2/0.01 − 1/1: the mean moves 0.5 % away from the null, where the x0 form doubles the contrast (1.6)
    assert torch.allclose(got, torch.full_like(x, 0.8 * 200 / 199), atol=1e-5)


def test_gaussian_product_of_one_expert_is_that_expert_bit_for_bit():
    mean, x = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    assert torch.equal(gaussian_product([(1.0, mean, torch.rand(2, 4, 3, 3) + 0.1)], x, 0.3), mean)


def test_gaussian_product_falls_back_to_its_experts_where_the_null_is_surer_than_they_are():
    x = torch.randn(1, 4, 1, 1)
    mean, null = torch.full_like(x, 0.7), torch.full_like(x, 0.1)
    got = gaussian_product([(2.0, mean, torch.ones_like(x)), (-1.0, null, torch.full_like(x, 0.4))], x, 1e-9)
    assert torch.allclose(got, mean)


def test_prior_variance_is_at_least_the_experts_spread_plus_the_gap_of_the_means():
    torch.manual_seed(5)
    mean, null = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    variance, null_variance = torch.rand(2, 4, 3, 3) + 0.01, torch.rand(2, 4, 3, 3) * 4
    got = prior_variance(mean, variance, null, null_variance)
    assert torch.all(got >= null_variance) and torch.all(got >= variance + (mean - null).pow(2))
    # an honest null (already wider than both) is kept as it is
    wide = variance + (mean - null).pow(2) + 1
    assert torch.equal(prior_variance(mean, variance, null, wide), wide)


@pytest.mark.parametrize("alpha", [1.5, 2.0, 4.0])
def test_contrast_against_a_bounded_null_moves_an_expert_at_most_a_fraction_of_its_spread(alpha):
    torch.manual_seed(6)
    mean, null = torch.rand(1, 4, 16, 16), torch.rand(1, 4, 16, 16)
    variance = torch.rand(1, 4, 16, 16) * 0.1 + 1e-3
    # a null head that claims to be as sure as the expert (or surer) everywhere
    overconfident = variance * torch.rand(1, 4, 16, 16)
    w_memory, w_null = weights("single", [alpha])
    x = torch.randn_like(mean)
    raw = gaussian_product([(w_memory[0], mean, variance), (w_null[0], null, overconfident)], x, 1e-9)
    bounded = gaussian_product([(w_memory[0], mean, variance),
                                (w_null[0], null, prior_variance(mean, variance, null, overconfident))], x, 1e-9)
    limit = (alpha - 1) / 2 * (variance / alpha).sqrt()
    assert torch.all((bounded - mean).abs() <= limit * (1 + 1e-4))
    # the same null unbounded drives some pixels much further than that
    assert ((raw - mean).abs() > 2 * limit).any()


def test_an_experts_variance_is_never_wider_than_its_nulls():
    torch.manual_seed(7)
    variance, null_variance = torch.rand(2, 4, 3, 3) * 4, torch.rand(2, 4, 3, 3)
    got = expert_variance(variance, null_variance)
    assert torch.all(got <= null_variance) and torch.all(got <= variance)
    narrower = null_variance * 0.5
    assert torch.equal(expert_variance(narrower, null_variance), narrower)


def test_a_head_that_claims_more_than_the_null_does_not_turn_the_contrast_into_extrapolation():
    mean, null = torch.zeros(1, 4, 2, 2), torch.ones(1, 4, 2, 2)
    unsure, null_variance = torch.full_like(mean, 100.0), torch.full_like(mean, 0.01)
    x = torch.randn_like(mean)
    w_memory, w_null = weights("single", [2.0])

    def composed(variance):
        """The alpha-2 product of the expert with this variance and its bounded null."""
        prior = prior_variance(mean, variance, null, null_variance)
        return gaussian_product([(w_memory[0], mean, variance), (w_null[0], null, prior)], x, 1e-9)

    # believed, the head's claim makes alpha 2 all but the unbounded 2 * mean - null
    assert torch.allclose(composed(unsure), 2 * mean - null, atol=0.05)
    capped = expert_variance(unsure, null_variance)
    limit = 0.5 * (capped / 2).sqrt()
    assert torch.all((composed(capped) - mean).abs() <= limit * (1 + 1e-4))
