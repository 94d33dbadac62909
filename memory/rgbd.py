"""The network's RGB-D encoding: colours and log-depth in [-1, 1], channels first."""
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
