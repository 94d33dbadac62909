"""Top-down map: point cloud, camera paths and a scale bar seen from above (world x right, y up).

The view is orthographic with equal scale on both axes, fitted to everything drawn. Points are
z-buffered by height so the top of the scene is visible; each path is a polyline with its start
marked by a disc and small view wedges (the camera's horizontal field of view) every few frames.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from ..geometry.camera import CameraPath
from ..limits import MAX_IMAGE_SIDE

MIN_EXTENT_M = 1.0
MIN_SIZE = 64
# Points a map of a patch memory draws at most (whole patches subsampled evenly above it): a 4096-pixel
# map has 16.8M pixels, so more points only cost time and memory without showing more.
MAX_MAP_POINTS = 4_000_000
BACKGROUND = (20, 20, 26)
PATH_COLOURS = ((255, 99, 71), (65, 160, 255), (255, 205, 50), (120, 220, 110), (220, 120, 255), (60, 220, 220))
# Height ramp for uncoloured points: low = deep blue, high = pale yellow.
HEIGHT_RAMP = torch.tensor([[0.15, 0.2, 0.55], [0.2, 0.6, 0.6], [0.6, 0.8, 0.35], [0.98, 0.95, 0.7]])
WEDGES_PER_PATH = 12
SCALE_BAR_PAD = 4


@dataclass(frozen=True)
class MapView:
    """Orthographic view from above: world (x, y) to pixel (u, v) with x to the right and y up."""

    center_x: float
    center_y: float
    pixels_per_metre: float
    size: int

    def to_pixels(self, xy: torch.Tensor) -> torch.Tensor:
        """Pixel coordinates [...,2] (u right, v down, pixel centres at +0.5) of world points xy [...,2]."""
        u = self.size / 2 + (xy[..., 0].double() - self.center_x) * self.pixels_per_metre
        v = self.size / 2 - (xy[..., 1].double() - self.center_y) * self.pixels_per_metre
        return torch.stack([u, v], -1)


def _font_px(size: int) -> int:
    """Label font size for a map of ``size`` pixels."""
    return max(10, size // 40)


def _path_list(paths: Sequence[CameraPath] | CameraPath | None) -> list[CameraPath]:
    """``paths`` as a list of non-empty CameraPaths, or a ValueError."""
    items = [] if paths is None else [paths] if isinstance(paths, CameraPath) else list(paths)
    for i, item in enumerate(items):
        if not isinstance(item, CameraPath):
            raise ValueError(f"paths: item {i} is a {type(item).__name__}, not a CameraPath; pass CameraPath values.")
    return [p for p in items if len(p)]


def _checked_points(points: torch.Tensor | None, colors: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Points [N,3] float and colours [N,3] float 0..1 (or None), validated."""
    if points is None:
        if colors is not None:
            raise ValueError("colors: given without points; pass points [N,3] too or drop colors.")
        return torch.zeros(0, 3), None
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"points: expected shape [N,3], got {list(points.shape)}.")
    if not torch.isfinite(points).all():
        raise ValueError("points: contains NaN or inf; drop invalid points (e.g. from depth 0) before drawing.")
    if colors is None:
        return points.float(), None
    if tuple(colors.shape) != tuple(points.shape):
        raise ValueError(f"colors: expected shape {list(points.shape)} like points, got {list(colors.shape)}.")
    colors = colors.float() / 255 if colors.dtype == torch.uint8 else colors.float()
    if not torch.isfinite(colors).all() or colors.min() < 0 or colors.max() > 1:
        raise ValueError("colors: float colours must lie in [0, 1] (or pass uint8 0..255).")
    return points.float(), colors


def map_view(
    paths: Sequence[CameraPath] | CameraPath | None = None, points: torch.Tensor | None = None,
    size: int = 512, margin: float = 0.08,
) -> MapView:
    """The view ``top_down_map`` uses: everything fitted inside ``size`` pixels minus a ``margin`` fraction per side.

    The margin is at least the scale bar's height, so the bar never hides part of the scene.
    """
    if isinstance(size, bool) or not isinstance(size, (int, float)) or not float(size).is_integer() \
            or not MIN_SIZE <= size <= MAX_IMAGE_SIDE:
        raise ValueError(f"size: must be a whole number of pixels in {MIN_SIZE}..{MAX_IMAGE_SIDE}, got {size!r}.")
    if not 0.0 <= margin < 0.45:
        raise ValueError(f"margin: must be a fraction in [0, 0.45), got {margin}.")
    xy = [p.positions[:, :2].double() for p in _path_list(paths)]
    if points is not None and len(points):
        xy.append(points[:, :2].double())
    if xy:
        every = torch.cat(xy)
        low, high = every.amin(0), every.amax(0)
    else:
        low = high = torch.zeros(2, dtype=torch.float64)
    centre = (low + high) / 2
    extent = max(float((high - low).max()), MIN_EXTENT_M)
    margin_px = max(margin * size, _font_px(size) + 2 * SCALE_BAR_PAD)
    return MapView(float(centre[0]), float(centre[1]), (size - 2 * margin_px) / extent, int(size))


def _height_colours(z: torch.Tensor) -> torch.Tensor:
    """Colours [N,3] from a height ramp spanning the points' z range."""
    span = float(z.max() - z.min())
    level = (z - z.min()) / span if span > 0 else torch.full_like(z, 0.5)
    position = level * (len(HEIGHT_RAMP) - 1)
    low = position.floor().long().clamp(max=len(HEIGHT_RAMP) - 2)
    frac = (position - low)[:, None]
    return HEIGHT_RAMP[low] * (1 - frac) + HEIGHT_RAMP[low + 1] * frac


def _draw_points(view: MapView, points: torch.Tensor, colors: torch.Tensor, point_px: int) -> np.ndarray:
    """Background image [S,S,3] uint8 with the points drawn from above, the highest point winning each pixel."""
    size = view.size
    image = torch.tensor(BACKGROUND, dtype=torch.float32).div(255).expand(size * size, 3).clone()
    if len(points):
        base = torch.floor(view.to_pixels(points[:, :2]) - (point_px - 1) / 2).long()
        offsets = torch.stack(torch.meshgrid(torch.arange(point_px), torch.arange(point_px), indexing="xy"), -1).reshape(-1, 2)
        pixel = (base[:, None] + offsets[None]).reshape(-1, 2)
        source = torch.arange(len(points))[:, None].expand(-1, len(offsets)).reshape(-1)
        inside = ((pixel >= 0) & (pixel < size)).all(-1)
        pixel, source = pixel[inside], source[inside]
        flat = pixel[:, 1] * size + pixel[:, 0]
        height = points[source, 2]
        top = torch.full((size * size,), -math.inf).scatter_reduce(0, flat, height, reduce="amax")
        win = height >= top[flat]
        image[flat[win]] = colors[source[win]]
    return (image.reshape(size, size, 3) * 255).round().clamp(0, 255).byte().numpy()


def _wedge(draw: ImageDraw.ImageDraw, view: MapView, path: CameraPath, frame: int, length: float, colour, width: int) -> None:
    """Draw camera ``frame``'s horizontal field of view as a wedge of ``length`` pixels."""
    forward = path.c2w[frame, :2, 2].double()
    if float(forward.norm()) < 1e-3:
        return
    yaw = math.atan2(float(forward[1]), float(forward[0]))
    half = math.atan(path.width / (2 * float(path.K[0, 0])))
    u, v = view.to_pixels(path.positions[frame, :2]).tolist()
    # Image v grows downwards, so world angles turn clockwise on screen.
    corners = [(u + length * math.cos(yaw + s * half), v - length * math.sin(yaw + s * half)) for s in (1, -1)]
    draw.line([corners[0], (u, v), corners[1]], fill=colour, width=width)
    draw.line(corners, fill=colour, width=max(1, width - 1))


def _nice_length(metres: float) -> float:
    """The largest 1, 2 or 5 times a power of ten not above ``metres``."""
    power = 10 ** math.floor(math.log10(metres))
    return max(m * power for m in (1, 2, 5) if m * power <= metres)


def _draw_scale_bar(draw: ImageDraw.ImageDraw, view: MapView) -> None:
    """A scale bar of a round number of metres at the bottom left, labelled on its right, low enough to sit in the margin."""
    metres = _nice_length(0.25 * view.size / view.pixels_per_metre)
    length = metres * view.pixels_per_metre
    label = f"{metres:g} m"
    # Pillow's built-in font scales when FreeType is present and falls back to a fixed bitmap font otherwise.
    font = ImageFont.load_default(size=_font_px(view.size))
    left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
    x0, y = SCALE_BAR_PAD, view.size - SCALE_BAR_PAD - (bottom - top) / 2
    x_text = x0 + length + SCALE_BAR_PAD
    draw.rectangle([x0 - 2, y - (bottom - top) / 2 - 2, x_text + right - left + 2, view.size - 2], fill=BACKGROUND)
    draw.line([(x0, y), (x0 + length, y)], fill=(255, 255, 255), width=2)
    for x in (x0, x0 + length):
        draw.line([(x, y - 4), (x, y + 1)], fill=(255, 255, 255), width=2)
    draw.text((x_text, y - (bottom - top) / 2 - top), label, fill=(255, 255, 255), font=font)


def top_down_map(
    paths: Sequence[CameraPath] | CameraPath | None = None, points: torch.Tensor | None = None,
    colors: torch.Tensor | None = None, size: int = 512, margin: float = 0.08, highlight: int | None = None,
    point_px: int = 2,
) -> torch.Tensor:
    """Image [size,size,3] float 0..1 of points (coloured, or by height) and camera paths seen from above.

    ``highlight`` is a frame index (negative counts from the end, e.g. -1 = the current camera) drawn as a
    large white-edged wedge on every path. Paths are coloured in order from a fixed palette.
    """
    path_list = _path_list(paths)
    points, colors = _checked_points(points, colors)
    if highlight is not None:
        for i, path in enumerate(path_list):
            if not -len(path) <= highlight < len(path):
                raise ValueError(f"highlight: frame {highlight} is outside path {i} of {len(path)} frames; pick a valid index.")
    if isinstance(point_px, bool) or int(point_px) != point_px or point_px < 1:
        raise ValueError(f"point_px: must be a whole number of pixels >= 1, got {point_px}.")
    view = map_view(path_list, points, size, margin)
    if colors is None and len(points):
        colors = _height_colours(points[:, 2])
    image = Image.fromarray(_draw_points(view, points, colors, int(point_px)))
    draw = ImageDraw.Draw(image)
    line_px = max(1, view.size // 256)
    wedge_px = max(7.0, view.size / 30)
    for i, path in enumerate(path_list):
        colour = PATH_COLOURS[i % len(PATH_COLOURS)]
        pixels = [tuple(uv) for uv in view.to_pixels(path.positions[:, :2]).tolist()]
        if len(pixels) > 1:
            draw.line(pixels, fill=colour, width=line_px, joint="curve")
        radius = 1.5 * line_px + 2
        u, v = pixels[0]
        draw.ellipse([u - radius, v - radius, u + radius, v + radius], fill=colour, outline=(255, 255, 255))
        for frame in range(0, len(path), max(1, math.ceil(len(path) / WEDGES_PER_PATH))):
            _wedge(draw, view, path, frame, wedge_px, colour, line_px)
        if highlight is not None:
            frame = highlight % len(path)
            _wedge(draw, view, path, frame, 2 * wedge_px, (255, 255, 255), line_px + 2)
            _wedge(draw, view, path, frame, 2 * wedge_px, colour, line_px)
    _draw_scale_bar(draw, view)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
