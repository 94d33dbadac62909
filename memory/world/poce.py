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
``world_model.composed_step`` solves the flow of the summed scores under DDIM's assumption; at one
step from the last timestep that lands on the weighted mean. ``mix_denoised`` is the exact x0 for
samplers that step themselves, for any x = s·x0 + σ·ε, such as ComfyUI's (s = 1 for ε and v models,
s = 1 − σ for flow matching), whose guiders return x0.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

MODES = ("poce", "poce_normalized", "poe", "single")
DEFAULT_ALPHA = 2.0


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


def weighted_mean(terms: Sequence[tuple[float, torch.Tensor]]) -> tuple[torch.Tensor, float]:
    """Σ w·x0 / W and W = Σ w of (w, x0) pairs: what a sampler that integrates the ε mixture needs (W ≥ 1 in every mode)."""
    total = sum(w for w, _ in terms)
    return sum(w * x0 for w, x0 in terms if w != 0) / total, total
