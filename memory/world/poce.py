"""PoCE: combine memory experts' predictions at sampling time (CoME, Eq. 3) and its ablations.

Each expert k predicts the chunk with its memory (ε_k) and with its memory removed (ε_null_k). In ε:

- ``poce`` (the paper): Σ_k α_k ε_k + (1 − α_k) ε_null_k; its weights sum to the number of experts
- ``poce_normalized``: ε_null_1 + Σ_k α_k (ε_k − ε_null_k), one shared prior; the weights sum to 1
- ``poe`` (naive product of experts): Σ_k ε_k
- ``single``: the first expert alone, α_1 ε_1 + (1 − α_1) ε_null_1

The backbone predicts the clean chunk x0, not ε. With x_t = √ᾱ x0 + √(1−ᾱ) ε, a weighted sum of ε
with weights w is the same weighted sum of x0 plus (1 − Σ w) x_t / √ᾱ: exact, and free of the
division by √(1−ᾱ) that ε needs. Where Σ w ≠ 1 (``poce`` with several experts, ``poe``) that term
is huge where ᾱ is small, so a sampler handed this x0 takes wild steps from pure noise. The
rollout therefore integrates the mixture instead: ``weighted_mean`` gives Σ w·x0 / Σ w and
``composed_step`` solves the flow of the summed scores under DDIM's assumption; at one
step from the last timestep that lands on the weighted mean. That treats every expert as equally
sure of every pixel. A backbone with a variance head says how sure each prediction is, and then
``gaussian_product`` composes the experts' Gaussian posteriors exactly: Π p_k^w weighs each expert
by its precision, so an expert that knows a pixel (a memory that saw it) outvotes one that guesses,
and contrast against a null that knows nothing barely moves a pixel an expert is sure of. This is the
product PoCE defines, of the experts' clean distributions; summed scores of the noisy ones only
approximate it, however finely integrated (the product of noised densities is not the noised product).
Each expert's null enters its product as that expert's prior (``prior_variance``): no surer than the
expert plus the gap between their means, so α > 1 sharpens an expert instead of extrapolating past it; and
an expert is never less sure than its null (``expert_variance``), whatever a head out of its training windows claims.
``mix_denoised`` is the exact x0 for
samplers that step themselves, for any x = s·x0 + σ·ε, such as ComfyUI's (s = 1 for ε and v models,
s = 1 − σ for flow matching), whose guiders return x0.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

MODES = ("poce", "poce_normalized", "poe", "single")
DEFAULT_ALPHA = 2.0
# Π p_k^w with negative (null) weights is no distribution where the null is surer than the experts; there the
# product falls back to its positively weighted experts, below this share of their precision
PRECISION_FLOOR = 0.1


def check_alpha(alpha: object, name: str = "alpha") -> float:
    """``alpha`` as a float if it is a finite number ≥ 1 (PoCE's contrast weight), else a ValueError naming ``name``."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 1:
        raise ValueError(f"{name}: must be a finite number >= 1 (1 = the expert as it is, 2 = the paper's "
                         f"default contrast against its null memory), got {alpha!r}.")
    return float(alpha)


def weights(mode: str, alphas: Sequence[float]) -> tuple[list[float], list[float]]:
    """ε weights of each expert's prediction with memory and of its null prediction under ``mode``."""
    if mode not in MODES:
        raise ValueError(f"mode: {mode!r} is not one of {', '.join(MODES)}.")
    if not alphas:
        raise ValueError("experts: the composition has no expert; connect at least one expert.")
    alphas = [check_alpha(a) for a in alphas]
    if mode == "poce":
        return alphas, [1 - a for a in alphas]
    rest = [0.0] * (len(alphas) - 1)
    if mode == "poce_normalized":
        return alphas, [1 - alphas[0]] + [-a for a in alphas[1:]]
    if mode == "poe":
        return [1.0] * len(alphas), [0.0] * len(alphas)
    return [alphas[0]] + rest, [1 - alphas[0]] + rest


def mix_denoised(terms: Sequence[tuple[float, torch.Tensor]], x: torch.Tensor,
                 x0_scale: float | torch.Tensor) -> torch.Tensor:
    """The clean estimate of the ε mixture Σ w·ε(x0) given as (w, x0) pairs at noisy ``x`` = x0_scale·x0 + σ·ε."""
    # ε_k = (x − s·x0_k)/σ, so Σ w ε_k = (W·x − s·Σ w x0_k)/σ and x0 = (x − σ·Σ w ε_k)/s = Σ w x0_k + (1 − W)·x/s
    total = sum(w for w, _ in terms)
    out = sum(w * x0 for w, x0 in terms if w != 0)
    if abs(1 - total) > 1e-9:
        vanishing = (x0_scale == 0).any() if isinstance(x0_scale, torch.Tensor) else x0_scale == 0
        if vanishing:
            raise ValueError(f"mode: the experts' weights sum to {total:g}, not 1, and the noisy sample holds no clean "
                             "signal at this noise level (e.g. sigma 1 of a flow-matching model), so the composition "
                             "has no clean estimate; use poce_normalized or single, or start the sigmas below it.")
        out = out + (1 - total) * x / x0_scale
    return out


def composed_step(x: torch.Tensor, mean: torch.Tensor, scale: float, sigma: float, scale_next: float,
                  sigma_next: float, weight: float) -> torch.Tensor:
    """One step of x = s·x0 + σ·ε from (``scale``, ``sigma``) to the next levels under the score Σ w·ε_k with Σ w = ``weight``.

    In x̃ = x/s and ρ = σ/s the flow is dx̃/dρ = (W·x̃ − Σ w·x0_k)/ρ; with the estimates held, x̃
    moves to ``mean`` + (x̃ − ``mean``)·(ρ'/ρ)^W: exact at any step size, for variance-preserving
    (s = √ᾱ) and flow-matching (s = 1 − σ) noise alike, and finite from pure noise (s = 0), where the
    x0 form of the mixture explodes. At W = 1 it is the DDIM (or flow Euler) step.
    """
    if sigma_next <= 0:
        return scale_next * mean
    # (ρ'/ρ)^W and x̃·(ρ'/ρ)^W written without dividing by s, which is 0 at pure noise
    shrink = (sigma_next * scale / (scale_next * sigma)) ** weight
    keep = scale_next * (sigma_next / scale_next) ** weight * scale ** (weight - 1) / sigma ** weight
    return scale_next * (1 - shrink) * mean + keep * x


def weighted_mean(terms: Sequence[tuple[float, torch.Tensor]]) -> tuple[torch.Tensor, float]:
    """Σ w·x0 / W and W = Σ w of (w, x0) pairs: what a sampler that integrates the ε mixture needs (W ≥ 1 in every mode)."""
    total = sum(w for w, _ in terms)
    return sum(w * x0 for w, x0 in terms if w != 0) / total, total


def gaussian_product(terms: Sequence[tuple[float, torch.Tensor, torch.Tensor]], x: torch.Tensor,
                     alpha_bar: float) -> torch.Tensor:
    """The clean estimate of Π p_k(x0)^w for experts given as (w, mean, variance) posteriors at noisy ``x``, ᾱ = ``alpha_bar``.

    Each posterior already holds the likelihood of x once, so the product holds it W = Σ w times and
    gets 1 − W copies back: precision Σ w/v + (1 − W)·ᾱ/(1 − ᾱ), and the matching precision-weighted
    mean. At the last timestep the likelihood vanishes and this is the product of the experts' guesses.
    """
    if len(terms) == 1 and terms[0][0] == 1:
        return terms[0][1]  # one expert as it is, bit for bit
    total = sum(w for w, _, _ in terms)
    likelihood = alpha_bar / (1 - alpha_bar)
    precision = sum(w / v for w, _, v in terms) + (1 - total) * likelihood
    weighted = sum(w * m / v for w, m, v in terms) + (1 - total) * math.sqrt(alpha_bar) / (1 - alpha_bar) * x
    positive = [(w, m, v) for w, m, v in terms if w > 0]
    own_precision = sum(w / v for w, _, v in positive)
    own = sum(w * m / v for w, m, v in positive) / own_precision
    return torch.where(precision > PRECISION_FLOOR * own_precision, weighted / precision.clamp_min(1e-12), own)


def expert_variance(variance: torch.Tensor, null_variance: torch.Tensor) -> torch.Tensor:
    """An expert's variance, no wider than its null's: a memory narrows what the null leaves open, it cannot widen it.

    By the law of total variance, what stays open given a memory is on average at most what stays open
    given none. A variance head asked about a memory unlike its training windows (a patch memory
    rendered into a revisited view) can claim far more than the null, and then the bounded contrast
    degenerates into the unbounded one, 2·mean − null_mean at α 2. The null memory is a trained input
    of the head, so its variance is the better-founded of the two. Both tensors share a shape.
    """
    return torch.minimum(variance, null_variance)


def prior_variance(mean: torch.Tensor, variance: torch.Tensor, null_mean: torch.Tensor,
                   null_variance: torch.Tensor) -> torch.Tensor:
    """The null's variance as the prior of one expert's posterior: at least the expert's variance plus their means' squared gap.

    By the law of total variance a prior spreads at least as far as what the memory leaves open plus
    how far the memory moves the mean; a null head that claims less (it guesses "nothing" without
    seeing what the expert saw) turns α > 1 into extrapolation far past both means. Bounded, the
    contrast p^α / p_null^(α−1) moves an expert's mean by at most (α−1)/2·√(v/α), and its precision
    α/v − (α−1)/v_null never falls below 1/v. All tensors share a shape.
    """
    return torch.maximum(null_variance, variance + (mean - null_mean).pow(2))
