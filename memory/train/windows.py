"""Training windows: context + target frames of an episode, their mosaics and rays, as network inputs."""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch

from ..data.episode import Episode, read_episode
from ..world.conditioning import build_conditioning
from ..world.mosaic import warp_frames
from ..world.rgbd import encode_rgbd

TARGET_FRAMES = 4
MOSAIC_DROPOUT = 0.15
DEPTH_UNKNOWN = 0.1
FAR_SOURCES = 0.3
REVISIT_RADIUS_M = 3.0


class Frames(Protocol):
    """What windows are cut from: an Episode, or any frames with its rgb uint8 [T,H,W,3], depth, c2w and K."""

    rgb: torch.Tensor
    depth: torch.Tensor
    c2w: torch.Tensor
    K: torch.Tensor


@dataclass(frozen=True)
class Window:
    """One training example: clean RGB-D [F,4,H,W] (context first), mosaics [F,6,H,W], rays [F,6,H,W]."""

    clean: torch.Tensor
    mosaic: torch.Tensor
    rays: torch.Tensor


def load_episodes(folder: str | Path) -> list[Episode]:
    """Every episode file under ``folder`` (recursively)."""
    files = sorted(Path(folder).rglob("*.safetensors"))
    if not files:
        raise ValueError(f"data: no episode files under {folder}; generate some with `python -m memory.data.sim.generate`.")
    return [read_episode(f) for f in files]


def mosaic_sources(episode: Frames, start: int, context_frames: int, rng: random.Random) -> list[int]:
    """Frames whose warp conditions a window starting at ``start``: the latest context frame, sometimes far-away revisits."""
    context = list(range(start, start + context_frames))
    roll = rng.random()
    if roll < MOSAIC_DROPOUT:
        return []
    # the base rollout warps the latest frame; other frames come in as revisits (the spatial memory's job)
    sources = context[-1:]
    if roll > 1 - FAR_SOURCES:
        target = episode.c2w[start + context_frames, :3, 3]
        near = (episode.c2w[:, :3, 3] - target).norm(dim=-1) < REVISIT_RADIUS_M
        far = [int(i) for i in near.nonzero().flatten() if abs(int(i) - start) > context_frames + TARGET_FRAMES]
        sources = rng.sample(far, min(len(far), rng.randint(1, 3))) + sources  # the latest frame stays on top
    return sources


def make_window(episode: Frames, start: int, sources: list[int], context_frames: int,
                depth_known: bool = True, truth: Frames | None = None, generated: range = range(0),
                generated_confidence: float = 1.0) -> Window:
    """The network inputs of frames ``start .. start+context+TARGET`` with mosaics warped from ``sources``.

    The clean targets come from ``truth`` when given (a self-forced episode's targets are the true frames);
    sources among the ``generated`` frames cover their pixels with ``generated_confidence``, as in a rollout.
    """
    c = context_frames
    frames = slice(start, start + c + TARGET_FRAMES)
    rgb = episode.rgb[frames].float() / 255
    depth = episode.depth[frames]
    c2w = episode.c2w[frames]
    src = torch.tensor(sources, dtype=torch.long)
    confidence = torch.tensor([generated_confidence if s in generated else 1.0 for s in sources])
    warped = warp_frames(episode.rgb[src].float() / 255, episode.depth[src], episode.c2w[src], episode.K, c2w[c:],
                         confidence)
    if sources:
        warped = warped.fill_holes(rgb[c - 1], depth[c - 1])
    conditioning = build_conditioning(rgb[:c], depth[:c], c2w[:c], c2w[c:], episode.K, warped, depth_known)
    truth = episode if truth is None else truth
    targets = slice(start + c, start + c + TARGET_FRAMES)
    clean = torch.cat([conditioning.context, encode_rgbd(truth.rgb[targets].float() / 255, truth.depth[targets])])
    return Window(clean, conditioning.mosaic, conditioning.rays)
