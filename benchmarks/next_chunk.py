"""Next-chunk quality of a world model on held-out episodes, next to repeat-last-frame and warp-only baselines.

    python benchmarks/next_chunk.py --episodes DIR --json OUT [--model FOLDER] [--windows N] [--steps S] [--seed K] [--threads N] [--quick]

For evenly spaced windows of the episodes under DIR (recursively): 4 ground-truth RGB-D context frames,
the model predicts the next 8 along the ground-truth cameras (``navigate`` with the 4 frames and their
depth as initial frames). Baselines on the same windows: the last context frame repeated, and the last
context frame warped with its depth into each target camera (holes filled by the repeated frame).
Writes OUT (top-level keys ``model_psnr``, ``repeat_last_psnr``, ``warp_only_psnr``, ``model_ssim``,
``depth_absrel``, ``model_covered_psnr`` and ``warp_only_covered_psnr`` (over the pixels the warp covers),
a per-simulator breakdown, a per-environment one (``by_environment``: model and warp-only
PSNR and SSIM, their differences, depth AbsRel) with ``worst_environment_psnr_minus_warp``, the numbers the
targets compare (``against_targets``), revisit-frame metrics and the depth AbsRel of each window) and a plot
next to it (.png). Each window is measured once: ``windows`` can be fewer than ``windows_requested`` when the
episodes hold fewer; episodes shorter than a window are left out and listed in ``skipped_episodes``.
Targets (issue 4, tightened by issue 10): model_psnr >= repeat_last_psnr + 3 dB, model_psnr >= warp_only_psnr
+ 1.0 dB, model_ssim >= warp_only_ssim, no environment more than 0.3 dB below warp-only, depth_absrel <= 0.10.
Started by torchrun, the processes share out the windows and rank 0 writes the files (the same figures).
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memory.files import write_json  # noqa: E402
from memory.limits import MAX_PATH_FRAMES, MAX_SEED, MAX_STEPS  # noqa: E402
from memory.world import rollout, world_model  # noqa: E402
from memory.geometry.camera import CameraPath  # noqa: E402
from memory.data.episode import Episode, read_episode, revisit_frames  # noqa: E402
from memory.metrics import depth_absrel, machine_info, masked_psnr, psnr, ssim  # noqa: E402
from memory.train.distributed import ONE_PROCESS, Ranks, joined  # noqa: E402
from memory.world.mosaic import warp_frames  # noqa: E402

# A sibling module: its folder is first on sys.path when this file runs as a script.
import plots  # noqa: E402

CONTEXT = 4
PREDICT = 8
DEFAULT_WINDOWS = 40
QUICK_WINDOWS = 2
QUICK_STEPS = 2
# torch threads a sweep may ask for: more than any machine it runs on has cores
MAX_THREADS = 1024
METHODS = ("model", "repeat_last", "warp_only")
COLOURS = {"model": "#d23c32", "repeat_last": "#969696", "warp_only": "#4682c8"}
TARGETS = {"model_minus_repeat_last_psnr_min_db": 3.0, "model_minus_warp_only_psnr_min_db": 1.0,
           "model_minus_warp_only_ssim_min": 0.0, "worst_environment_psnr_minus_warp_min_db": -0.3,
           "depth_absrel_max": 0.10}
# "memory-maze==1.0.3 MemoryMaze-13x13 (...)", "miniworld==2.1.0 Maze(num_rows=6, num_cols=6, room_size=3)":
# a versioned package, then the environment's class and its arguments
SOURCE = re.compile(r"([A-Za-z][\w.-]*)==\S+\s+([A-Za-z][\w-]*)(.*)")
# parts of a registered id that name no environment: a version ("-v0") or a size ("-13x13", read by SIZE)
ID_NOISE = re.compile(r"v\d+|\d+x\d+")
SIZE = (re.compile(r"-(\d+)x(\d+)\b"), re.compile(r"num_rows=(\d+),\s*num_cols=(\d+)"))


@dataclass(frozen=True)
class Prediction:
    """One method's predicted frames (a window's 8 targets): rgb [T,H,W,3] 0..1, depth [T,H,W] metres; warp-only's ``covered`` [T,H,W]."""

    rgb: torch.Tensor
    depth: torch.Tensor
    covered: torch.Tensor | None = None


def navigate_default(name: str) -> int:
    """A keyword default of ``rollout.navigate`` (the settings a user gets without choosing)."""
    return inspect.signature(rollout.navigate).parameters[name].default


def resolve_model(folder: Path | None) -> Path:
    """The model folder to benchmark: ``folder`` or the embedded default, with a clear error if neither exists."""
    if folder is not None:
        return folder
    default = getattr(world_model, "DEFAULT_MODEL", None)
    if default is None or not Path(default).is_dir():
        raise ValueError(f"--model: no embedded default model found (looked for {default}); "
                         "pass --model FOLDER (a diffusers folder written by save_pretrained).")
    return Path(default)


def simulator_of(episode: Episode) -> str:
    """The episode's source without package versions: one key per simulator environment (e.g. per maze size)."""
    return re.sub(r"==\S+", "", episode.source) or "unknown source"


def environment_of(episode: Episode) -> str:
    """A short name of the episode's environment, e.g. "memory_maze 13x13", "miniworld maze 6x6", "miniworld fourrooms".

    The simulator, the environment's class (left out when the simulator names its only one after itself)
    and the maze size; other constructor arguments (room size, flags) are not part of the name. A source
    of another shape is named by ``simulator_of``.
    """
    match = SOURCE.fullmatch(episode.source)
    if match is None:
        return simulator_of(episode)
    package, name, arguments = match.groups()
    simulator = package.lower().replace("-", "_")
    # a registered id ("MiniWorld-FourRooms-v0") names the simulator, the environment and a version
    names = [n.lower() for n in name.split("-") if n and not ID_NOISE.fullmatch(n)]
    parts = [simulator] + [n for n in names if n != simulator.replace("_", "")]
    size = SIZE[0].search(name + arguments) or SIZE[1].search(arguments)
    return " ".join(parts + ([f"{size[1]}x{size[2]}"] if size else []))


def window_starts(lengths: list[int], windows: int) -> list[tuple[int, int]]:
    """(episode index, start frame) of up to ``windows`` distinct windows, dealt round-robin over episodes, evenly spaced in each.

    An episode holds no more windows than it has start frames, so short episodes are never measured twice
    on the same frames; fewer windows than asked come back when all episodes together hold fewer.
    """
    usable = [i for i, n in enumerate(lengths) if n >= CONTEXT + PREDICT]
    if not usable:
        raise ValueError(f"--episodes: no episode has the {CONTEXT + PREDICT} frames a window needs.")
    room = {i: lengths[i] - CONTEXT - PREDICT + 1 for i in usable}
    counts = dict.fromkeys(usable, 0)
    left = windows
    while left and any(counts[i] < room[i] for i in usable):
        for i in usable:
            if left and counts[i] < room[i]:
                counts[i] += 1
                left -= 1
    starts = []
    for i, count in counts.items():
        # Centre the starts in equal segments so a single window does not always sit at frame 0.
        starts += [(i, int(room[i] * (j + 0.5) / count)) for j in range(count)]
    return starts


def check_frame_sizes(files: list[Path], episodes: list[Episode], model: world_model.WorldModel) -> None:
    """A ValueError naming ``--episodes`` and the first episode whose frame sides are not multiples of the model's patch size."""
    patch = int(model.network.config.patch_size)
    for file, episode in zip(files, episodes):
        if episode.height % patch or episode.width % patch:
            raise ValueError(f"--episodes: {file} has {episode.height}x{episode.width} frames; this model reads frames "
                             f"whose height and width are multiples of {patch} (its patch size): resize the episode "
                             "(scaling K with it) or move it out of the folder.")


def predict_model(model: world_model.WorldModel, episode: Episode, start: int, steps: int, seed: int) -> Prediction:
    """The model's 8 target frames given the 4 ground-truth RGB-D context frames of the window at ``start``."""
    frames = slice(start, start + CONTEXT)
    path = CameraPath(episode.c2w[start:start + CONTEXT + PREDICT], episode.K, episode.height, episode.width)
    chunks = list(rollout.navigate(model, episode.rgb[frames].float() / 255, episode.depth[frames], path,
                                       steps=steps, seed=seed))[1:]
    return Prediction(torch.cat([c.rgb for c in chunks]), torch.cat([c.depth for c in chunks]))


def predict_baselines(episode: Episode, start: int) -> dict[str, Prediction]:
    """Repeat-last-frame and warp-only (last context frame warped into each target, holes from repetition)."""
    last = start + CONTEXT - 1
    targets = episode.c2w[last + 1:last + 1 + PREDICT]
    rgb = episode.rgb[last].float() / 255
    return {"repeat_last": Prediction(rgb.expand(PREDICT, -1, -1, -1), episode.depth[last].expand(PREDICT, -1, -1)),
            "warp_only": warp_only(rgb, episode.depth[last], episode.c2w[last], episode.K, targets)}


def warp_only(rgb: torch.Tensor, depth: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor, targets: torch.Tensor) -> Prediction:
    """One frame rgb [H,W,3] (0..1) with depth [H,W] at camera c2w [4,4] warped into targets [T,4,4]; holes repeat the frame."""
    mosaic = warp_frames(rgb[None], depth[None], c2w[None], K, targets)
    covered = mosaic.mask > 0
    return Prediction(torch.where(covered[..., None], mosaic.rgb, rgb), torch.where(covered, mosaic.depth, depth), covered)


def frame_metrics(predictions: dict[str, Prediction], rgb: torch.Tensor, depth: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-target-frame PSNR, SSIM and depth AbsRel of every method vs ground truth rgb [8,H,W,3], depth [8,H,W].

    ``*_covered_psnr`` is the PSNR over the pixels the last context frame's warp covers: where geometry
    alone is right, a model must not be worse than warp-only.
    """
    covered = predictions["warp_only"].covered
    out = {"covered_share": covered.float().flatten(1).mean(1)}
    for name, pred in predictions.items():
        out[f"{name}_covered_psnr"] = masked_psnr(pred.rgb, rgb, covered)
        out[f"{name}_psnr"] = psnr(pred.rgb, rgb)
        out[f"{name}_ssim"] = ssim(pred.rgb, rgb)
        out[f"{name}_depth_absrel"] = depth_absrel(pred.depth, depth)
    return out


def summarise(rows: dict[str, torch.Tensor], keep: torch.Tensor) -> dict | None:
    """Means over the selected target frames (``keep`` [F] bool) of every per-frame metric; None if none selected."""
    if not bool(keep.any()):
        return None
    summary = {key: float(values[keep].nanmean()) for key, values in rows.items()}
    summary["depth_absrel"] = summary.pop("model_depth_absrel")
    summary["frames"] = int(keep.sum())
    return summary


def by_environment(per_frame: dict[str, torch.Tensor], environments: list[str]) -> dict[str, dict]:
    """Per environment: means over its target frames of model and warp-only PSNR and SSIM, their differences, depth AbsRel."""
    out = {}
    for name in sorted(set(environments)):
        s = summarise(per_frame, torch.tensor([e == name for e in environments]))
        out[name] = {"model_psnr": s["model_psnr"], "warp_only_psnr": s["warp_only_psnr"],
                     "model_minus_warp_only_psnr": s["model_psnr"] - s["warp_only_psnr"],
                     "model_ssim": s["model_ssim"], "warp_only_ssim": s["warp_only_ssim"],
                     "model_minus_warp_only_ssim": s["model_ssim"] - s["warp_only_ssim"],
                     "model_minus_warp_only_covered_psnr": s["model_covered_psnr"] - s["warp_only_covered_psnr"],
                     "depth_absrel": s["depth_absrel"], "frames": s["frames"]}
    return out


def against_targets(result: dict) -> dict:
    """The numbers TARGETS bounds, each with whether it meets its bound (a nan meets none)."""
    values = {"model_minus_repeat_last_psnr_db": result["model_psnr"] - result["repeat_last_psnr"],
              "model_minus_warp_only_psnr_db": result["model_psnr"] - result["warp_only_psnr"],
              "model_minus_warp_only_ssim": result["model_ssim"] - result["warp_only_ssim"],
              "worst_environment_psnr_minus_warp_db": result["worst_environment_psnr_minus_warp"],
              "depth_absrel": result["depth_absrel"]}
    bounds = {"model_minus_repeat_last_psnr_db": ("model_minus_repeat_last_psnr_min_db", 1),
              "model_minus_warp_only_psnr_db": ("model_minus_warp_only_psnr_min_db", 1),
              "model_minus_warp_only_ssim": ("model_minus_warp_only_ssim_min", 1),
              "worst_environment_psnr_minus_warp_db": ("worst_environment_psnr_minus_warp_min_db", 1),
              "depth_absrel": ("depth_absrel_max", -1)}  # 1: a lower bound, -1: an upper one
    met = {name: sign * (values[name] - TARGETS[target]) >= 0 for name, (target, sign) in bounds.items()}
    return {**values, "met": met, "all_met": all(met.values())}


def episode_files(folder: Path) -> list[Path]:
    """The episode files under ``folder`` (recursively, through linked folders), or a ValueError naming ``--episodes`` if there are none."""
    files, seen = [], set()
    for root, folders, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a linked folder already searched, or a link loop
            folders.clear()
            continue
        seen.add(real)
        # real folders before links, so a folder that is also linked keeps its own name
        folders.sort(key=lambda name: (os.path.islink(os.path.join(root, name)), name))
        files += [Path(root) / name for name in names if name.endswith(".safetensors")]
    if not files:
        raise ValueError(f"--episodes: no .safetensors episode files under {folder}; generate held-out episodes "
                         "with `python -m memory.data.sim.generate`.")
    return sorted(files)


def check_options(parser: argparse.ArgumentParser, options: dict[str, tuple[int | None, int, int]]) -> None:
    """A usage error naming the first option whose value (None: not given) lies outside its low..high."""
    for option, (value, low, high) in options.items():
        if value is not None and value < low:
            parser.error(f"{option} must be at least {low}, got {value}")
        if value is not None and value > high:
            parser.error(f"{option} must be at most {high}, got {value}")


def run_sweep(parser: argparse.ArgumentParser, out: Path, run: Callable[[Ranks], tuple[dict, object]],
              plot: Callable[[dict, object, Path], None]) -> dict | None:
    """``run`` as this process of a torchrun job (or alone), a ValueError a usage error; rank 0 writes ``out`` and its plot.

    Returns the result on rank 0 and None on the others, which only measured their share.
    """
    with joined() as ranks:
        try:
            result, shown = run(ranks)
        except ValueError as err:
            parser.error(str(err))
    if not ranks.main:
        return None
    write_json(out, result)
    plot(result, shown, out.with_suffix(".png"))
    return result


def measure_window(model: world_model.WorldModel, episode: Episode, start: int, steps: int, seed: int,
                   keep_frames: bool) -> dict:
    """One window's per-frame metrics of every method and its seconds; with ``keep_frames`` its frames for the plot too."""
    tick = time.perf_counter()
    predictions = {"model": predict_model(model, episode, start, steps, seed), **predict_baselines(episode, start)}
    seconds = time.perf_counter() - tick
    truth = slice(start + CONTEXT, start + CONTEXT + PREDICT)
    frames = {"context": episode.rgb[start:start + CONTEXT].float() / 255, "truth": episode.rgb[truth].float() / 255,
              **{name: p.rgb for name, p in predictions.items()}} if keep_frames else None
    return {"metrics": frame_metrics(predictions, episode.rgb[truth].float() / 255, episode.depth[truth]),
            "seconds": seconds, "frames": frames}


def run(folder: Path, model_folder: Path, windows: int, steps: int, seed: int,
        ranks: Ranks = ONE_PROCESS) -> tuple[dict, dict]:
    """All measurements as a JSON-ready dict, and the frames of one window for the plot; the windows dealt over ``ranks``."""
    started = time.perf_counter()
    found = episode_files(folder)
    read = [read_episode(f) for f in found]
    # too short for a window: said, listed in the results, and left out of them
    fits = [len(e) >= CONTEXT + PREDICT for e in read]
    skipped = [str(f) for f, fit in zip(found, fits) if not fit]
    files, episodes = [f for f, fit in zip(found, fits) if fit], [e for e, fit in zip(read, fits) if fit]
    if skipped and files and ranks.main:
        print(f"next_chunk: left out {len(skipped)} episode(s) shorter than the {CONTEXT + PREDICT} frames a window "
              f"needs: {', '.join(skipped)}", file=sys.stderr)
    model = world_model.load_world_model(model_folder, device=ranks.device)
    check_frame_sizes(files, episodes, model)
    starts = window_starts([len(e) for e in episodes], windows)
    if len(starts) < windows and ranks.main:
        print(f"next_chunk: the episodes hold {len(starts)} distinct windows, fewer than the {windows} asked; "
              f"measuring those {len(starts)}", file=sys.stderr)
    middle = len(starts) // 2
    measured = ranks.deal(starts, lambda w, window: measure_window(model, episodes[window[0]], window[1], steps,
                                                                   seed + w, w == middle))
    rows: dict[str, list[torch.Tensor]] = {}
    sims, environments, revisit, offset = [], [], [], []
    for (i, start), window in zip(starts, measured):
        episode = episodes[i]
        for key, values in window["metrics"].items():
            rows.setdefault(key, []).append(values)
        revisits = set(revisit_frames(episode))
        revisit += [t in revisits for t in range(start + CONTEXT, start + CONTEXT + PREDICT)]
        sims += [simulator_of(episode)] * PREDICT
        environments += [environment_of(episode)] * PREDICT
        offset += list(range(1, PREDICT + 1))
    shown = {**measured[middle]["frames"], "file": str(files[starts[middle][0]]), "start": starts[middle][1]}
    window_seconds = [window["seconds"] for window in measured]
    per_frame = {key: torch.cat(values) for key, values in rows.items()}
    everything = torch.ones(len(sims), dtype=torch.bool)
    result = summarise(per_frame, everything)
    offsets = torch.tensor(offset)
    environment_rows = by_environment(per_frame, environments)
    worst = min(environment_rows, key=lambda name: environment_rows[name]["model_minus_warp_only_psnr"])
    result.update({
        "targets": TARGETS,
        "by_simulator": {sim: summarise(per_frame, torch.tensor([s == sim for s in sims])) for sim in sorted(set(sims))},
        "by_environment": environment_rows,
        "worst_environment": worst,
        "worst_environment_psnr_minus_warp": environment_rows[worst]["model_minus_warp_only_psnr"],
        # the sources each environment name stands for, so a name that folds two sources together shows it
        "environment_sources": {name: sorted({s for s, e in zip(sims, environments) if e == name})
                                for name in environment_rows},
        "revisit": summarise(per_frame, torch.tensor(revisit)),
        "revisit_definition": "target frames t >= the episode's context_frames whose camera is within 1.0 m and 30 deg "
                              "of yaw of a frame before context_frames (memory.data.episode.revisit_frames); the model "
                              "itself only sees the window's 4 context frames",
        "model_psnr_by_frames_ahead": [float(per_frame["model_psnr"][offsets == k].mean()) for k in range(1, PREDICT + 1)],
        "warp_only_psnr_by_frames_ahead": [float(per_frame["warp_only_psnr"][offsets == k].mean())
                                           for k in range(1, PREDICT + 1)],
        # a few windows whose camera turns into unseen space carry much of the mean: show the spread
        "depth_absrel_by_window": per_frame["model_depth_absrel"].view(-1, PREDICT).nanmean(1).tolist(),
        "windows": len(starts),
        "context_frames": CONTEXT,
        "predicted_frames": PREDICT,
        "steps": steps,
        "chunk": navigate_default("chunk"),
        "seed": seed,
        "model": str(model_folder),
        "episodes": [str(f) for f in files],
        "skipped_episodes": skipped,
        "windows_requested": windows,
        "window_starts": [[str(files[i].relative_to(folder)), s] for i, s in starts],
        "metrics_note": "means over all predicted frames of per-frame PSNR (dB, MSE capped at 1e-10), SSIM "
                        "(kornia, 11x11 window) and depth AbsRel (mean |pred - gt| / gt over pixels with gt > 0)",
        "seconds_per_window_mean": sum(window_seconds) / len(window_seconds),
        "machine": machine_info(),
        "processes": ranks.world_size,
        "wall_seconds": time.perf_counter() - started,
    })
    result["against_targets"] = against_targets(result)
    return result, shown


def plot(result: dict, shown: dict, path: Path) -> None:
    """PNG: bars of the three mean PSNRs, and one window's frames (context | truth, model, warp-only, repeat-last)."""
    bar_ax, sheet_ax = plots.figure(9, 6.4).subplots(2, 1, height_ratios=[1, 1.1])
    plots.bars(bar_ax, list(METHODS), [result[f"{m}_psnr"] for m in METHODS], "{:.2f}", [COLOURS[m] for m in METHODS])
    bar_ax.set_ylabel("PSNR (dB)")
    bar_ax.set_title(f"mean PSNR over {result['windows']} windows x {PREDICT} frames; model SSIM "
                     f"{result['model_ssim']:.3f}, depth AbsRel {result['depth_absrel']:.3f}; steps {result['steps']}",
                     fontsize=9)
    strip_rows = ["truth", "model", "warp_only", "repeat_last"]
    plots.show_frames(sheet_ax, torch.cat([torch.cat([shown["context"], shown[r]]) for r in strip_rows]),
                      CONTEXT + PREDICT, f"{Path(shown['file']).name} frames {shown['start']}.."
                      f"{shown['start'] + CONTEXT + PREDICT - 1}: {CONTEXT} context | {PREDICT} predicted")
    h, w = (n + plots.GAP for n in shown["truth"].shape[1:3])
    sheet_ax.set_yticks([r * h + h / 2 for r in range(len(strip_rows))], strip_rows)
    sheet_ax.axvline(CONTEXT * w - plots.GAP / 2 - 0.5, color="black", linewidth=1)
    plots.save(sheet_ax.figure, path)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", required=True, type=Path,
                        help="folder of come-episode/1 files (searched recursively; every .safetensors file in it "
                             f"must be one), frame sides multiples of the model's patch size (8 for the embedded "
                             f"model); episodes shorter than {CONTEXT + PREDICT} frames are left out and listed")
    parser.add_argument("--json", required=True, type=plots.json_output, help=plots.JSON_HELP)
    parser.add_argument("--model", type=Path, default=None, help="world model folder (default: the embedded model)")
    parser.add_argument("--windows", type=int, default=None, help=f"number of windows (default {DEFAULT_WINDOWS}; at most one per start frame of the episodes)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps per chunk (default: navigate's)")
    parser.add_argument("--seed", type=int, default=0, help="noise seed of the first window (window w uses seed + w)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's; 1 is faster while another job loads the CPU)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke test: {QUICK_WINDOWS} windows and {QUICK_STEPS} steps unless given")
    args = parser.parse_args()
    windows = args.windows if args.windows is not None else QUICK_WINDOWS if args.quick else DEFAULT_WINDOWS
    steps = args.steps if args.steps is not None else QUICK_STEPS if args.quick else navigate_default("steps")
    check_options(parser, {"--windows": (windows, 1, MAX_PATH_FRAMES), "--steps": (steps, 1, MAX_STEPS),
                           "--seed": (args.seed, 0, MAX_SEED), "--threads": (args.threads, 1, MAX_THREADS)})
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if not args.episodes.is_dir():
        parser.error(f"--episodes: {args.episodes} is not a folder")
    result = run_sweep(parser, args.json,
                       lambda ranks: run(args.episodes, resolve_model(args.model), windows, steps, args.seed, ranks), plot)
    if result is None:
        return
    print(json.dumps({k: result[k] for k in ("model_psnr", "repeat_last_psnr", "warp_only_psnr", "model_ssim",
                                             "depth_absrel", "worst_environment_psnr_minus_warp", "windows",
                                             "wall_seconds")}))
    print(json.dumps({name: round(row["model_minus_warp_only_psnr"], 3) for name, row in result["by_environment"].items()}))


if __name__ == "__main__":
    main()
