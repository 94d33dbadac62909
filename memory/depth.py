"""Metric depth maps as a value that crosses node boundaries, and their display form."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DepthMaps:
    """Metric z-depth ``metres`` [T,H,W] float32 (0 = invalid or sky), the form the patch memory lifts from."""

    metres: torch.Tensor

    def __post_init__(self) -> None:
        if self.metres.ndim != 3:
            raise ValueError(f"depth: expected [T,H,W] metric depth, got shape {list(self.metres.shape)}.")

    def __len__(self) -> int:
        return int(self.metres.shape[0])


def depth_to_image(depth: torch.Tensor) -> torch.Tensor:
    """Display image [T,H,W,3] in 0..1 of metric depth [T,H,W]: inverse depth scaled by the batch's nearest point, 0 where invalid.

    Inverse depth keeps near structure readable, and one scale for the whole batch keeps a video from flickering.
    """
    valid = depth > 0
    inv = torch.where(valid, 1.0 / depth.float().clamp_min(1e-6), torch.zeros_like(depth, dtype=torch.float32))
    peak = inv.max() if valid.any() else torch.tensor(1.0)
    return (inv / peak).clamp(0, 1).unsqueeze(-1).expand(*depth.shape, 3).contiguous()


def depth_from_image(image: torch.Tensor, near: float, far: float, inverse: bool = True) -> DepthMaps:
    """Metric depth from a display depth IMAGE [T,H,W,C] in 0..1 (e.g. a depth-estimator node), mapped into [near, far] metres.

    ``inverse=True`` reads the image as normalised inverse depth (white = near), the usual output of
    monocular estimators; otherwise as normalised depth (white = far). Black pixels stay invalid (0).
    """
    if image.ndim != 4:
        raise ValueError(f"depth_image: expected an IMAGE [B,H,W,C], got shape {list(image.shape)}.")
    if not 0 < near < far:
        raise ValueError(f"near/far: need 0 < near < far, got near={near}, far={far}.")
    x = image[..., :3].float().mean(-1).clamp(0, 1)
    if inverse:
        metres = 1.0 / (1.0 / far + x * (1.0 / near - 1.0 / far))
    else:
        metres = near + x * (far - near)
    return DepthMaps(torch.where(x > 0, metres, torch.zeros_like(metres)))
