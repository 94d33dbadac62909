"""Mosaics: known frames warped into new cameras through the patch memory's renderer (MosaicMem's warped latent)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .geometry import lift_frame, splat_grids
from .patch_memory import PatchMemory, render, stack_renderings
from .rgbd import encode_rgbd

MOSAIC_CHANNELS = 6


@dataclass(frozen=True)
class Mosaic:
    """Per-target warped RGB-D: ``rgb`` [T,H,W,3] 0..1, ``depth`` [T,H,W] metres, ``mask`` [T,H,W] (1 = covered)."""

    rgb: torch.Tensor
    depth: torch.Tensor
    mask: torch.Tensor

    @classmethod
    def empty(cls, frames: int, height: int, width: int) -> "Mosaic":
        """The null mosaic: nothing covered."""
        return cls(torch.zeros(frames, height, width, 3), torch.zeros(frames, height, width),
                   torch.zeros(frames, height, width))

    def channels(self, depth_known: bool = True) -> torch.Tensor:
        """Network input [T,6,H,W]: RGB-D encoding and coverage masks for colour and depth, zero where uncovered."""
        x = encode_rgbd(self.rgb, self.depth) * self.mask[:, None]
        depth_mask = self.mask if depth_known else torch.zeros_like(self.mask)
        x[:, 3] *= depth_mask
        return torch.cat([x, self.mask[:, None], depth_mask[:, None]], 1)


def memory_mosaic(memory: PatchMemory, K: torch.Tensor, targets: torch.Tensor, height: int, width: int,
                  max_patches: int = 4096) -> Mosaic:
    """The memory rendered into each target camera ``targets`` [T,4,4]."""
    if len(memory) == 0:
        return Mosaic.empty(len(targets), height, width)
    rgb, mask, depth = stack_renderings([render(memory, K, pose, height, width, max_patches) for pose in targets])
    return Mosaic(rgb, depth, mask)


def warp_frames(rgb: torch.Tensor, depth: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor,
                targets: torch.Tensor) -> Mosaic:
    """Source frames rgb [S,H,W,3] (0..1), depth [S,H,W], c2w [S,4,4] splatted into each target camera [T,4,4].

    Uses the patch memory's splat (adaptive footprints, z-buffer) on the frames as pixel grids: the
    same picture a memory of just these frames renders, without building one per chunk.
    """
    height, width = depth.shape[-2:]
    if len(rgb) == 0:
        return Mosaic.empty(len(targets), height, width)
    points, valid = zip(*(lift_frame(d, K, pose) for d, pose in zip(depth, c2w)))
    points, valid = torch.stack(points), torch.stack(valid)
    views = [splat_grids(points, valid, rgb.float(), K, pose, height, width) for pose in targets]
    return Mosaic(*(torch.stack([getattr(v, k) for v in views]) for k in ("rgb", "depth", "mask")))
