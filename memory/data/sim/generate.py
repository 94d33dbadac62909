"""Generate ``come-episode/1`` files from a simulator, deterministic by seed.

    python -m memory.data.sim.generate --sim memory_maze --seeds 0 1 2 --frames 100 --size 64 --context-frames 50 --out DIR
    python -m memory.data.sim.generate --sim memory_maze --maze 15 --seeds 0 --out DIR   # another maze size
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from ..episode import Episode, write_episode
from . import SIMULATORS, load_simulator
from .trajectories import explore_and_revisit


def generate_episode(sim: str, seed: int, frames: int = 100, size: int = 64, context_frames: int | None = None,
                     maze: int | None = None) -> Episode:
    """Render one explore-then-revisit episode of ``frames`` frames in simulator ``sim`` (layout and walk chosen by ``seed``).

    ``maze`` is the maze's size in cells (Memory Maze: 9, 11, 13 or 15) or rooms (MiniWorld) a side; None is the simulator's default.
    """
    context = frames // 2 if context_frames is None else context_frames
    if frames < 2 or not 1 <= context < frames:
        raise ValueError(f"generate: need frames >= 2 and context_frames in [1, frames), got frames={frames}, context_frames={context}.")
    if size < 8:
        raise ValueError(f"generate: size must be at least 8 pixels, got {size}.")
    scene = load_simulator(sim).open_scene(seed, size, maze)
    walk = explore_and_revisit(scene.grid, frames, context, seed, speed=scene.speed, turn_deg=scene.turn_deg)
    views = [scene.render(xy, float(yaw)) for xy, yaw in zip(walk.xy, walk.yaw)]
    return Episode(
        rgb=torch.from_numpy(np.stack([v.rgb for v in views])),
        depth=torch.from_numpy(np.stack([v.depth for v in views])),
        c2w=torch.from_numpy(np.stack([v.c2w for v in views])),
        K=scene.K,
        actions=torch.from_numpy(walk.actions),
        source=scene.source,
        seed=seed,
        context_frames=context,
        description=(
            f"{sim} seed {seed}: {frames} frames at {size}x{size}; a scripted walker explores for {context} frames, "
            "then walks back along its track and re-walks it (revisits), then explores on. "
            "actions use Memory Maze's ids (0 noop, 1 forward, 2 left, 3 right, 4 forward+left, 5 forward+right); "
            "actions[t] is the move that led to frame t."
        ),
    )


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: write one episode per seed into ``--out``."""
    parser = argparse.ArgumentParser(description="Generate come-episode/1 files from a simulator.")
    parser.add_argument("--sim", choices=SIMULATORS, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--context-frames", type=int, default=None, help="observed frames (default: half)")
    parser.add_argument("--maze", type=int, default=None,
                        help="maze size a side: Memory Maze cells 9/11/13/15 (default 9), MiniWorld rooms >= 2 (default 4)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    for seed in args.seeds:
        episode = generate_episode(args.sim, seed, args.frames, args.size, args.context_frames, args.maze)
        name = args.sim if args.maze is None else f"{args.sim}_{args.maze}x{args.maze}"
        path = write_episode(episode, args.out / f"{name}_seed{seed}.safetensors")
        print(f"wrote {path} ({len(episode)} frames, context {episode.context_frames})")


if __name__ == "__main__":
    main()
