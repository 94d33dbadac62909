"""Export a coloured point cloud as binary glTF 2.0 (.glb) for three.js viewers such as ComfyUI's Preview 3D.

One mesh with one POINTS primitive: POSITION (float32 VEC3 with min/max, as the spec requires) and
COLOR_0 (normalised uint8 VEC4, 4-byte aligned). Our world is z-up; glTF is y-up, so points are
rotated by -90 degrees about x: (x, y, z) -> (x, z, -y). glTF vertex colours are linear, so the
sRGB colours are linearised (three.js converts back on display).
"""
from __future__ import annotations

import json
import os
import struct
from pathlib import Path

import numpy as np
import torch

from ..files import atomic_write
from ..limits import check_count

GLB_MAGIC = 0x46546C67
JSON_CHUNK = 0x4E4F534A
BIN_CHUNK = 0x004E4942
FLOAT, UNSIGNED_BYTE, ARRAY_BUFFER, POINTS_MODE = 5126, 5121, 34962, 0
# Points in one file at most: 16 bytes each, so 160 MB, about what a browser viewer still loads smoothly.
MAX_GLB_POINTS = 10_000_000


def export_glb(points: torch.Tensor, colors: torch.Tensor, path: str | os.PathLike, max_points: int | None = None) -> Path:
    """Write points [M,3] (z-up world, metres) with sRGB colours [M,3] in 0..1 to ``path`` as .glb; evenly subsampled above ``max_points``."""
    points, colors = _checked(points, colors)
    if max_points is not None:
        max_points = check_count(max_points, "max_points", 1, MAX_GLB_POINTS, "points")
        if len(points) > max_points:
            index = torch.div(torch.arange(max_points) * len(points), max_points, rounding_mode="floor")
            points, colors = points[index], colors[index]
    data = glb_bytes(points, colors)
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def glb_bytes(points: torch.Tensor, colors: torch.Tensor) -> bytes:
    """The .glb file content for points [M,3] (z-up) and sRGB colours [M,3] in 0..1."""
    points, colors = _checked(points, colors)
    y_up = torch.stack([points[:, 0], points[:, 2], -points[:, 1]], -1).numpy().astype("<f4")
    linear = torch.where(colors <= 0.04045, colors / 12.92, ((colors + 0.055) / 1.055) ** 2.4)
    rgba = np.concatenate([(linear.numpy() * 255).round().astype(np.uint8),
                           np.full((len(points), 1), 255, np.uint8)], 1)
    positions, colour_bytes = y_up.tobytes(), rgba.tobytes()
    count = len(points)
    lo, hi = y_up.min(0).tolist(), y_up.max(0).tolist()
    document = {
        "asset": {"version": "2.0", "generator": "ComfyUI-CoME patch memory"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": "patch_memory"}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0, "COLOR_0": 1}, "mode": POINTS_MODE}]}],
        "buffers": [{"byteLength": len(positions) + len(colour_bytes)}],
        "bufferViews": [
            {"buffer": 0, "byteOffset": 0, "byteLength": len(positions), "target": ARRAY_BUFFER},
            {"buffer": 0, "byteOffset": len(positions), "byteLength": len(colour_bytes), "target": ARRAY_BUFFER},
        ],
        "accessors": [
            {"bufferView": 0, "componentType": FLOAT, "count": count, "type": "VEC3", "min": lo, "max": hi},
            {"bufferView": 1, "componentType": UNSIGNED_BYTE, "normalized": True, "count": count, "type": "VEC4"},
        ],
    }
    json_chunk = _padded(json.dumps(document, separators=(",", ":")).encode(), b" ")
    bin_chunk = _padded(positions + colour_bytes, b"\0")
    total = 12 + 8 + len(json_chunk) + 8 + len(bin_chunk)
    return b"".join([
        struct.pack("<III", GLB_MAGIC, 2, total),
        struct.pack("<II", len(json_chunk), JSON_CHUNK), json_chunk,
        struct.pack("<II", len(bin_chunk), BIN_CHUNK), bin_chunk,
    ])


def _padded(data: bytes, fill: bytes) -> bytes:
    """``data`` padded with ``fill`` to a multiple of 4 bytes (glTF chunk alignment)."""
    return data + fill * (-len(data) % 4)


def _checked(points: torch.Tensor, colors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 points [M,3] and colours [M,3] clamped to 0..1, or ValueError naming the bad input."""
    if points.ndim != 2 or points.shape[-1] != 3:
        raise ValueError(f"points: expected [M,3], got shape {list(points.shape)}.")
    if tuple(colors.shape) != tuple(points.shape):
        raise ValueError(f"colors: expected one RGB colour per point [{len(points)},3], got shape {list(colors.shape)}.")
    if len(points) == 0:
        raise ValueError("points: nothing to export; the memory is empty (build it from frames first).")
    if not torch.isfinite(points).all():
        raise ValueError("points: contain NaN or inf; check the depth maps the memory was built from.")
    return points.detach().float().cpu(), colors.detach().float().cpu().clamp(0, 1)
