"""Mosaics: known frames warped into new cameras through the patch memory's renderer (MosaicMem's warped latent)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .geometry import lift_frame, splat_grids
from .rgbd import encode_rgbd

MOSAIC_CHANNELS = 6


@dataclass(frozen=True)
class Mosaic:
    """Per-target warped RGB-D: ``rgb`` [T,H,W,3] 0..1, ``depth`` [T,H,W] metres, ``mask`` [T,H,W] (1 = covered).

    ``filled`` mosaics carry a guess (the latest frame, repeated) where nothing was warped; the mask
    still marks only what geometry covers, so the network knows which pixels are guesses.
    """

    rgb: torch.Tensor
    depth: torch.Tensor
    mask: torch.Tensor
    filled: bool = False

    @classmethod
    def empty(cls, frames: int, height: int, width: int) -> "Mosaic":
        """The null mosaic: nothing covered."""
        return cls(torch.zeros(frames, height, width, 3), torch.zeros(frames, height, width),
                   torch.zeros(frames, height, width))

    def fill_holes(self, rgb: torch.Tensor, depth: torch.Tensor) -> "Mosaic":
        """This mosaic with uncovered pixels taken from one frame rgb [H,W,3], depth [H,W] (repeat-last)."""
        hole = self.mask[..., None] <= 0
        return Mosaic(torch.where(hole, rgb.float(), self.rgb), torch.where(hole[..., 0], depth.float(), self.depth),
                      self.mask, filled=True)

    def channels(self, depth_known: bool = True) -> torch.Tensor:
        """Network input [T,6,H,W]: RGB-D encoding (zero where unknown) and coverage masks for colour and depth."""
        x = encode_rgbd(self.rgb, self.depth)
        if not self.filled:
            x = x * self.mask[:, None]
        depth_mask = self.mask if depth_known else torch.zeros_like(self.mask)
        if not depth_known:
            x[:, 3] = 0
        return torch.cat([x, self.mask[:, None], depth_mask[:, None]], 1)


def warp_frames(rgb: torch.Tensor, depth: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor,
                targets: torch.Tensor) -> Mosaic:
    """Source frames rgb [S,H,W,3] (0..1), depth [S,H,W], c2w [S,4,4] (in time order) warped into targets [T,4,4].

    Each frame is splatted with the patch memory's splat (adaptive footprints, z-buffer); the latest
    frame takes priority and older ones only fill what it leaves uncovered, so stale lighting and
    coarser, farther views never overwrite the freshest observation.
    """
    height, width = depth.shape[-2:]
    out = Mosaic.empty(len(targets), height, width)
    for frame, frame_depth, pose in zip(rgb.flip(0), depth.flip(0), c2w.flip(0)):
        points, valid = lift_frame(frame_depth, K, pose)
        views = [splat_grids(points[None], valid[None], frame[None].float(), K, target, height, width)
                 for target in targets]
        hole = out.mask <= 0
        out = Mosaic(torch.where(hole[..., None], torch.stack([v.rgb for v in views]), out.rgb),
                     torch.where(hole, torch.stack([v.depth for v in views]), out.depth),
                     torch.where(hole, torch.stack([v.mask for v in views]), out.mask))
    return out
