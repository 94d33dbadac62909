"""Benchmark of the 3D patch memory: insert throughput, render latency vs memory size, bytes per patch,
and revisit fidelity against direct reprojection of the same source frames.

    python benchmarks/patch_memory.py --json OUT.json [--episode PATH] [--quick]

Writes OUT.json (top-level keys ``render_ratio_1e6_vs_1e4``, ``bytes_per_patch``, ``revisit_psnr_gap_db``
plus raw figures) and a plot OUT.png. Targets: ratio <= 3, bytes <= 600, gap >= -0.5 dB.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
from matplotlib.ticker import MaxNLocator

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the synthetic test scene

from memory.files import write_json  # noqa: E402
from memory.geometry.projection import lift_frame, splat_grids  # noqa: E402
from memory.metrics import machine_info  # noqa: E402
from memory.patch_memory import PatchMemory, frames_to_patches, insert_frames, render  # noqa: E402
from testscene import orbit_cameras, room_views  # noqa: E402

# A sibling module: its folder is first on sys.path when this file runs as a script.
import plots  # noqa: E402

DEFAULT_EPISODE = Path(__file__).resolve().parents[1] / "memory" / "data" / "sample_episode.safetensors"
TILE_SPACING_M = 12.0


def load_episode(path: Path, quick: bool) -> tuple[dict, str]:
    """Frames, depth, poses, K, context count and revisit frame ids of the episode, or of the analytic room if absent."""
    if path.is_file():
        from memory.data.episode import read_episode, revisit_frames

        episode = read_episode(path)
        revisits = revisit_frames(episode)
        if quick:
            revisits = revisits[:4]
        data = dict(rgb=episode.rgb, depth=episode.depth, c2w=episode.c2w, K=episode.K,
                    context=episode.context_frames, revisits=revisits)
        return data, str(path)
    count, revisit_count = (8, 3) if quick else (24, 8)
    c2w, K = orbit_cameras(count, image_size=64)
    back, _ = orbit_cameras(revisit_count, radius=2.3, height_m=1.3, start_deg=7, image_size=64)
    cameras = torch.cat([c2w, back])
    rgb, depth = room_views(cameras, K, 64, 64)
    data = dict(rgb=rgb, depth=depth, c2w=cameras, K=K, context=count, revisits=list(range(count, len(cameras))))
    return data, f"synthetic analytic room ({path} not found)"


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """PSNR in dB of images [H,W,3] in 0..1 over pixels where ``mask`` is set (nan if none)."""
    if not bool(mask.any()):
        return float("nan")
    mse = ((a - b) ** 2).mean(-1)[mask].mean().clamp_min(1e-10)
    return float(-10 * torch.log10(mse))


def timed(fn, runs: int) -> tuple[float, list[float]]:
    """Median seconds of ``runs`` calls of ``fn`` (after one warm-up) and all timings."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def tiled(memory: PatchMemory, target: int) -> PatchMemory:
    """A memory of about ``target`` patches: copies of ``memory`` on a square grid of TILE_SPACING_M in x, y."""
    copies = -(-target // len(memory))
    side = int(copies ** 0.5) + 1
    grid = torch.stack(torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij"), -1).reshape(-1, 2)[:copies]
    grid = (grid - side // 2).float() * TILE_SPACING_M
    shift = torch.cat([grid, torch.zeros(len(grid), 1)], -1).repeat_interleave(len(memory), 0)
    base = memory.subset(torch.arange(len(memory)).repeat(copies))
    c2w = base.c2w.clone()
    c2w[:, :, 3] += shift
    big = PatchMemory(**dict(base.tensors(), c2w=c2w, centres=base.centres + shift), patch_size=memory.patch_size)
    return big.subset(torch.arange(target))


def direct_reprojection(data: dict, frame: int) -> "object":
    """All pixels of all context frames splatted into ``frame``'s camera (no memory, no view preference)."""
    c = data["context"]
    points, valid = zip(*(lift_frame(data["depth"][i], data["K"], data["c2w"][i]) for i in range(c)))
    h, w = data["depth"].shape[1:]
    colours = data["rgb"][:c].float() / 255
    return splat_grids(torch.stack(points), torch.stack(valid), colours, data["K"], data["c2w"][frame], h, w)


def run(episode_path: Path, quick: bool) -> dict:
    """All measurements as a JSON-ready dict."""
    data, source = load_episode(episode_path, quick)
    c, K = data["context"], data["K"]
    h, w = data["depth"].shape[1:]
    runs = 3 if quick else 5
    ctx = (data["rgb"][:c], data["depth"][:c], data["c2w"][:c], K)

    insert_s, insert_times = timed(lambda: insert_frames(PatchMemory.empty(), *ctx), runs)
    memory = insert_frames(PatchMemory.empty(), *ctx)
    raw_patches = c * (h // memory.patch_size) * (w // memory.patch_size)
    reinserted = insert_frames(memory, *ctx, frame_ids=torch.arange(c))
    with_revisits = insert_frames(memory, data["rgb"][data["revisits"]], data["depth"][data["revisits"]],
                                  data["c2w"][data["revisits"]], K)

    sizes = [1_000, 10_000, 30_000] if quick else [10_000, 100_000, 1_000_000]
    camera = data["c2w"][data["revisits"][0]]
    latency, cold = {}, {}
    for size in sizes:
        big = tiled(memory, size)
        start = time.perf_counter()
        render(big, K, camera, h, w)
        cold[str(size)] = time.perf_counter() - start
        latency[str(size)], _ = timed(lambda: render(big, K, camera, h, w), runs)
        del big

    undeduped = frames_to_patches(*ctx[:2], ctx[2].float(), K.float(), torch.arange(c), torch.arange(c).float(),
                                  memory.patch_size)
    per_frame = []
    for t in data["revisits"]:
        truth = data["rgb"][t].float() / 255
        mem = render(memory, K, data["c2w"][t], h, w)
        direct = direct_reprojection(data, t)
        full = render(undeduped, K, data["c2w"][t], h, w, max_patches=len(undeduped))
        both = (mem.mask > 0) & (direct.mask > 0)
        per_frame.append({
            "frame": t, "psnr_memory_db": psnr(mem.rgb, truth, both), "psnr_direct_db": psnr(direct.rgb, truth, both),
            "psnr_memory_without_dedupe_db": psnr(full.rgb, truth, both),
            "psnr_memory_own_coverage_db": psnr(mem.rgb, truth, mem.mask > 0),
            "psnr_direct_own_coverage_db": psnr(direct.rgb, truth, direct.mask > 0),
            "coverage_memory": float(mem.mask.mean()), "coverage_direct": float(direct.mask.mean()),
        })
    valid = [f for f in per_frame if f["psnr_memory_db"] == f["psnr_memory_db"]]
    mean = lambda key: statistics.fmean(f[key] for f in valid) if valid else float("nan")  # noqa: E731

    return {
        "render_ratio_1e6_vs_1e4": latency[str(sizes[-1])] / latency[str(sizes[-2 if quick else 0])],
        "bytes_per_patch": memory.nbytes / len(memory),
        "revisit_psnr_gap_db": mean("psnr_memory_db") - mean("psnr_direct_db"),
        "targets": {"render_ratio_max": 3.0, "bytes_per_patch_max": 600, "revisit_psnr_gap_db_min": -0.5},
        "quick": quick,
        "episode": source,
        "image_size": [h, w],
        "context_frames": c,
        "revisit_frames": data["revisits"],
        "insert": {"seconds_median": insert_s, "seconds_all": insert_times, "raw_patches": raw_patches,
                   "patches_per_second": raw_patches / insert_s, "stored_patches": len(memory),
                   "stored_after_reinserting_same_frames": len(reinserted),
                   "stored_after_inserting_revisit_frames": len(with_revisits),
                   "revisit_raw_patches": len(data["revisits"]) * raw_patches // c},
        "render_seconds_median_by_size": latency,
        "render_seconds_first_call_by_size": cold,
        "render_first_call_note": "the first render of a memory above 65536 patches also builds its grid index "
                                  "(cached on the memory, reused by every later render of it)",
        "render_budget_patches": 4096,
        "render_ratio_sizes": [sizes[-1], sizes[-2 if quick else 0]],
        "revisit": {"psnr_memory_db": mean("psnr_memory_db"), "psnr_direct_db": mean("psnr_direct_db"),
                    "psnr_memory_without_dedupe_db": mean("psnr_memory_without_dedupe_db"),
                    "dedupe_cost_db": mean("psnr_memory_db") - mean("psnr_memory_without_dedupe_db"),
                    "undeduped_patches": len(undeduped),
                    "coverage_memory": mean("coverage_memory"), "coverage_direct": mean("coverage_direct"),
                    "psnr_measured_on": "pixels covered by both memory and direct renderings (mean of per-frame PSNR); "
                                        "*_own_coverage_db per frame use each one's own coverage",
                    "note": "memory render prefers the source view most like the target (view-dependent shading); "
                            "direct reprojection splats all context pixels with the same adaptive footprints but "
                            "no view preference; dedupe_cost_db compares the memory with the same renderer on "
                            "every context patch (no dedupe), i.e. what storing in the memory loses",
                    "per_frame": per_frame},
        "machine": machine_info(),
    }


def plot(result: dict, path: Path) -> None:
    """A two-panel PNG: render latency vs memory size, and revisit PSNR per frame (memory vs direct)."""
    latency_ax, revisit_ax = plots.figure(10, 4).subplots(1, 2)
    sizes = sorted(int(k) for k in result["render_seconds_median_by_size"])
    plots.bars(latency_ax, [f"{s:.0e}" for s in sizes],
               [result["render_seconds_median_by_size"][str(s)] * 1000 for s in sizes], "{:.1f} ms", ["#4682c8"] * len(sizes))
    latency_ax.set_xlabel("stored patches")
    latency_ax.set_ylabel("ms")
    latency_ax.set_title("render latency (median) vs stored patches", fontsize=9)
    frames = result["revisit"]["per_frame"]
    for key, colour, label in (("psnr_direct_db", "#969696", "direct reprojection"), ("psnr_memory_db", "#d23c32", "memory")):
        # a NaN (a frame with no pixel to compare) leaves a gap in the line
        revisit_ax.plot([f["frame"] for f in frames], [f[key] for f in frames], "o-", color=colour, markersize=3, label=label)
    revisit_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    revisit_ax.set_xlabel("episode frame (revisits)")
    revisit_ax.set_ylabel("PSNR (dB)")
    revisit_ax.set_title(f"revisit PSNR, gap {result['revisit_psnr_gap_db']:+.2f} dB", fontsize=9)
    revisit_ax.legend(fontsize=8)
    plots.save(revisit_ax.figure, path)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", required=True, type=plots.json_output, help=plots.JSON_HELP)
    parser.add_argument("--episode", type=Path, default=DEFAULT_EPISODE, help="come-episode/1 file")
    parser.add_argument("--quick", action="store_true", help="tiny version that runs in seconds (smoke test)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 keeps timings stable on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    result = run(args.episode, args.quick)
    write_json(args.json, result)
    plot(result, args.json.with_suffix(".png"))
    print(json.dumps({k: result[k] for k in ("render_ratio_1e6_vs_1e4", "bytes_per_patch", "revisit_psnr_gap_db")}))


if __name__ == "__main__":
    main()
