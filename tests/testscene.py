"""An analytic textured room with a pillar: exact RGB-D views for tests, benchmarks and demos.

The room spans x, y in [-4, 4] m and z in [0, 3] m (z up); a 1 x 1 x 2 m pillar stands at
x in [0.5, 1.5], y in [-0.5, 0.5]. Every face has its own colour, a 0.5 m checker and fine stripes,
so reprojection errors show up in PSNR. Depth is the exact z-depth of the ray hit.
"""
from __future__ import annotations

import math

import torch

from memory.geometry.camera import intrinsics_from_fov, look_rotation, pose_matrix
from memory.geometry.projection import pixel_centres

ROOM_LO = (-4.0, -4.0, 0.0)
ROOM_HI = (4.0, 4.0, 3.0)
PILLAR_LO = (0.5, -0.5, 0.0)
PILLAR_HI = (1.5, 0.5, 2.0)
FACE_COLOURS = torch.tensor([
    [0.85, 0.35, 0.30], [0.30, 0.70, 0.40], [0.35, 0.45, 0.85], [0.85, 0.75, 0.30], [0.55, 0.55, 0.55],
    [0.75, 0.75, 0.90], [0.90, 0.50, 0.80], [0.40, 0.85, 0.85], [0.95, 0.60, 0.20],
])


def _room_exit(origin: torch.Tensor, dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distance along ``dirs`` [P,3] to the room wall hit from inside, and the face index [P] (0..5)."""
    lo, hi = torch.tensor(ROOM_LO), torch.tensor(ROOM_HI)
    bound = torch.where(dirs > 0, hi, lo)
    safe = torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t = ((bound - origin) / safe).masked_fill(dirs.abs() < 1e-9, float("inf"))
    t_exit, axis = t.min(-1)
    face = axis * 2 + (dirs.gather(-1, axis[:, None])[:, 0] > 0).long()
    return t_exit, face


def _pillar_hit(origin: torch.Tensor, dirs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry distance into the pillar (inf where missed) and its face index [P] (6..8: x, y, z slabs)."""
    lo, hi = torch.tensor(PILLAR_LO), torch.tensor(PILLAR_HI)
    safe = torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t1, t2 = (lo - origin) / safe, (hi - origin) / safe
    t_near, axis = torch.minimum(t1, t2).max(-1)
    t_far = torch.maximum(t1, t2).min(-1).values
    hit = (t_far >= t_near) & (t_near > 0)
    return torch.where(hit, t_near, torch.full_like(t_near, float("inf"))), axis + 6


def _texture(points: torch.Tensor, face: torch.Tensor) -> torch.Tensor:
    """Colour [P,3] in 0..1 of surface points [P,3] on faces [P]."""
    checker = ((points / 0.5).floor().sum(-1) % 2)[:, None]
    stripes = torch.sin(points.sum(-1) * 2 * math.pi / 0.37)[:, None]
    return (FACE_COLOURS[face] * (0.6 + 0.3 * checker) + 0.1 * stripes).clamp(0, 1)


def room_views(c2w: torch.Tensor, K: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact views of the room from cameras ``c2w`` [T,4,4]: rgb uint8 [T,H,W,3] and z-depth float32 [T,H,W]."""
    rgbs, depths = [], []
    for hit, t, face in _cast(c2w, K, height, width):
        rgbs.append((_texture(hit, face) * 255).round().to(torch.uint8).reshape(height, width, 3))
        depths.append(t.reshape(height, width))
    return torch.stack(rgbs), torch.stack(depths)


def pillar_pixels(c2w: torch.Tensor, K: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Where the pillar is visible [T,H,W] bool from cameras ``c2w`` [T,4,4]."""
    return torch.stack([(face >= 6).reshape(height, width) for _, _, face in _cast(c2w, K, height, width)])


def _cast(c2w: torch.Tensor, K: torch.Tensor, height: int, width: int) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per camera: hit points [P,3], z-depth [P] and face index [P] of every pixel's ray."""
    uv = pixel_centres(height, width).reshape(-1, 2)
    rays_cam = torch.cat([(uv - K[:2, 2]) / K.diagonal()[:2], torch.ones(len(uv), 1)], -1)
    hits = []
    for pose in c2w.float():
        origin = pose[:3, 3]
        dirs = rays_cam @ pose[:3, :3].T
        t_room, face_room = _room_exit(origin, dirs)
        t_pillar, face_pillar = _pillar_hit(origin, dirs)
        pillar = t_pillar < t_room
        t = torch.where(pillar, t_pillar, t_room)
        hits.append((origin + dirs * t[:, None], t, torch.where(pillar, face_pillar, face_room)))
    return hits


def orbit_cameras(count: int, radius: float = 2.5, height_m: float = 1.2, start_deg: float = 0.0,
                  span_deg: float = 360.0, image_size: int = 64, fovy_deg: float = 70.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` cameras [T,4,4] on a circle around the pillar looking at it, and their K [3,3]."""
    angles = torch.deg2rad(start_deg + span_deg * torch.arange(count) / count)
    centre = torch.tensor([1.0, 0.0])
    xy = centre + radius * torch.stack([torch.cos(angles), torch.sin(angles)], -1)
    positions = torch.cat([xy, torch.full((count, 1), height_m)], -1)
    yaw = torch.atan2(centre[1] - xy[:, 1], centre[0] - xy[:, 0])
    rotation = look_rotation(yaw, torch.full_like(yaw, -0.15))
    return pose_matrix(rotation, positions), intrinsics_from_fov(image_size, image_size, fovy_deg)
