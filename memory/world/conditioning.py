"""The one place that assembles what a backbone reads besides the noisy targets: context, mosaics and rays.

Training windows, sampling and every memory expert build their network inputs here, so an expert
differs from another only in *which* frames it passes as context and *which* mosaic it renders, and
the null memory ("nothing remembered") is the same for all of them.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..geometry.camera import plucker_rays
from .mosaic import Mosaic
from .rgbd import encode_rgbd


@dataclass(frozen=True)
class Conditioning:
    """Inputs of one chunk: clean ``context`` RGB-D [C,4,H,W], ``mosaic`` [C+T,6,H,W] and Plücker ``rays`` [C+T,6,H,W].

    ``null`` marks the null memory: the context frames are read as pure noise at the maximum noise
    level and no mosaic covers anything, which the backbone was trained to read as "nothing known".
    """

    context: torch.Tensor
    mosaic: torch.Tensor
    rays: torch.Tensor
    null: bool = False

    @property
    def context_frames(self) -> int:
        """How many context frames lead the chunk."""
        return int(self.context.shape[0])

    def without_memory(self) -> "Conditioning":
        """The null memory of this chunk: same cameras and context length, context and mosaic removed."""
        frames, _, height, width = self.mosaic.shape
        return Conditioning(torch.zeros_like(self.context), Mosaic.empty(frames, height, width).channels(), self.rays,
                            null=True)

    def inputs(self, x: torch.Tensor, t: float, top: int, noise: torch.Tensor | None = None) -> tuple:
        """Batched network inputs (sample [1,F,4,H,W], timesteps [1,F], mosaic, rays) for noisy targets ``x`` [T,4,H,W] at ``t``.

        Clean context frames carry timestep 0; a null context is ``noise`` (pure, the last training
        timestep's input) at timestep ``top``.
        """
        context = self.context
        if self.null:
            context = noise if noise is not None else torch.randn_like(self.context)
        level = float(top) if self.null else 0.0
        timesteps = torch.cat([torch.full((len(context),), level), torch.full((len(x),), float(t))])
        return torch.cat([context, x])[None], timesteps[None], self.mosaic[None], self.rays[None]


def build_conditioning(context_rgb: torch.Tensor, context_depth: torch.Tensor, context_c2w: torch.Tensor,
                       target_c2w: torch.Tensor, K: torch.Tensor, mosaic: Mosaic,
                       depth_known: bool = True) -> Conditioning:
    """Conditioning of targets ``target_c2w`` [T,4,4] on context frames rgb [C,H,W,3] (0..1), depth [C,H,W], c2w [C,4,4].

    ``mosaic`` holds one warped view per target; context frames get no mosaic (they are given). Rays
    are relative to the last context camera (the first target's without context), so the network
    never sees absolute simulator coordinates. ``depth_known=False`` hides the mosaic's depth (the
    depth pass of initial frames, and training's depth dropout).
    """
    height, width = mosaic.mask.shape[-2:]
    c2w = torch.cat([context_c2w, target_c2w])
    reference = c2w[len(context_c2w) - 1 if len(context_c2w) else 0]
    rays = plucker_rays(c2w, K, reference, height, width)
    channels = torch.cat([Mosaic.empty(len(context_c2w), height, width).channels(), mosaic.channels(depth_known)])
    return Conditioning(encode_rgbd(context_rgb, context_depth), channels, rays)
