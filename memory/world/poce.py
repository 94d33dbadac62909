"""PoCE: combine memory experts' predictions at sampling time (CoME, Eq. 3) and its ablations.

Each expert k predicts the chunk with its memory (ε_k) and with its memory removed (ε_null_k). In ε:

- ``poce`` (the paper): Σ_k α_k ε_k + (1 − α_k) ε_null_k; its weights sum to the number of experts
- ``poce_normalized``: ε_null_1 + Σ_k α_k (ε_k − ε_null_k), one shared prior; the weights sum to 1
- ``poe`` (naive product of experts): Σ_k ε_k
- ``single``: the first expert alone, α_1 ε_1 + (1 − α_1) ε_null_1

The backbone predicts the clean chunk x0, not ε. With x_t = √ᾱ x0 + √(1−ᾱ) ε, a weighted sum of ε
with weights w is the same weighted sum of x0 plus (1 − Σ w) x_t / √ᾱ: exact, and free of the
division by √(1−ᾱ) that ε needs. Where Σ w ≠ 1 (``poce`` with several experts, ``poe``) that term
is what the ε form implies; it is large where ᾱ is small, and the benchmark shows what it costs.
``mix_denoised`` is the same mixture for any x = s·x0 + σ·ε, such as ComfyUI's samplers (s = 1 for ε and
v models, s = 1 − σ for flow matching), whose guiders return x0.
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


def mix(terms: Sequence[tuple[float, torch.Tensor]], x_t: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """The clean estimate of the ε mixture Σ w·ε(x0) given as (w, x0) pairs at noisy sample ``x_t`` with ᾱ_t = ``alpha_bar``."""
    return mix_denoised(terms, x_t, math.sqrt(alpha_bar))


def compose(mode: str, alphas: Sequence[float], with_memory: Sequence[torch.Tensor],
            null: Sequence[torch.Tensor], x_t: torch.Tensor, alpha_bar: float) -> torch.Tensor:
    """The clean chunk [T,4,H,W] PoCE composes from each expert's clean predictions with and without its memory."""
    w_memory, w_null = weights(mode, alphas)
    terms = [*zip(w_memory, with_memory), *zip(w_null, null)]
    return mix(terms, x_t, alpha_bar)
