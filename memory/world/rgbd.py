"""The network's RGB-D encoding: colours and log-depth in [-1, 1], channels first; and the depth loss in that encoding."""
from __future__ import annotations

import math

import torch

NEAR_M = 0.1
FAR_M = 40.0
_LOG_NEAR, _LOG_FAR = math.log(NEAR_M), math.log(FAR_M)


def encode_rgbd(rgb: torch.Tensor, depth: torch.Tensor) -> torch.Tensor:
    """[...,4,H,W] in [-1,1] from rgb [...,H,W,3] in 0..1 and metric z-depth [...,H,W] (0 = sky, encoded as far).

    Log-depth makes equal errors equal relative errors (what AbsRel measures) across near and far.
    """
    metres = torch.where(depth > 0, depth.float(), torch.full_like(depth, FAR_M, dtype=torch.float32))
    d = (metres.clamp(NEAR_M, FAR_M).log() - _LOG_NEAR) / (_LOG_FAR - _LOG_NEAR) * 2 - 1
    return torch.cat([rgb.float().movedim(-1, -3) * 2 - 1, d.unsqueeze(-3)], dim=-3)


def decode_rgbd(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """rgb [...,H,W,3] in 0..1 and metric depth [...,H,W] (0 where the model predicts the far plane, i.e. sky)."""
    rgb = ((x[..., :3, :, :].clamp(-1, 1) + 1) / 2).movedim(-3, -1)
    d = (x[..., 3, :, :].clamp(-1, 1) + 1) / 2 * (_LOG_FAR - _LOG_NEAR) + _LOG_NEAR
    metres = d.exp()
    return rgb, torch.where(metres > FAR_M * 0.95, torch.zeros_like(metres), metres)


# log-depth overshoot (2.0: e^2, about 7x the true depth) past which the loss grows linearly, not exponentially (bounded gradients)
OVERSHOOT_LINEAR_FROM = 2.0


def depth_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per-pixel loss [...] of encoded log-depth ``pred`` vs ``target`` (channel 3 of :func:`encode_rgbd`, [...]).

    Surfaces cost their relative error |pred/true - 1| (AbsRel), in encoded units so that small errors
    cost the same as an L1 on log-depth: too far is unbounded there, too near at most 1, so where a
    pixel may be a near wall or sky the minimum leans to the wall. Sky (target at the far plane) costs
    the L1 of its encoding.
    """
    scale = (_LOG_FAR - _LOG_NEAR) / 2
    delta = (pred - target) * scale
    over = torch.expm1(delta.clamp(max=OVERSHOOT_LINEAR_FROM)) + math.exp(OVERSHOOT_LINEAR_FROM) * (delta - OVERSHOOT_LINEAR_FROM).clamp_min(0)
    relative = torch.where(delta > 0, over, -torch.expm1(delta.clamp(max=0))) / scale
    return torch.where(target >= 1, (pred - target).abs(), relative)
