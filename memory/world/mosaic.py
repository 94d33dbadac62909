"""Mosaics: known frames warped into new cameras through the patch memory's renderer (MosaicMem's warped latent)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..geometry.projection import lift_frame, splat_grids
from .rgbd import encode_rgbd

MOSAIC_CHANNELS = 6
# far enough that no camera move in a scene shifts it by a pixel: a direction, not a place
SKY_DISTANCE_M = 1e5


@dataclass(frozen=True)
class Mosaic:
    """Per-target warped RGB-D: ``rgb`` [T,H,W,3] 0..1, ``depth`` [T,H,W] metres, ``mask`` [T,H,W] (> 0 = covered, 1 = observed).

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
            x = x * (self.mask[:, None] > 0)
        depth_mask = self.mask if depth_known else torch.zeros_like(self.mask)
        if not depth_known:
            x[:, 3] = 0
        return torch.cat([x, self.mask[:, None], depth_mask[:, None]], 1)


def warp_frames(rgb: torch.Tensor, depth: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor,
                targets: torch.Tensor, confidence: torch.Tensor | None = None) -> Mosaic:
    """Source frames rgb [S,H,W,3] (0..1), depth [S,H,W], c2w [S,4,4] (in time order) warped into targets [T,4,4].

    Each frame is splatted with the patch memory's splat (adaptive footprints, z-buffer); the latest
    frame takes priority and older ones only fill what it leaves uncovered, so stale lighting and
    coarser, farther views never overwrite the freshest observation. Depth 0 (sky) is at infinity: it
    moves with the camera's rotation only and shows wherever no surface does, with depth 0 and mask 1.
    ``confidence`` [S] (default 1) is the mask value of each source's pixels, e.g. lower for generated frames.
    """
    height, width = depth.shape[-2:]
    out = Mosaic.empty(len(targets), height, width)
    surfaces = [lift_frame(d, K, pose) for d, pose in zip(depth.flip(0), c2w.flip(0))]
    confidence = torch.ones(len(rgb)) if confidence is None else confidence.float()
    skies = [lift_frame(torch.where(d > 0, 0.0, SKY_DISTANCE_M), K, pose) for d, pose in zip(depth.flip(0), c2w.flip(0))]
    # every frame's surfaces before any sky: sky is behind everything. Sky gets its own splat so its
    # footprints are not stretched by the parallax of the surfaces it borders.
    for grids, is_sky in ((surfaces, False), (skies, True)):
        for frame, (points, valid), value in zip(rgb.flip(0).float(), grids, confidence.flip(0)):
            if not bool(valid.any()) or not len(targets):
                continue
            views = splat_grids(points[None], valid[None], frame[None], K, targets, height, width)
            fill = (out.mask <= 0) & (views.mask > 0)
            out.rgb[fill] = views.rgb[fill]
            out.depth[fill] = 0.0 if is_sky else views.depth[fill]
            out.mask[fill] = value
    return out
