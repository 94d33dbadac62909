"""Generate a whole ``come-episode/1`` data set: every world the simulators offer, walk styles mixed.

    python -m memory.data.sim.dataset --out DIR --split train|validation [--frames 150] [--episodes-per-env N] [--size 64]

train: Memory Maze 9x9, 11x11 and 15x15, and every supported MiniWorld environment (``miniworld.ENVS``)
except the held-out ones. validation: whole environments the train split never sees: Memory Maze 13x13,
the MiniWorld rooms maze of 6 x 6 rooms (``generate --sim miniworld --maze 6``), and the MiniWorld
environments in ``VALIDATION``:

    fourrooms  four rooms in a ring (a loop of rooms: tests coming back round to a place seen before)
    wallgap    an open-sky outdoor yard with a building (tests sky and far geometry outdoors)

Episode k of a world uses seed k and walk style ``WALKS[(k + w) % 5]`` (w = the world's index), so each
world gets every style about equally often. Files go to ``DIR/<world>/<world>[_<walk>]_seed<k>.safetensors``;
files already there are skipped (the writer is atomic, so a file that exists is complete), so an
interrupted run resumes where it stopped. Progress, seconds per episode and an ETA are printed per episode.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from ..episode import write_episode
from .generate import ENV_NAMES, episode_name, generate_episode
from .trajectories import WALKS

SPLITS = ("train", "validation")
TRAIN_MEMORY_MAZES = (9, 11, 15)
VALIDATION_MEMORY_MAZE = 13
VALIDATION_ROOMS_MAZE = 6
VALIDATION = ("fourrooms", "wallgap")
DEFAULT_FRAMES = 150
DEFAULT_EPISODES = {"train": 30, "validation": 4}
# seeds per world in one run (about a day of rendering on one core)
MAX_EPISODES_PER_ENV = 10_000


@dataclass(frozen=True)
class World:
    """One environment of the data set: a simulator and its maze size or named MiniWorld environment."""

    sim: str
    maze: int | None = None
    env: str | None = None

    @property
    def name(self) -> str:
        """The folder and file-name stem of this world, e.g. ``memory_maze_15x15`` or ``miniworld_sidewalk``."""
        return episode_name(self.sim, self.maze, self.env)


def worlds(split: str) -> list[World]:
    """The worlds of ``split`` ('train' or 'validation'); the two share none."""
    if split == "train":
        return [World("memory_maze", maze=m) for m in TRAIN_MEMORY_MAZES] + [
            World("miniworld", env=e) for e in ENV_NAMES if e not in VALIDATION]
    if split == "validation":
        return [World("memory_maze", maze=VALIDATION_MEMORY_MAZE), World("miniworld", maze=VALIDATION_ROOMS_MAZE)] + [
            World("miniworld", env=e) for e in VALIDATION]
    raise ValueError(f"--split: unknown split '{split}'; choose one of {', '.join(SPLITS)}.")


def plan(split: str, episodes_per_env: int) -> list[tuple[World, int, str]]:
    """(world, seed, walk style) of every episode of ``split``, interleaved across worlds so that a partial run stays balanced."""
    if not 1 <= episodes_per_env <= MAX_EPISODES_PER_ENV:
        raise ValueError(f"--episodes-per-env: need 1..{MAX_EPISODES_PER_ENV}, got {episodes_per_env}.")
    chosen = worlds(split)
    return [(world, seed, WALKS[(seed + w) % len(WALKS)]) for seed in range(episodes_per_env) for w, world in enumerate(chosen)]


def episode_path(out: Path, world: World, seed: int, walk: str) -> Path:
    """Where the episode (``world``, ``seed``, ``walk``) of a data set in ``out`` is written."""
    return out / world.name / f"{episode_name(world.sim, world.maze, world.env, walk)}_seed{seed}.safetensors"


def generate_dataset(out: Path, split: str, frames: int = DEFAULT_FRAMES, episodes_per_env: int | None = None,
                     size: int = 64, context_frames: int | None = None) -> list[Path]:
    """Write every episode of ``split`` missing from ``out`` (printing progress); returns all the split's paths."""
    episodes = DEFAULT_EPISODES.get(split, 1) if episodes_per_env is None else episodes_per_env
    todo = plan(split, episodes)
    paths, started, made = [], time.monotonic(), 0
    missing = sum(not episode_path(out, *item).exists() for item in todo)
    print(f"{split}: {len(todo)} episodes of {frames} frames in {len(worlds(split))} worlds, {missing} to write, into {out}", flush=True)
    for world, seed, walk in todo:
        path = episode_path(out, world, seed, walk)
        paths.append(path)
        if path.exists():
            continue
        t = time.monotonic()
        episode = generate_episode(world.sim, seed, frames, size, context_frames, world.maze, world.env, walk)
        write_episode(episode, path)
        made += 1
        per = (time.monotonic() - started) / made
        print(f"[{made}/{missing}] {path.relative_to(out)}: {time.monotonic() - t:.1f} s "
              f"(mean {per:.1f} s/episode, ETA {per * (missing - made) / 60:.1f} min)", flush=True)
    print(f"{split}: done, {len(paths)} episodes in {out} ({made} written in {(time.monotonic() - started) / 60:.1f} min)", flush=True)
    return paths


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: generate (or finish generating) one split of the data set into ``--out``."""
    parser = argparse.ArgumentParser(description="Generate a whole come-episode/1 data set (resumable).")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--split", choices=SPLITS, required=True,
                        help=f"train: Memory Maze {', '.join(map(str, TRAIN_MEMORY_MAZES))} + MiniWorld envs but {', '.join(VALIDATION)}; "
                             f"validation: Memory Maze {VALIDATION_MEMORY_MAZE}, rooms maze {VALIDATION_ROOMS_MAZE}, {', '.join(VALIDATION)}")
    parser.add_argument("--frames", type=int, default=DEFAULT_FRAMES)
    parser.add_argument("--context-frames", type=int, default=None, help="observed frames (default: half)")
    parser.add_argument("--episodes-per-env", type=int, default=None,
                        help=f"episodes per world (default: {DEFAULT_EPISODES['train']} train, {DEFAULT_EPISODES['validation']} validation)")
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args(argv)
    generate_dataset(args.out, args.split, args.frames, args.episodes_per_env, args.size, args.context_frames)


if __name__ == "__main__":
    main()
