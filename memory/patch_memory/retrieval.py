"""Retrieve the patches a target camera needs and render them by z-buffered forward splatting.

Retrieval has two stages so that the cost after it is bounded whatever the memory size:

1. Culling: large memories first take only the patches in grid cells under the frustum's xy bounds
   (``memory.index``, see spatial_index.py), so the cost does not grow with the whole memory; then
   bounding spheres are tested against the four side planes, the near plane and ``max_distance``.
2. Coverage-greedy choice among the survivors: each is assigned to the coarse screen cell (one target
   patch, ``p`` x ``p`` pixels) its centre projects to; within a cell candidates are ranked front surface
   first (log target depth) with a small penalty for a different viewing angle or resolution than the
   target's; a cell keeps candidates in rank order until their projected area reaches COVER_FACTOR
   times the cell area (at most MAX_PER_CELL). The global budget then takes every cell's first choice
   (those seen most like the target first), then every cell's second, and so on, until ``max_patches``.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

from ..geometry.camera import CameraPath, require_path, validate_cameras
from ..geometry.projection import NEAR, Rendering, splat_grids
from ..limits import MAX_PATCHES, check_count, check_image_size
from .patches import PatchMemory, check_memory

COVER_FACTOR = 3.0
MAX_PER_CELL = 32
VIEW_PENALTY = 0.1
# Where several retrieved patches show the same surface, the splat's depth test prefers the one seen
# most like the target (appearance is view-dependent): a relative handicap of SPLAT_VIEW_BIAS per unit
# of _view_cost, capped so that a real occluder (nearer by more than the cap) still wins.
SPLAT_VIEW_BIAS = 0.2
MAX_VIEW_HANDICAP = 0.1
DEFAULT_MAX_PATCHES = 4096
DEFAULT_MAX_DISTANCE = 20.0
# Below this many patches a full scan is as fast as the grid index (measured on 2 CPU cores: equal at
# 6.5e4 patches, 7 ms; at 2.6e5 the index takes 7 ms and the scan 27 ms).
INDEX_MIN_PATCHES = 65536
# Pixels (frames x height x width) of one rendered path: its outputs take about 36 bytes per pixel
# (images, mask, depth and its display form), so this caps them near 10 GB (e.g. 1000 frames of 512x512).
MAX_RENDER_PIXELS = 2 ** 28


def retrieve(
    memory: PatchMemory, K: torch.Tensor, c2w: torch.Tensor, height: int, width: int,
    max_patches: int = DEFAULT_MAX_PATCHES, max_distance: float = DEFAULT_MAX_DISTANCE,
) -> torch.Tensor:
    """Indices (LongTensor, ascending) of at most ``max_patches`` patches covering the view of camera K [3,3], c2w [4,4]."""
    _check_view(memory, K, c2w, height, width, max_patches, max_distance)
    K, c2w = K.float(), c2w.float()
    rot, eye = c2w[:3, :3], c2w[:3, 3]
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    pool = _near_frustum(memory, K, c2w, height, width, max_distance)
    cam = memory.centres[pool] @ rot - eye @ rot
    x, y, z, r = cam[:, 0], cam[:, 1], cam[:, 2], memory.radii[pool]
    keep = (z + r > NEAR) & (z - r < max_distance)
    for coord, lo, hi in ((x, -cx / fx, (width - cx) / fx), (y, -cy / fy, (height - cy) / fy)):
        keep &= (coord - lo * z) >= -r * (1 + lo * lo) ** 0.5
        keep &= (hi * z - coord) >= -r * (1 + hi * hi) ** 0.5
    candidates = pool[keep]
    x, y, z, r = x[keep], y[keep], z[keep], r[keep]
    if len(candidates) <= max_patches:
        return candidates
    z = z.clamp_min(NEAR)
    p = memory.patch_size
    cols = -(-width // p)
    u = (fx * x / z + cx).clamp(0, width - 1e-3)
    v = (fy * y / z + cy).clamp(0, height - 1e-3)
    cell = (v // p).long() * cols + (u // p).long()
    cost = _view_cost(memory, candidates, eye)
    rank = torch.log(z) + VIEW_PENALTY * cost
    by_rank = torch.argsort(rank)
    order = by_rank[torch.sort(cell[by_rank], stable=True).indices]
    cell_sorted = cell[order]
    area = (2 * (r[order] * fx / z[order]) ** 2).clamp_max(COVER_FACTOR * p * p)
    covered_before = torch.cumsum(area, 0) - area
    position = torch.arange(len(order))
    first = torch.ones_like(cell_sorted, dtype=torch.bool)
    first[1:] = cell_sorted[1:] != cell_sorted[:-1]
    start = torch.cummax(torch.where(first, position, torch.zeros_like(position)), 0).values
    within = position - start
    wanted = ((covered_before - covered_before[start]) < COVER_FACTOR * p * p) & (within < MAX_PER_CELL)
    chosen, within = order[wanted], within[wanted]
    by_cost = torch.argsort(cost[chosen])
    budget = by_cost[torch.sort(within[by_cost], stable=True).indices[:max_patches]]
    return candidates[chosen[budget]].sort().values


def _near_frustum(
    memory: PatchMemory, K: torch.Tensor, c2w: torch.Tensor, height: int, width: int, max_distance: float,
) -> torch.Tensor:
    """Indices of patches that may lie in the frustum: all of a small memory, else a grid query of its xy bounds."""
    if len(memory) < INDEX_MIN_PATCHES or not max_distance < float("inf"):
        return torch.arange(len(memory))
    corners = torch.tensor([[0.0, 0.0], [width, 0.0], [0.0, height], [width, height]])
    rays = torch.cat([(corners - K[:2, 2]) / K.diagonal()[:2], torch.ones(4, 1)], -1) * max_distance
    hull = torch.cat([c2w[:3, 3][None], rays @ c2w[:3, :3].T + c2w[:3, 3]])[:, :2]
    return memory.index.query(hull.amin(0), hull.amax(0))


def _view_cost(memory: PatchMemory, index: torch.Tensor, eye: torch.Tensor) -> torch.Tensor:
    """How differently [n] each patch was seen from the target: 1 - cos(angle) plus |log distance ratio|."""
    centres = memory.centres[index]
    to_source = memory.c2w[index, :, 3] - centres
    to_target = eye - centres
    d_src, d_tgt = to_source.norm(dim=-1).clamp_min(NEAR), to_target.norm(dim=-1).clamp_min(NEAR)
    cos = (to_source * to_target).sum(-1) / (d_src * d_tgt)
    return (1 - cos) + torch.log(d_src / d_tgt).abs()


def render(
    memory: PatchMemory, K: torch.Tensor, c2w: torch.Tensor, height: int, width: int,
    max_patches: int = DEFAULT_MAX_PATCHES, max_distance: float = DEFAULT_MAX_DISTANCE,
) -> Rendering:
    """The memory seen from camera K [3,3], c2w [4,4]: rgb [H,W,3] 0..1, coverage mask [H,W], z-depth [H,W] (0 = empty)."""
    index = retrieve(memory, K, c2w, height, width, max_patches, max_distance)
    if len(index) == 0:
        # nothing of the memory in view (e.g. the camera looks away from every stored surface)
        return Rendering(torch.zeros(height, width, 3), torch.zeros(height, width), torch.zeros(height, width))
    p = memory.patch_size
    points, valid = memory.lift(index)
    colours = memory.rgb[index].float() / 255
    cost = _view_cost(memory, index, c2w[:3, 3].float())
    bias = (SPLAT_VIEW_BIAS * cost).clamp_max(MAX_VIEW_HANDICAP)[:, None, None].expand(-1, p, p)
    return splat_grids(points.reshape(-1, p, p, 3), valid.reshape(-1, p, p), colours, K.float(), c2w.float(),
                       height, width, z_bias=bias)


def iter_render(
    memory: PatchMemory, path: CameraPath, max_patches: int = DEFAULT_MAX_PATCHES,
    max_distance: float = DEFAULT_MAX_DISTANCE,
) -> Iterator[Rendering]:
    """Render each camera of ``path`` in turn (a caller that may be interrupted keeps what it has consumed)."""
    check_render_path(path, "path")
    for pose in path.c2w:
        yield render(memory, path.K, pose, path.height, path.width, max_patches, max_distance)


def render_path(
    memory: PatchMemory, path: CameraPath, max_patches: int = DEFAULT_MAX_PATCHES,
    max_distance: float = DEFAULT_MAX_DISTANCE, callback: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Renderings of every camera of ``path``: rgb [T,H,W,3], mask [T,H,W], depth [T,H,W].

    ``callback(i)`` runs after frame i is done; if it raises (e.g. a user interrupt) the exception
    propagates. For partial results, iterate :func:`iter_render` instead.
    """
    frames = []
    for i, frame in enumerate(iter_render(memory, path, max_patches, max_distance)):
        frames.append(frame)
        if callback is not None:
            callback(i)
    return stack_renderings(frames)


def stack_renderings(frames: Sequence[Rendering]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-frame renderings as batches: rgb [T,H,W,3], mask [T,H,W], depth [T,H,W]."""
    return (torch.stack([f.rgb for f in frames]), torch.stack([f.mask for f in frames]),
            torch.stack([f.depth for f in frames]))


def check_render_path(path: object, name: str) -> CameraPath:
    """``path`` if it is a non-empty CameraPath whose renderings fit the limits, else a ValueError naming ``name``."""
    require_path(path, name)  # a CameraPath's own size and camera count are within the limits already
    pixels = len(path) * path.height * path.width
    if pixels > MAX_RENDER_PIXELS:
        raise ValueError(f"{name}: {len(path)} frames of {path.height}x{path.width} are {pixels} pixels, more than the "
                         f"limit of {MAX_RENDER_PIXELS} per render; render a shorter or smaller path, or split it.")
    return path


def _check_view(
    memory: PatchMemory, K: torch.Tensor, c2w: torch.Tensor, height: int, width: int, max_patches: int,
    max_distance: float,
) -> None:
    """ValueError naming the input unless the memory has patches and the camera and budgets are usable."""
    check_memory(memory, "memory", allow_empty=False)
    if tuple(c2w.shape) != (4, 4):
        raise ValueError(f"c2w: expected one camera pose [4,4], got shape {list(c2w.shape)}.")
    validate_cameras(c2w[None].float(), K.float(), "camera")
    check_image_size(height, width, "height/width")
    check_count(max_patches, "max_patches", 1, MAX_PATCHES, "patches")
    if isinstance(max_distance, bool) or not isinstance(max_distance, (int, float)) or not max_distance > 0:
        raise ValueError(f"max_distance: must be positive metres (inf for no limit), got {max_distance!r}.")
