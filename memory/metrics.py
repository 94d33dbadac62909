"""Per-frame image and depth metrics for the benchmarks, a frame grid for their plots, and the machine they ran on."""
from __future__ import annotations

import math
import os
import platform

import kornia
import torch

# Identical frames have infinite PSNR; capping the MSE keeps means over frames finite (100 dB).
MIN_MSE = 1e-10
SSIM_WINDOW = 11
HISTOGRAM_BINS = 8
# below any frame with content (one 8-bit step across a 64x64 frame: ~1e-5), above a flat one's rounding (~1e-9)
FLAT_SHARPNESS = 1e-6


def _check_pair(pred: torch.Tensor, target: torch.Tensor, ndim: int, name: str) -> None:
    if pred.shape != target.shape or pred.ndim != ndim:
        raise ValueError(f"{name}: prediction {list(pred.shape)} and target {list(target.shape)} must have the same "
                         f"{ndim}-dimensional shape; pass frames as {'[N,H,W,3]' if ndim == 4 else '[N,H,W]'}.")


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB [N] of each frame of ``pred`` vs ``target`` (both [N,H,W,3] in 0..1), capped at 100 dB."""
    _check_pair(pred, target, 4, "psnr")
    mse = ((pred.float() - target.float()) ** 2).flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(MIN_MSE))


def masked_psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PSNR in dB [N] over the pixels where ``mask`` [N,H,W] is true (frames [N,H,W,3] in 0..1); nan for an empty mask."""
    _check_pair(pred, target, 4, "masked_psnr")
    if tuple(mask.shape) != tuple(pred.shape[:3]):
        raise ValueError(f"masked_psnr: mask {tuple(mask.shape)} must be [N,H,W] of the frames {tuple(pred.shape)}.")
    weight = mask.float()[..., None].expand_as(pred)
    squared = (pred.float() - target.float()) ** 2 * weight
    mse = squared.flatten(1).sum(1) / weight.flatten(1).sum(1)
    return -10 * torch.log10(mse.clamp_min(MIN_MSE))


def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean SSIM [N] (kornia, 11x11 Gaussian window) of each frame of ``pred`` vs ``target`` ([N,H,W,3] in 0..1)."""
    _check_pair(pred, target, 4, "ssim")
    as_images = lambda x: x.float().movedim(-1, 1)  # noqa: E731
    return kornia.metrics.ssim(as_images(pred), as_images(target), SSIM_WINDOW).flatten(1).mean(1)


def depth_absrel(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """AbsRel [N], mean |pred - target| / target over pixels with valid ground truth (target > 0); nan if none."""
    _check_pair(pred, target, 3, "depth_absrel")
    valid = target > 0
    error = torch.where(valid, (pred.float() - target.float()).abs() / target.float().clamp_min(1e-6), 0.0)
    return error.flatten(1).sum(1) / valid.flatten(1).sum(1)


def _check_frames(frames: torch.Tensor, name: str) -> None:
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"{name}: frames must be [N,H,W,3] RGB in 0..1 with N >= 1, got {list(frames.shape)}.")


def colour_histogram(frames: torch.Tensor, bins: int = HISTOGRAM_BINS) -> torch.Tensor:
    """Joint RGB histogram [bins,bins,bins] (red, green, blue) of all pixels of frames [N,H,W,3] in 0..1, summing to 1."""
    _check_frames(frames, "colour_histogram")
    # floor(x * bins) puts 1.0 in a bin of its own: clamp it into the top bin, as values just below it
    index = (frames.float().clamp(0, 1) * bins).long().clamp_max(bins - 1).reshape(-1, 3)
    flat = (index[:, 0] * bins + index[:, 1]) * bins + index[:, 2]
    counts = torch.bincount(flat, minlength=bins ** 3).float()
    return (counts / counts.sum()).view(bins, bins, bins)


def histogram_intersection(frames: torch.Tensor, reference: torch.Tensor, bins: int = HISTOGRAM_BINS) -> float:
    """Sum of the elementwise minimum of the colour histograms of frames [N,H,W,3] and reference [M,H',W',3] (0..1).

    1 when both hold the same colours in the same proportions, 0 when they share no histogram bin; the two
    sets may differ in frame count and size, as the histograms are normalised.
    """
    return float(torch.minimum(colour_histogram(frames, bins), colour_histogram(reference, bins)).sum())


def sharpness(frames: torch.Tensor) -> torch.Tensor:
    """Mean absolute image gradient [N] of each frame of frames [N,H,W,3] in 0..1 (normalised Sobel, x and y, all channels)."""
    _check_frames(frames, "sharpness")
    # replicated borders: a flat frame has no gradient at its edges either
    gradient = kornia.filters.spatial_gradient(frames.float().movedim(-1, 1), mode="sobel", normalized=True)
    return gradient.abs().flatten(1).mean(1)


def sharpness_ratio(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean sharpness of pred [N,H,W,3] over that of target [M,H,W,3]: < 1 blurrier, > 1 sharper; nan if target is flat."""
    reference = float(sharpness(target).mean())
    return float(sharpness(pred).mean()) / reference if reference > FLAT_SHARPNESS else math.nan


def frame_grid(frames: torch.Tensor, columns: int, gap: int = 2) -> torch.Tensor:
    """uint8 image [rows*(H+gap), columns*(W+gap), 3] of frames [N,H,W,3] in 0..1, row-major, white gaps."""
    n, h, w, _ = frames.shape
    rows = -(-n // columns)
    grid = torch.full((rows * (h + gap), columns * (w + gap), 3), 255, dtype=torch.uint8)
    pixels = (frames.float().clamp(0, 1) * 255).round().to(torch.uint8)
    for i, frame in enumerate(pixels):
        r, c = divmod(i, columns)
        grid[r * (h + gap):r * (h + gap) + h, c * (w + gap):c * (w + gap) + w] = frame
    return grid


def machine_info() -> dict:
    """Platform, CPU count, torch version and thread count: what a timing or benchmark figure was measured on."""
    return {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "python": platform.python_version()}
