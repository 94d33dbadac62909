"""Projection, lifting and z-buffered forward splatting (kornia for the camera maths).

Pixel (row i, col j) has its centre at (u, v) = (j + 0.5, i + 0.5), matching ``K`` of ``come-episode/1``.
Depth is z-depth along the optical axis in metres; 0 marks an invalid pixel (e.g. sky).
"""
from __future__ import annotations

from dataclasses import dataclass

import kornia
import torch

NEAR = 1e-3
# Relative depth slack per squared pixel of spill in the splat z-test (see splat).
SPLAT_SLACK = 0.05
# Largest splat square in pixels: beyond it a magnified surface is left open rather than smeared.
MAX_FOOTPRINT = 8


def pixel_centres(height: int, width: int, device: torch.device | None = None) -> torch.Tensor:
    """Pixel-centre coordinates [H,W,2] as (u, v) = (col + 0.5, row + 0.5)."""
    grid = kornia.geometry.create_meshgrid(height, width, normalized_coordinates=False, device=device)[0]
    return grid + 0.5


def lift(uv: torch.Tensor, depth: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor) -> torch.Tensor:
    """World points [...,3] of pixels ``uv`` [...,2] at z-depth ``depth`` [...] seen by camera ``K`` [3,3], ``c2w`` [4,4]."""
    cam = kornia.geometry.camera.unproject_points(uv, depth.unsqueeze(-1), K.to(uv), normalize=False)
    flat = cam.reshape(1, -1, 3)
    return kornia.geometry.linalg.transform_points(c2w.to(uv)[None], flat).reshape(cam.shape)


def lift_batch(uv: torch.Tensor, depth: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor) -> torch.Tensor:
    """World points [N,P,3] of per-item pixels ``uv`` [N,P,2], depth [N,P], intrinsics [N,3,3], poses [N,4,4]."""
    cam = kornia.geometry.camera.unproject_points(uv, depth.unsqueeze(-1), K[:, None], normalize=False)
    return kornia.geometry.linalg.transform_points(c2w, cam)


def world_to_camera(points: torch.Tensor, c2w: torch.Tensor) -> torch.Tensor:
    """Points [...,3] from world into the camera frame of ``c2w`` [4,4]."""
    w2c = kornia.geometry.linalg.inverse_transformation(c2w[None].to(points))
    return kornia.geometry.linalg.transform_points(w2c, points.reshape(1, -1, 3)).reshape(points.shape)


def project(points: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates [...,2] and z-depth [...] of world points [...,3] in camera ``K``, ``c2w``."""
    cam = world_to_camera(points, c2w)
    z = cam[..., 2]
    safe = torch.where((z.abs() < NEAR)[..., None], torch.full_like(cam, NEAR), cam)
    uv = kornia.geometry.camera.project_points(safe, K.to(points))
    return uv, z


@dataclass(frozen=True)
class Rendering:
    """A rendered view: ``rgb`` [H,W,3] float 0..1, ``mask`` [H,W] coverage in {0,1}, ``depth`` [H,W] metres (0 = empty)."""

    rgb: torch.Tensor
    mask: torch.Tensor
    depth: torch.Tensor


def splat(
    points: torch.Tensor, colors: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor, height: int, width: int,
    far: float = float("inf"), z_bias: torch.Tensor | None = None, footprint: torch.Tensor | None = None,
) -> Rendering:
    """Forward-splat world points [N,3] with colours [N,3] into a camera with a z-buffer.

    Each point covers the ``footprint`` x ``footprint`` pixels nearest to its sub-pixel position
    (default 2, so slightly magnified surfaces have no cracks); the nearest point wins every pixel.
    The depth test uses ``z * (1 + SPLAT_SLACK * d^2)`` with d the pixel distance from the point, so
    on a sloped surface the point that lands on a pixel beats its neighbour's spill-over (otherwise the
    image shifts by up to a pixel), while true occluders, nearer by more than the slack, still win.
    ``z_bias`` [N] (optional, >= 0) handicaps points in the depth test by that relative amount, e.g. to
    prefer the source view most like the target where several show the same surface; output depth is
    unbiased. ``footprint`` [N] (optional, int >= 1) sets each point's square size in pixels.
    """
    uv, z = project(points, K, c2w)
    return _splat_projected(uv, z, colors, height, width, far, z_bias, footprint)


def splat_grids(
    points: torch.Tensor, valid: torch.Tensor, colors: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor,
    height: int, width: int, z_bias: torch.Tensor | None = None,
) -> Rendering:
    """Forward-splat pixel grids (frames or patches) points [n,h,w,3], valid [n,h,w], colours [n,h,w,3], z_bias [n,h,w].

    Each point's square covers the gap to its grid neighbours as seen from the target, so surfaces
    magnified by the new view (closer, or seen face-on after a grazing source view) stay closed.
    ``c2w`` [4,4] renders one view; [V,4,4] renders V views in one z-buffer pass, a Rendering of
    [V,H,W,...] tensors equal to V single-view renderings.
    """
    if c2w.ndim == 2:
        uv, z = project(points, K, c2w)
        footprint = grid_footprint(uv, valid)
        bias = None if z_bias is None else z_bias[valid]
        return _splat_projected(uv[valid], z[valid], colors[valid], height, width, float("inf"), bias, footprint[valid])
    parts = [project(points, K, pose) for pose in c2w]
    uv = torch.cat([u[valid] for u, _ in parts])
    z = torch.cat([d[valid] for _, d in parts])
    footprint = torch.cat([grid_footprint(u, valid)[valid] for u, _ in parts])
    count = int(valid.sum())
    view = torch.arange(len(c2w)).repeat_interleave(count)
    bias = None if z_bias is None else z_bias[valid].repeat(len(c2w))
    return _splat_projected(uv, z, colors[valid].repeat(len(c2w), 1), height, width, float("inf"), bias, footprint,
                            view, len(c2w))


def grid_footprint(uv: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Splat size [n,h,w] (pixels, 2..MAX_FOOTPRINT) of grid points projected to ``uv`` [n,h,w,2]: their largest gap to a valid grid neighbour."""
    gap = torch.zeros(valid.shape)
    for dim in (1, 2):
        step = (uv.narrow(dim, 1, uv.shape[dim] - 1) - uv.narrow(dim, 0, uv.shape[dim] - 1)).abs().amax(-1)
        both = valid.narrow(dim, 1, valid.shape[dim] - 1) & valid.narrow(dim, 0, valid.shape[dim] - 1)
        step = torch.where(both & torch.isfinite(step), step, torch.zeros_like(step))
        gap.narrow(dim, 1, gap.shape[dim] - 1).copy_(torch.maximum(gap.narrow(dim, 1, gap.shape[dim] - 1), step))
        gap.narrow(dim, 0, gap.shape[dim] - 1).copy_(torch.maximum(gap.narrow(dim, 0, gap.shape[dim] - 1), step))
    return torch.ceil(gap + 0.5).clamp(2, MAX_FOOTPRINT).long()


def _splat_projected(
    uv: torch.Tensor, z: torch.Tensor, colors: torch.Tensor, height: int, width: int, far: float,
    z_bias: torch.Tensor | None, footprint: torch.Tensor | None, view: torch.Tensor | None = None,
    views: int | None = None,
) -> Rendering:
    """The z-buffered splat of :func:`splat` for points already projected to ``uv`` [N,2] at depth ``z`` [N].

    With ``view`` [N] (which of ``views`` target views each point is projected into) the views share
    one pass: each has its own stretch of the z-buffer, and the result has a leading view axis.
    """
    keep = (z > NEAR) & (z < far) & torch.isfinite(uv).all(-1)
    uv, z, colors = uv[keep], z[keep], colors[keep]
    view = torch.zeros(len(z), dtype=torch.long) if view is None else view[keep]
    handicap = torch.ones_like(z) if z_bias is None else 1 + z_bias[keep]
    sizes = torch.full_like(z, 2, dtype=torch.long) if footprint is None else footprint[keep]
    px_parts, zz_parts, src_parts = [torch.zeros(0, 2, dtype=torch.long)], [torch.zeros(0)], [torch.zeros(0, dtype=torch.long)]
    for size in sizes.unique().tolist():
        members = (sizes == size).nonzero().flatten()
        offsets = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="xy"), -1).reshape(-1, 2)
        base = torch.floor(uv[members] + 0.5 - size / 2).long()
        px = base[:, None, :] + offsets[None]
        spill = ((px + 0.5 - uv[members][:, None]) ** 2).sum(-1)
        zz = (z[members] * handicap[members])[:, None] * (1 + SPLAT_SLACK * spill)
        px_parts.append(px.reshape(-1, 2))
        zz_parts.append(zz.reshape(-1))
        src_parts.append(members[:, None].expand(-1, size * size).reshape(-1))
    px, zz, src = torch.cat(px_parts), torch.cat(zz_parts), torch.cat(src_parts)
    inside = (px[:, 0] >= 0) & (px[:, 0] < width) & (px[:, 1] >= 0) & (px[:, 1] < height)
    px, zz, src = px[inside], zz[inside], src[inside]
    lin = view[src] * (height * width) + px[:, 1] * width + px[:, 0]
    pixels = (views or 1) * height * width
    zbuf = torch.full((pixels,), float("inf"), device=uv.device)
    zbuf.scatter_reduce_(0, lin, zz, reduce="amin")
    win = zz <= zbuf[lin]
    rgb = torch.zeros(pixels, 3, device=uv.device)
    rgb[lin[win]] = colors[src[win]].float()
    depth = torch.zeros(pixels, device=uv.device)
    depth[lin[win]] = z[src[win]]
    covered = torch.isfinite(zbuf)
    shape = (height, width) if views is None else (views, height, width)
    return Rendering(rgb.reshape(*shape, 3), covered.float().reshape(shape), depth.reshape(shape))


def lift_frame(depth: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World points [H,W,3] of a depth map [H,W] and the validity mask [H,W] (depth > 0)."""
    h, w = depth.shape
    uv = pixel_centres(h, w, depth.device)
    return lift(uv, depth.float(), K.float(), c2w.float()), depth > 0


def backward_warp(
    src_rgb: torch.Tensor, src_depth: torch.Tensor, src_c2w: torch.Tensor,
    dst_depth: torch.Tensor, dst_c2w: torch.Tensor, K: torch.Tensor, occlusion_tol: float = 0.05,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample a source image [H,W,C] where the target's own depth [H,W] lands; returns image [H,W,C] and validity [H,W].

    This is the geometric self-check: with true depth and poses it reproduces the target wherever the
    surface is visible in both views (the source depth [H,W] rejects pixels occluded in the source).
    """
    h, w = dst_depth.shape
    points, valid = lift_frame(dst_depth, K, dst_c2w)
    uv, z = project(points, K.float(), src_c2w.float())
    inside = (z > NEAR) & (uv[..., 0] >= 0) & (uv[..., 0] <= w) & (uv[..., 1] >= 0) & (uv[..., 1] <= h)
    grid = torch.stack([uv[..., 0] / w * 2 - 1, uv[..., 1] / h * 2 - 1], -1)[None]
    img = src_rgb.float().permute(2, 0, 1)[None]
    out = torch.nn.functional.grid_sample(img, grid, mode="bilinear", padding_mode="border", align_corners=False)
    seen = torch.nn.functional.grid_sample(
        src_depth.float()[None, None], grid, mode="nearest", padding_mode="border", align_corners=False
    )[0, 0]
    visible = (seen > 0) & ((seen - z).abs() <= occlusion_tol * z)
    return out[0].permute(1, 2, 0), valid & inside & visible
