"""Drift of the base world model over long rollouts: colour, sharpness and fidelity of its frames, bin by bin.

    python benchmarks/drift.py --episodes DIR --json OUT [--model FOLDER] [--max-frames N] [--bin B] [--steps S]
        [--seed K] [--threads N]

For every come-episode/1 file under DIR (recursively) the base model (``navigate``) starts from the
episode's first frame with its true depth and generates every later frame along the recorded cameras
(at most ``--max-frames``), from generated frames only. Generated frames are binned by frame index:
bin b holds frames b*B .. b*B+B-1 (frame 0 is given, so bin 0 has one frame fewer). Per bin:

- ``psnr``, ``ssim``: means over the bin's frames vs the true frames
- ``sharpness_ratio``: mean absolute image gradient of the generated frames over that of the true frames
  (< 1 blurrier, > 1 sharper or noisier)
- ``histogram_intersection``: the 8x8x8-bin RGB histogram of the bin's generated frames intersected with that
  of all the episode's true frames (1 = the episode's colours in its proportions; drift lowers it)
- ``true_histogram_intersection``: the same for the bin's true frames, what a perfect model would score
- ``warp_only_histogram_intersection``, ``warp_only_psnr``: the same for a rollout with no model, the first frame
  warped with its true depth into every camera (holes repeat the first frame): what the observed frame alone
  scores, as ``warp_only`` in next_chunk.py

Writes OUT (top-level ``histogram_intersection_mean`` over all bins of all episodes, ``sharpness_ratio_median``
over them, ``warp_only_histogram_intersection_mean`` and the other metrics' means, ``by_simulator.<environment>``,
``bins`` (per bin index across episodes), ``episodes`` (per-episode bins), ``targets``, ``against_targets``,
settings, machine, wall seconds) and a plot next to it (.png): true vs generated frames at the end of bins for the
first episode of each environment, and each metric over the bins per environment.
Targets (issue 10): histogram_intersection_mean >= 0.65, sharpness_ratio_median in [0.8, 1.25].
Started by torchrun, the processes share out the episodes and rank 0 writes the files (the same figures).
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memory.data.episode import Episode, read_episode  # noqa: E402
from memory.limits import MAX_PATH_FRAMES, MAX_SEED, MAX_STEPS  # noqa: E402
from memory.metrics import HISTOGRAM_BINS, histogram_intersection, machine_info, psnr, sharpness_ratio, ssim  # noqa: E402
from memory.train.distributed import ONE_PROCESS, Ranks  # noqa: E402
from memory.world import rollout  # noqa: E402
from memory.world.world_model import WorldModel, load_world_model  # noqa: E402

# Sibling modules: their folder is first on sys.path when this file runs as a script.
import plots  # noqa: E402
from next_chunk import (MAX_THREADS, check_frame_sizes, check_options, episode_files, environment_of,  # noqa: E402
                        navigate_default, resolve_model, run_sweep, warp_only)

DEFAULT_BIN = 25
METRICS = ("psnr", "ssim", "sharpness_ratio", "histogram_intersection", "true_histogram_intersection",
           "warp_only_histogram_intersection", "warp_only_psnr")
TARGETS = {"histogram_intersection_mean_min": 0.65, "sharpness_ratio_range": [0.8, 1.25]}
SHEET_EPISODES = 3  # the first episode of each environment, up to this many
SHEET_BINS = 8


def generate(model: WorldModel, episode: Episode, stop: int, steps: int, seed: int) -> torch.Tensor:
    """Frames 1..stop-1 [stop-1,H,W,3] of the base model started from frame 0 and its true depth, along the recorded cameras."""
    run = rollout.navigate(model, episode.rgb[:1].float() / 255, episode.depth[:1], episode.cameras.slice(0, stop),
                           steps=steps, seed=seed)
    return torch.cat([chunk.rgb for chunk in list(run)[1:]])


def warp_first_frame(episode: Episode, stop: int) -> torch.Tensor:
    """Frames 1..stop-1 [stop-1,H,W,3] of the warp-only rollout: frame 0 warped with its true depth, holes repeat it."""
    return warp_only(episode.rgb[0].float() / 255, episode.depth[0], episode.c2w[0], episode.K,
                     episode.c2w[1:stop]).rgb


def episode_bins(generated: torch.Tensor, warped: torch.Tensor, episode: Episode, size: int) -> list[dict]:
    """METRICS of each bin of ``size`` frame indices, for generated and warp-only frames [N,H,W,3] of frames 1..N of ``episode``."""
    truth = episode.rgb.float() / 255
    rows = []
    for index in range(len(generated) // size + 1):
        first, stop = max(index * size, 1), min((index + 1) * size, len(generated) + 1)
        if first >= stop:  # bin 0 of one-frame bins holds only the given frame
            continue
        fake, warp, true = generated[first - 1:stop - 1], warped[first - 1:stop - 1], truth[first:stop]
        rows.append({"bin": index, "start": first, "stop": stop, "frames": stop - first,
                     "psnr": float(psnr(fake, true).mean()), "ssim": float(ssim(fake, true).mean()),
                     "sharpness_ratio": sharpness_ratio(fake, true),
                     "histogram_intersection": histogram_intersection(fake, truth),
                     "true_histogram_intersection": histogram_intersection(true, truth),
                     "warp_only_histogram_intersection": histogram_intersection(warp, truth),
                     "warp_only_psnr": float(psnr(warp, true).mean())})
    return rows


def finite(values: list[float]) -> list[float]:
    """The values that are not nan (a bin whose true frames are flat has no sharpness ratio)."""
    return [v for v in values if not math.isnan(v)]


def summarise(rows: list[dict]) -> dict:
    """Means over bin rows of every metric but the sharpness ratio, and the median sharpness ratio."""
    ratios = finite([r["sharpness_ratio"] for r in rows])
    out = {f"{key}_mean": statistics.fmean(r[key] for r in rows) for key in METRICS if key != "sharpness_ratio"}
    return {**out, "sharpness_ratio_median": statistics.median(ratios) if ratios else math.nan, "bin_count": len(rows)}


def bin_means(episodes: list[list[dict]]) -> list[dict]:
    """Per bin index: its frame range over the episodes, how many episodes reach it, and the mean of each metric."""
    out = []
    for index in sorted({r["bin"] for rows in episodes for r in rows}):
        rows = [r for bins in episodes for r in bins if r["bin"] == index]
        means = {key: statistics.fmean(finite([r[key] for r in rows]) or [math.nan]) for key in METRICS}
        out.append({"bin": index, "start": min(r["start"] for r in rows), "stop": max(r["stop"] for r in rows),
                    "episodes": len(rows), **means})
    return out


def meets(summary: dict) -> dict:
    """Whether a summary meets each target (a nan meets none)."""
    low, high = TARGETS["sharpness_ratio_range"]
    met = {"histogram_intersection_mean": summary["histogram_intersection_mean"] >= TARGETS["histogram_intersection_mean_min"],
           "sharpness_ratio_median": low <= summary["sharpness_ratio_median"] <= high}
    return {**met, "all_met": all(met.values())}


def sheet_episodes(episodes: list[Episode]) -> list[int]:
    """The indices of the episodes the plot shows: the first of each environment, up to SHEET_EPISODES."""
    first: dict[str, int] = {}
    for i, episode in enumerate(episodes):
        first.setdefault(environment_of(episode), i)
    return list(first.values())[:SHEET_EPISODES]


def run(folder: Path, model_folder: Path, size: int, steps: int, seed: int, max_frames: int | None,
        ranks: Ranks = ONE_PROCESS) -> tuple[dict, list]:
    """All measurements as a JSON-ready dict, and true and generated frames at the end of bins of each environment's first episode.

    The episodes are dealt over ``ranks``.
    """
    started = time.perf_counter()
    files = episode_files(folder)
    episodes = [read_episode(f) for f in files]
    model = load_world_model(model_folder, device=ranks.device)
    check_frame_sizes(files, episodes, model)
    sheets = sheet_episodes(episodes)

    def measure(i: int, f: Path) -> tuple[dict, dict | None]:
        """Episode ``i``'s row of bins, and its sheet frames if the plot shows it."""
        episode = episodes[i]
        stop = len(episode) if max_frames is None else min(len(episode), 1 + max_frames)
        tick = time.perf_counter()
        generated = generate(model, episode, stop, steps, seed + i)
        seconds = time.perf_counter() - tick
        bins = episode_bins(generated, warp_first_frame(episode, stop), episode, size)
        row = {"file": str(f), "source": episode.source, "environment": environment_of(episode),
               "frames": len(generated), "seconds": seconds, "bins": bins}
        return row, sheet_frames(f, episode, generated, bins) if i in sheets else None

    measured = ranks.deal(files, measure)
    per_episode = [row for row, _ in measured]
    shown = [sheet for _, sheet in measured if sheet is not None]
    rows = [r for e in per_episode for r in e["bins"]]
    environments = sorted({e["environment"] for e in per_episode})
    by_environment = {}
    for name in environments:
        mine = [e["bins"] for e in per_episode if e["environment"] == name]
        by_environment[name] = {**summarise([r for bins in mine for r in bins]), "episodes": len(mine),
                                "sources": sorted({e["source"] for e in per_episode if e["environment"] == name}),
                                "bins": bin_means(mine)}
    overall = summarise(rows)
    result = {
        **overall,
        "by_simulator": by_environment,
        "bins": bin_means([e["bins"] for e in per_episode]),
        "episodes": per_episode,
        "targets": TARGETS,
        "against_targets": {**meets(overall), "by_simulator": {name: meets(s) for name, s in by_environment.items()}},
        "settings": {"bin": size, "steps": steps, "chunk": navigate_default("chunk"), "seed": seed,
                     "max_frames": max_frames, "initial_frames": 1, "histogram_bins": HISTOGRAM_BINS,
                     "model": str(model_folder), "model_context_frames": model.context_frames},
        "metrics_note": "bin means of per-frame PSNR (dB, MSE capped at 1e-10) and SSIM (kornia, 11x11 window); "
                        "sharpness: mean |normalised Sobel gradient| over pixels, channels and both directions "
                        "(memory.metrics.sharpness); histograms: joint RGB, 8 bins a channel, normalised to sum 1, "
                        "intersection = sum of the elementwise minimum; episode i uses seed + i",
        "generation_seconds": sum(e["seconds"] for e in per_episode),
        "machine": machine_info(),
        "processes": ranks.world_size,
    }
    result["wall_seconds"] = time.perf_counter() - started
    return result, shown


def sheet_frames(file: Path, episode: Episode, generated: torch.Tensor, bins: list[dict]) -> dict:
    """True and generated frames [K,H,W,3] at the last frame of up to SHEET_BINS evenly spaced bins, and their indices."""
    picks = torch.linspace(0, len(bins) - 1, min(SHEET_BINS, len(bins))).round().long().unique()
    frames = [bins[int(p)]["stop"] - 1 for p in picks]
    return {"file": str(file), "environment": environment_of(episode), "frames": frames,
            "truth": episode.rgb[frames].float() / 255, "generated": generated[[t - 1 for t in frames]]}


def plot(result: dict, shown: list[dict], path: Path) -> None:
    """PNG: true vs generated frames at the end of bins of the shown episodes, and each metric over bins per environment."""
    fig = plots.figure(12, 4.2 + 1.6 * len(shown))
    sheets, curves = fig.subfigures(2, 1, height_ratios=[1.4 * len(shown), 2.4])
    for ax, s in zip(sheets.subplots(len(shown), 1, squeeze=False)[:, 0], shown):
        plots.show_frames(ax, torch.cat([s["truth"], s["generated"]]), len(s["frames"]),
                          f"{Path(s['file']).name} ({s['environment']}): frames {s['frames']}")
        h = s["truth"].shape[1] + plots.GAP
        ax.set_yticks([h / 2, h * 1.5], ["true", "generated"], fontsize=8)
    titles = {"psnr": "PSNR (dB)", "ssim": "SSIM", "sharpness_ratio": "sharpness ratio (generated / true)",
              "histogram_intersection": "histogram intersection (- - true, -. warp-only)"}
    axes = dict(zip(titles, curves.subplots(1, len(titles))))
    low, high = TARGETS["sharpness_ratio_range"]
    axes["sharpness_ratio"].axhspan(low, high, color="#2ca02c", alpha=0.12, label="target")
    axes["histogram_intersection"].axhline(TARGETS["histogram_intersection_mean_min"], color="#2ca02c", linewidth=1,
                                           linestyle=":", label="target")
    for k, (name, row) in enumerate(result["by_simulator"].items()):
        colour = f"C{k}"
        starts = [b["start"] for b in row["bins"]]
        for key, ax in axes.items():
            ax.plot(starts, [b[key] for b in row["bins"]], marker="o", markersize=3, color=colour, label=name)
        axes["histogram_intersection"].plot(starts, [b["true_histogram_intersection"] for b in row["bins"]],
                                            linestyle="--", color=colour, linewidth=1)
        axes["histogram_intersection"].plot(starts, [b["warp_only_histogram_intersection"] for b in row["bins"]],
                                            linestyle="-.", color=colour, linewidth=1)
    for key, ax in axes.items():
        ax.set_title(titles[key], fontsize=9)
        ax.set_xlabel("first frame of bin", fontsize=8)
        ax.tick_params(labelsize=8)
    axes["psnr"].legend(fontsize=7)
    axes["sharpness_ratio"].legend(fontsize=7, loc="best")
    curves.suptitle(f"histogram intersection mean {result['histogram_intersection_mean']:.3f} (true frames "
                    f"{result['true_histogram_intersection_mean']:.3f}, warp-only "
                    f"{result['warp_only_histogram_intersection_mean']:.3f}), sharpness ratio median "
                    f"{result['sharpness_ratio_median']:.3f}; bins of {result['settings']['bin']} frames, steps "
                    f"{result['settings']['steps']}", fontsize=9)
    plots.save(fig, path)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", required=True, type=Path,
                        help="folder of come-episode/1 files (searched recursively; every .safetensors file in it "
                             "must be one), frame sides multiples of the model's patch size (8 for the embedded model)")
    parser.add_argument("--json", required=True, type=plots.json_output, help=plots.JSON_HELP)
    parser.add_argument("--model", type=Path, default=None, help="world model folder (default: the embedded model)")
    parser.add_argument("--max-frames", type=int, default=None, help="cap on generated frames per episode (default: all)")
    parser.add_argument("--bin", type=int, default=DEFAULT_BIN, help=f"frames per bin (default {DEFAULT_BIN})")
    parser.add_argument("--steps", type=int, default=rollout.DEFAULT_STEPS,
                        help=f"denoising steps per chunk (default {rollout.DEFAULT_STEPS}, navigate's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first episode (episode i uses seed + i)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's; 1 is faster while another job loads the CPU)")
    args = parser.parse_args()
    check_options(parser, {"--max-frames": (args.max_frames, 1, MAX_PATH_FRAMES), "--bin": (args.bin, 1, MAX_PATH_FRAMES),
                           "--steps": (args.steps, 1, MAX_STEPS), "--seed": (args.seed, 0, MAX_SEED),
                           "--threads": (args.threads, 1, MAX_THREADS)})
    if not args.episodes.is_dir():
        parser.error(f"--episodes: {args.episodes} is not a folder")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result = run_sweep(parser, args.json, lambda ranks: run(args.episodes, resolve_model(args.model), args.bin,
                                                            args.steps, args.seed, args.max_frames, ranks), plot)
    if result is None:
        return
    print(json.dumps({k: result[k] for k in ("histogram_intersection_mean", "true_histogram_intersection_mean",
                                             "warp_only_histogram_intersection_mean", "warp_only_psnr_mean",
                                             "sharpness_ratio_median", "psnr_mean", "ssim_mean", "wall_seconds")}))
    print(json.dumps({name: {k: round(v, 3) for k, v in s.items() if k.endswith(("_mean", "_median"))}
                      for name, s in result["by_simulator"].items()}))


if __name__ == "__main__":
    main()
