"""Metric depth maps as a value that crosses node boundaries, and their display form."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..limits import check_image_size


@dataclass(frozen=True)
class DepthMaps:
    """Metric z-depth ``metres`` [T,H,W] float32 (0 = invalid or sky), the form the patch memory lifts from."""

    metres: torch.Tensor

    def __post_init__(self) -> None:
        if self.metres.ndim != 3:
            raise ValueError(f"depth: expected [T,H,W] metric depth, got shape {list(self.metres.shape)}.")

    def __len__(self) -> int:
        return int(self.metres.shape[0])


def check_metric_depth(depth: object, name: str) -> torch.Tensor:
    """Metric z-depth [T,H,W] as float32 if finite, >= 0 and valid somewhere, else a ValueError naming ``name``."""
    metres = depth.metres if isinstance(depth, DepthMaps) else depth
    if not isinstance(metres, torch.Tensor) or not metres.is_floating_point() or metres.ndim != 3:
        got = f"{metres.dtype} {list(metres.shape)}" if isinstance(metres, torch.Tensor) else type(metres).__name__
        raise ValueError(f"{name}: expected float metric depth maps [T,H,W] in metres, got {got}; "
                         "connect a metric_depth output (Load Episode, Metric Depth from Image).")
    if metres.shape[0] == 0:
        raise ValueError(f"{name}: holds no depth map; connect one depth map per frame.")
    check_image_size(int(metres.shape[1]), int(metres.shape[2]), name)
    metres = metres.float()
    lo, hi = metres.aminmax()
    if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
        raise ValueError(f"{name}: contains NaN or inf; mark invalid pixels with 0 instead.")
    if lo < 0:
        raise ValueError(f"{name}: contains negative values; depth is metric z-depth >= 0 (0 = invalid).")
    if hi == 0:
        raise ValueError(f"{name}: every pixel is 0 (invalid); connect metric depth maps, not an empty mask.")
    return metres


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
    Colour images are read as the mean of their first three channels; a fourth (alpha) is ignored.
    """
    x = _depth_image_values(image)
    _check_near_far(near, far)
    if inverse:
        metres = 1.0 / (1.0 / far + x * (1.0 / near - 1.0 / far))
    else:
        metres = near + x * (far - near)
    return DepthMaps(torch.where(x > 0, metres, torch.zeros_like(metres)))


def _depth_image_values(image: object) -> torch.Tensor:
    """The grey values [T,H,W] of a depth IMAGE [T,H,W,C] (1 to 4 channels, finite, 0..1), else a ValueError naming ``depth_image``."""
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or image.shape[0] == 0:
        got = list(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"depth_image: expected an IMAGE [B,H,W,C] with at least one image, got {got}; "
                         "connect an IMAGE output such as a depth estimator's.")
    if not 1 <= image.shape[-1] <= 4:
        raise ValueError(f"depth_image: has {image.shape[-1]} channels; a depth image has 1 (grey), 3 (RGB) or 4 (RGBA).")
    check_image_size(int(image.shape[1]), int(image.shape[2]), "depth_image")
    if not image.is_floating_point():
        raise ValueError(f"depth_image: must be float values in 0..1, got dtype {image.dtype}.")
    x = image[..., :3].float().mean(-1)
    lo, hi = x.aminmax()
    if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
        raise ValueError("depth_image: contains NaN or inf pixels; fix the node that made it.")
    if lo < 0 or hi > 1:
        raise ValueError(f"depth_image: values must lie in 0..1, got {float(lo):.3g}..{float(hi):.3g}; "
                         "normalise the depth image first.")
    return x


def _check_near_far(near: float, far: float) -> None:
    """ValueError naming ``near`` or ``far`` unless 0 < near < far, both finite metres."""
    for name, value in (("near", near), ("far", far)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name}: must be a positive finite number of metres, got {value!r}.")
    if not near < far:
        raise ValueError(f"near/far: need near < far, got near={near}, far={far}; make far larger than near.")
