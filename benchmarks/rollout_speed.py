"""Rollout speed of the base world model: 64 generated frames at 64x64 along the sample episode's cameras.

    python benchmarks/rollout_speed.py --json OUT [--model FOLDER] [--steps S] [--chunk C] [--given-depth] [--threads N]

Starts from the sample episode's first frame (image only, so its depth is predicted first, as for any
image; ``--given-depth`` passes the episode's depth instead) and generates the next 64 frames with
``navigate`` (its default steps and chunk unless given), timed after a warm-up rollout. Writes OUT
(``seconds_64_frames``, steps, chunk, per-chunk seconds, machine) and a contact sheet next to it (.png):
generated frames left, ground truth right. Target (issue 4): seconds_64_frames <= 30.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Sibling modules: their folder is first on sys.path when this file runs as a script.
import plots  # noqa: E402
from next_chunk import navigate_default, resolve_model  # noqa: E402

from memory.files import write_json  # noqa: E402
from memory.world import world_model  # noqa: E402
from memory.world.rollout import navigate  # noqa: E402
from memory.geometry.camera import CameraPath  # noqa: E402
from memory.data.episode import SAMPLE_EPISODE, read_episode  # noqa: E402
from memory.metrics import machine_info, psnr  # noqa: E402

FRAMES = 64
INITIAL = 1
TARGET_SECONDS = 30.0
SHEET_COLUMNS = 8


def rollout(model: world_model.WorldModel, rgb: torch.Tensor, depth: torch.Tensor | None, path: CameraPath,
            chunk: int, steps: int) -> tuple[torch.Tensor, list[float]]:
    """Generated frames [T,H,W,3] along ``path`` after the initial ``rgb``, and the seconds each yield took."""
    seconds, frames = [], []
    tick = time.perf_counter()
    for out in navigate(model, rgb, depth, path, chunk=chunk, steps=steps):
        seconds.append(time.perf_counter() - tick)
        frames.append(out.rgb)
        tick = time.perf_counter()
    return torch.cat(frames[1:]), seconds


def run(model_folder: Path, steps: int, chunk: int, given_depth: bool) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """The timed rollout as a JSON-ready dict, the generated frames and the ground-truth frames."""
    episode = read_episode(SAMPLE_EPISODE)
    if len(episode) < INITIAL + FRAMES:
        raise ValueError(f"{SAMPLE_EPISODE}: {len(episode)} frames, the benchmark needs {INITIAL + FRAMES}.")
    model = world_model.load_world_model(model_folder)
    rgb = episode.rgb[:INITIAL].float() / 255
    depth = episode.depth[:INITIAL] if given_depth else None
    path = CameraPath(episode.c2w[:INITIAL + FRAMES], episode.K, episode.height, episode.width)
    warm = time.perf_counter()
    rollout(model, rgb, depth, CameraPath(path.c2w[:INITIAL + chunk], path.K, path.height, path.width), chunk, steps)
    warmup_seconds = time.perf_counter() - warm
    start = time.perf_counter()
    generated, per_chunk = rollout(model, rgb, depth, path, chunk, steps)
    seconds = time.perf_counter() - start
    truth = episode.rgb[INITIAL:INITIAL + FRAMES].float() / 255
    result = {
        "seconds_64_frames": seconds,
        "target_seconds": TARGET_SECONDS,
        "frames": len(generated),
        "image_size": [episode.height, episode.width],
        "steps": steps,
        "chunk": chunk,
        "initial_frames": INITIAL,
        "initial_depth": "given (episode depth)" if given_depth else "predicted by the model (image only)",
        "per_chunk_seconds": per_chunk[1:],
        "initial_yield_seconds": per_chunk[0],
        "warmup_seconds": warmup_seconds,
        "frames_per_second": len(generated) / seconds,
        "psnr_vs_truth_mean_db": float(psnr(generated, truth).mean()),
        "episode": str(SAMPLE_EPISODE),
        "model": str(model_folder),
        "load_average_1min": os.getloadavg()[0],
        "machine": machine_info(),
    }
    return result, generated, truth


def plot(generated: torch.Tensor, truth: torch.Tensor, path: Path) -> None:
    """Contact sheet PNG: the generated frames (left) next to the ground-truth frames (right), row-major."""
    generated_ax, truth_ax = plots.figure(10, 5.4).subplots(1, 2)
    plots.show_frames(generated_ax, generated, SHEET_COLUMNS, f"generated ({len(generated)} frames)")
    plots.show_frames(truth_ax, truth, SHEET_COLUMNS, "ground truth")
    plots.save(truth_ax.figure, path)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", required=True, type=plots.json_output,
                        help="output JSON file (a .png contact sheet is written next to it)")
    parser.add_argument("--model", type=Path, default=None, help="world model folder (default: the embedded model)")
    parser.add_argument("--steps", type=int, default=navigate_default("steps"), help="denoising steps per chunk")
    parser.add_argument("--chunk", type=int, default=navigate_default("chunk"), help="frames generated per chunk")
    parser.add_argument("--given-depth", action="store_true", help="pass the first frame's depth instead of predicting it")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's; 1 is faster while another job loads the CPU)")
    args = parser.parse_args()
    if args.steps < 1 or args.chunk < 1:
        parser.error("--steps and --chunk must be at least 1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        result, generated, truth = run(resolve_model(args.model), args.steps, args.chunk, args.given_depth)
    except ValueError as err:
        parser.error(str(err))
    write_json(args.json, result)
    plot(generated, truth, args.json.with_suffix(".png"))
    print(json.dumps({k: result[k] for k in ("seconds_64_frames", "steps", "chunk", "initial_depth")}))


if __name__ == "__main__":
    main()
