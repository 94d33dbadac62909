"""Generate ``come-episode/1`` files from a simulator, deterministic by seed.

    python -m memory.data.sim.generate --sim memory_maze --seeds 0 1 2 --frames 100 --size 64 --context-frames 50 --out DIR
    python -m memory.data.sim.generate --sim memory_maze --maze 15 --seeds 0 --out DIR   # another maze size
    python -m memory.data.sim.generate --sim miniworld --env fourrooms --walk look_around --seeds 0 --out DIR

``--env NAME`` (``--sim miniworld`` only) renders a registered MiniWorld environment instead of the
rooms maze: oneroom, oneroom_s6, hallway, tmaze, ymaze, fourrooms, threerooms, maze, maze_s2, maze_s3,
sidewalk, wallgap, putnext, pickup, collecthealth, roomobjects, sign (``ENV_NAMES``, the keys of
``miniworld.ENVS``; registered ids left out and why: ``miniworld.LEFT_OUT``). ``--walk`` picks the walk style: default, varied, turn_in_place,
look_around, loop (``trajectories.WALKS``).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from ...limits import MAX_IMAGE_SIDE, MAX_PATH_FRAMES
from ..episode import Episode, write_episode
from . import SIMULATORS, load_simulator
from .trajectories import WALKS, make_walk

# The keys of miniworld.ENVS, here so that --help lists them without importing MiniWorld.
ENV_NAMES = ("oneroom", "oneroom_s6", "hallway", "tmaze", "ymaze", "fourrooms", "threerooms", "maze", "maze_s2", "maze_s3",
             "sidewalk", "wallgap", "putnext", "pickup", "collecthealth", "roomobjects", "sign")

_WALK_TEXT = {
    "default": "a scripted walker explores for {context} frames, then walks back along its track and re-walks it (revisits), then explores on",
    "varied": "a scripted walker explores for {context} frames at a speed that changes per leg (0.5x to 2x), then walks back along its track and re-walks it (revisits), then explores on",
    "turn_in_place": "a scripted walker explores for {context} frames, turning a full circle on the spot at every goal, then walks back along its track and re-walks it (revisits), then explores on",
    "look_around": "a scripted walker explores for {context} frames, stopping at every goal to pan left and right, then walks back along its track and re-walks it (revisits), then explores on",
    "loop": "a scripted walker walks long loops through novel places that each come back to the start, and ends at the start ({context} frames observed)",
}


def generate_episode(sim: str, seed: int, frames: int = 100, size: int = 64, context_frames: int | None = None,
                     maze: int | None = None, env: str | None = None, walk: str = "default") -> Episode:
    """Render one episode of ``frames`` frames in simulator ``sim`` (layout and walk chosen by ``seed``).

    ``maze`` is the maze's size in cells (Memory Maze: 9, 11, 13 or 15) or rooms (MiniWorld) a side; None is the simulator's default.
    ``env`` names a registered MiniWorld environment (``miniworld.ENVS``) instead; ``walk`` is one of ``trajectories.WALKS``.
    """
    context = frames // 2 if context_frames is None else context_frames
    if not 2 <= frames <= MAX_PATH_FRAMES or not 1 <= context < frames:
        raise ValueError(f"generate: need frames in 2..{MAX_PATH_FRAMES} and context_frames in [1, frames), "
                         f"got frames={frames}, context_frames={context}.")
    if not 8 <= size <= MAX_IMAGE_SIDE:
        raise ValueError(f"generate: size must be 8..{MAX_IMAGE_SIDE} pixels, got {size}.")
    if walk not in WALKS:
        raise ValueError(f"--walk: unknown walk style '{walk}'; choose one of {', '.join(WALKS)}.")
    module = load_simulator(sim)
    if env is None:
        scene = module.open_scene(seed, size, maze)
    elif sim != "miniworld":
        raise ValueError(f"--env: only --sim miniworld has named environments, got --sim {sim}.")
    elif maze is not None:
        raise ValueError(f"--env: an environment fixes its own layout; leave out --maze (got --maze {maze} with --env {env}).")
    else:
        scene = module.open_env_scene(env, seed, size)
    path = make_walk(walk, scene.grid, frames, context, seed, speed=scene.speed, turn_deg=scene.turn_deg)
    views = [scene.render(xy, float(yaw)) for xy, yaw in zip(path.xy, path.yaw)]
    return Episode(
        rgb=torch.from_numpy(np.stack([v.rgb for v in views])),
        depth=torch.from_numpy(np.stack([v.depth for v in views])),
        c2w=torch.from_numpy(np.stack([v.c2w for v in views])),
        K=scene.K,
        actions=torch.from_numpy(path.actions),
        source=scene.source,
        seed=seed,
        context_frames=context,
        description=(
            f"{sim} seed {seed}: {frames} frames at {size}x{size}; {_WALK_TEXT[walk].format(context=context)}. "
            "actions use Memory Maze's ids (0 noop, 1 forward, 2 left, 3 right, 4 forward+left, 5 forward+right); "
            "actions[t] is the move that led to frame t."
        ),
    )


def episode_name(sim: str, maze: int | None = None, env: str | None = None, walk: str = "default") -> str:
    """The file-name stem of an episode's world and walk, e.g. ``memory_maze_15x15`` or ``miniworld_fourrooms_loop``."""
    name = f"{sim}_{env}" if env is not None else sim if maze is None else f"{sim}_{maze}x{maze}"
    return name if walk == "default" else f"{name}_{walk}"


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
    parser.add_argument("--env", default=None, choices=ENV_NAMES, metavar="NAME",
                        help=f"--sim miniworld only: a registered environment instead of the rooms maze: {', '.join(ENV_NAMES)}")
    parser.add_argument("--walk", default="default", choices=WALKS,
                        help="walk style: default (explore, revisit, explore), varied (speed 0.5x-2x per leg), turn_in_place "
                             "(full turn at every goal), look_around (pan left/right at every goal), loop (loops back to the start)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    for seed in args.seeds:
        episode = generate_episode(args.sim, seed, args.frames, args.size, args.context_frames, args.maze, args.env, args.walk)
        path = write_episode(episode, args.out / f"{episode_name(args.sim, args.maze, args.env, args.walk)}_seed{seed}.safetensors")
        print(f"wrote {path} ({len(episode)} frames, context {episode.context_frames})")


if __name__ == "__main__":
    main()
