"""Camera episodes in the ``come-episode/1`` format: frames, metric depth, exact cameras.

See ``episode-format.md``: rgb uint8 [T,H,W,3], depth (float16 on disk, float32 in memory) [T,H,W]
z-depth in metres with 0 = invalid, c2w float32 [T,4,4] OpenCV axes in a z-up world, K float32 [3,3]
with pixel centres at +0.5, optional actions int64 [T]; metadata ``format``, ``source``, ``seed``,
``context_frames``, ``description``.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import kornia
import torch

from ..geometry.camera import CameraPath, check_pinhole, validate_cameras, yaw_of
from ..files import atomic_save_safetensors, read_safetensors
from ..geometry.projection import backward_warp
from ..limits import MAX_PATH_FRAMES, MAX_SEED, check_image_size

FORMAT = "come-episode/1"
# Memory Maze 9x9, 128 frames at 64x64, 64 context frames; rebuilt exactly by
# `python -m memory.data.sim.generate --sim memory_maze --seeds 2 --frames 128 --context-frames 64 --out DIR`
SAMPLE_EPISODE = Path(__file__).resolve().parent / "sample_episode.safetensors"
REVISIT_DISTANCE_M = 1.0
REVISIT_YAW_DEG = 30.0
FLOAT16_MAX = 65504.0
_METADATA_KEYS = ("source", "seed", "context_frames", "description")
_TENSOR_KEYS = ("rgb", "depth", "c2w", "K", "actions")
# Metadata integers are plain ASCII decimals: int() alone would also take '٣' or '1_0'.
_INTEGER = re.compile(r"-?[0-9]{1,4000}")


@dataclass(frozen=True, eq=False)
class Episode:
    """One camera episode; the first ``context_frames`` frames are observed history, the rest are to be predicted."""

    rgb: torch.Tensor
    depth: torch.Tensor
    c2w: torch.Tensor
    K: torch.Tensor
    actions: torch.Tensor | None
    source: str
    seed: int
    context_frames: int
    description: str = ""

    def __post_init__(self) -> None:
        validate_episode(self, "Episode")

    def __len__(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def height(self) -> int:
        """Frame height in pixels."""
        return int(self.rgb.shape[1])

    @property
    def width(self) -> int:
        """Frame width in pixels."""
        return int(self.rgb.shape[2])

    @property
    def cameras(self) -> CameraPath:
        """All cameras of the episode as a ``CameraPath``."""
        return CameraPath(self.c2w, self.K, self.height, self.width)


def _require_tensor(value: object, field: str, dtype: torch.dtype, ndim: int, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name}: {field} must be a torch.Tensor, got {type(value).__name__}.")
    if value.dtype != dtype:
        raise ValueError(f"{name}: {field} must be {dtype}, got {value.dtype}; convert it (e.g. `.to({dtype})`).")
    if value.ndim != ndim:
        raise ValueError(f"{name}: {field} must have {ndim} dimensions, got shape {list(value.shape)}.")
    return value


def validate_episode(episode: Episode, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` and the field unless ``episode`` satisfies ``come-episode/1``."""
    rgb = _require_tensor(episode.rgb, "rgb", torch.uint8, 4, name)
    depth = _require_tensor(episode.depth, "depth", torch.float32, 3, name)
    c2w = _require_tensor(episode.c2w, "c2w", torch.float32, 3, name)
    K = _require_tensor(episode.K, "K", torch.float32, 2, name)
    if rgb.shape[-1] != 3:
        raise ValueError(f"{name}: rgb must be [T,H,W,3] (channels last, RGB), got shape {list(rgb.shape)}.")
    t, h, w = rgb.shape[:3]
    if not 1 <= t <= MAX_PATH_FRAMES:
        raise ValueError(f"{name}: rgb has {t} frames; an episode has 1..{MAX_PATH_FRAMES} frames.")
    check_image_size(h, w, f"{name}: rgb")
    if depth.shape[0] != t or c2w.shape[0] != t:
        raise ValueError(
            f"{name}: frame counts disagree: rgb has {t}, depth {depth.shape[0]}, c2w {c2w.shape[0]}; "
            "every frame needs one depth map and one camera."
        )
    if tuple(depth.shape[1:]) != (h, w):
        raise ValueError(f"{name}: depth is {depth.shape[1]}x{depth.shape[2]} but rgb is {h}x{w}; resize depth to the frame size.")
    validate_cameras(c2w, K, f"{name} (c2w, K)")
    check_pinhole(K, h, w, name)
    bad = (~torch.isfinite(depth)).flatten(1).any(1).nonzero().flatten()
    if len(bad):
        raise ValueError(f"{name}: depth of frame {int(bad[0])} contains NaN or inf; store 0 for invalid pixels.")
    bad = (depth < 0).flatten(1).any(1).nonzero().flatten()
    if len(bad):
        raise ValueError(f"{name}: depth of frame {int(bad[0])} is negative; depth is metric z-depth >= 0 (0 = invalid).")
    bad = (depth == 0).flatten(1).all(1).nonzero().flatten()
    if len(bad):
        raise ValueError(f"{name}: depth of frame {int(bad[0])} is all zero (no valid pixel); supply real metric depth.")
    if episode.actions is not None:
        actions = _require_tensor(episode.actions, "actions", torch.int64, 1, name)
        if actions.shape[0] != t:
            raise ValueError(f"{name}: actions has {actions.shape[0]} entries for {t} frames; give one action per frame or None.")
    for field, kind in (("source", str), ("description", str), ("seed", int), ("context_frames", int)):
        value = getattr(episode, field)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ValueError(f"{name}: {field} must be {kind.__name__}, got {type(value).__name__}.")
    if not 0 <= episode.seed <= MAX_SEED:
        raise ValueError(f"{name}: seed = {episode.seed} is outside 0..{MAX_SEED} (ComfyUI's seed range).")
    if not 1 <= episode.context_frames < t:
        raise ValueError(
            f"{name}: context_frames = {episode.context_frames} is outside [1, {t}) for a {t}-frame episode; "
            "keep at least one observed and one predicted frame."
        )


def write_episode(episode: Episode, path: str | os.PathLike) -> Path:
    """Validate ``episode`` and write it atomically to ``path`` (depth stored as float16); returns the path."""
    path = Path(path)
    validate_episode(episode, str(path))
    if float(episode.depth.max()) > FLOAT16_MAX:
        raise ValueError(f"{path}: depth exceeds {FLOAT16_MAX} m, the float16 range of {FORMAT}; store 0 for far/sky pixels.")
    tensors = {"rgb": episode.rgb, "depth": episode.depth.half(), "c2w": episode.c2w, "K": episode.K}
    if episode.actions is not None:
        tensors["actions"] = episode.actions
    metadata = {
        "format": FORMAT, "source": episode.source, "seed": str(episode.seed),
        "context_frames": str(episode.context_frames), "description": episode.description,
    }
    return atomic_save_safetensors(tensors, path, metadata)


def read_episode(path: str | os.PathLike) -> Episode:
    """Read and validate a ``come-episode/1`` file; errors start with ``episode: <path>:`` and name the field."""
    path = Path(path)
    tensors, metadata = read_safetensors(path, FORMAT, "episode")
    name = f"episode: {path}"
    missing = [k for k in ("rgb", "depth", "c2w", "K") if k not in tensors] + [k for k in _METADATA_KEYS if k not in metadata]
    if missing:
        raise ValueError(f"{name}: missing {', '.join(missing)}; it is not a complete {FORMAT} file.")
    unknown = sorted(set(tensors) - set(_TENSOR_KEYS))
    if unknown:
        raise ValueError(f"{name}: unexpected tensors {unknown}; {FORMAT} holds only {', '.join(_TENSOR_KEYS)}.")
    if tensors["depth"].dtype != torch.float16:
        raise ValueError(f"{name}: depth is stored as {tensors['depth'].dtype}, {FORMAT} stores float16; rewrite it with write_episode.")
    numbers = {}
    for key in ("seed", "context_frames"):
        if not _INTEGER.fullmatch(metadata[key]):
            raise ValueError(f"{name}: metadata {key} = '{metadata[key][:40]}' is not an integer (plain decimal digits).")
        numbers[key] = int(metadata[key])
    try:
        return Episode(
            rgb=tensors["rgb"], depth=tensors["depth"].float(), c2w=tensors["c2w"], K=tensors["K"],
            actions=tensors.get("actions"), source=metadata["source"], seed=numbers["seed"],
            context_frames=numbers["context_frames"], description=metadata["description"],
        )
    except ValueError as err:
        raise ValueError(f"{name}: {str(err).replace('Episode (c2w, K)', 'c2w/K').removeprefix('Episode: ')}") from None


def _revisit_candidates(episode: Episode) -> torch.Tensor:
    """Score [T-C, C] of each (predicted frame, context frame) pair: < 1 is a revisit, lower is closer."""
    c = episode.context_frames
    pos = episode.c2w[:, :3, 3]
    yaw = yaw_of(episode.c2w)
    dist = torch.cdist(pos[c:], pos[:c])
    dyaw = torch.rad2deg((yaw[c:, None] - yaw[None, :c] + math.pi) % (2 * math.pi) - math.pi).abs()
    score = torch.maximum(dist / REVISIT_DISTANCE_M, dyaw / REVISIT_YAW_DEG)
    return torch.where((dist <= REVISIT_DISTANCE_M) & (dyaw <= REVISIT_YAW_DEG), score, torch.full_like(score, math.inf))


def revisit_frames(episode: Episode) -> list[int]:
    """Predicted frames t whose camera is within 1.0 m and 30 deg of yaw of some context frame."""
    score = _revisit_candidates(episode)
    return [episode.context_frames + int(i) for i in torch.isfinite(score).any(1).nonzero().flatten()]


def _warp_pair(episode: Episode, s: int, t: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = len(episode)
    if not (0 <= s < n and 0 <= t < n):
        raise ValueError(f"reprojection: frames ({s}, {t}) out of range for a {n}-frame episode.")
    src = episode.rgb[s].float() / 255
    warped, valid = backward_warp(src, episode.depth[s], episode.c2w[s], episode.depth[t], episode.c2w[t], episode.K)
    return warped, valid, episode.rgb[t].float() / 255


def reprojection_overlap(episode: Episode, s: int, t: int) -> float:
    """Fraction of frame t's valid-depth pixels that frame s also sees (0..1)."""
    _, valid, _ = _warp_pair(episode, s, t)
    return float(valid.sum()) / max(1, int((episode.depth[t] > 0).sum()))


def revisit_pairs(episode: Episode, min_overlap: float = 0.0) -> list[tuple[int, int]]:
    """(s, t) for every revisit frame t, with s the context frame closest in position and yaw; pairs whose
    reprojection overlap is below ``min_overlap`` (e.g. a wall between them) are left out."""
    score = _revisit_candidates(episode)
    best = score.argmin(1)
    pairs = [(int(best[i]), episode.context_frames + int(i)) for i in torch.isfinite(score).any(1).nonzero().flatten()]
    if min_overlap <= 0:
        return pairs
    return [(s, t) for s, t in pairs if reprojection_overlap(episode, s, t) >= min_overlap]


def reprojection_psnr(episode: Episode, s: int, t: int) -> float:
    """PSNR (dB) of frame s warped into frame t with depth, poses and K, over pixels visible in both."""
    warped, valid, dst = _warp_pair(episode, s, t)
    if not valid.any():
        raise ValueError(f"reprojection_psnr: frames {s} and {t} share no visible pixel; pick a pair that overlaps.")
    return float(kornia.metrics.psnr(warped[valid], dst[valid], max_val=1.0))
