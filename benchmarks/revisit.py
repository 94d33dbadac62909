"""Revisit quality of memory experts composed with PoCE: long rollouts from an episode's memory, scored where the camera returns.

    python benchmarks/revisit.py --episodes DIR --json OUT [--methods LIST] [--model FOLDER] [--alpha A]
        [--stm-frames K] [--lora-rank R] [--lora-steps N] [--steps S] [--chunk C] [--seed K] [--max-frames N]
        [--threads N]

For every come-episode/1 file under DIR (recursively) the first ``context_frames`` frames (RGB, true
depth, cameras) are the memory; every later frame is generated along the recorded cameras, chunk by
chunk, from generated frames only. The rollout starts from the last context frames with their true
depth: as many as the widest window reads (the model's context or the short-term window), so base
and short-term each see their own window of the memory and nothing older. Methods:

- ``base``: the base expert alone (mode single, α = 1): what Navigate does
- ``stm``, ``ltm``, ``spatial``: one expert (mode single, α = ``--alpha``): the short-term window; an
  episodic LoRA trained on all context frames; a patch memory built from all context frames (true depth)
- ``stm+ltm``: short-term and long-term, mode poce
- ``come``, ``come_normalized``, ``poe``: all three memory experts (short-term, spatial, long-term), modes
  poce, poce_normalized, poe
- ``oracle``: no network: the patch memory rendered into each target camera, holes filled with the
  last context frame (as the warp-only baseline of next_chunk.py fills them)

One LoRA and one patch memory per episode, shared by every method that reads them. Writes OUT
(``methods.<name>.{psnr_all, psnr_revisit, ssim_all, ssim_revisit}``, per-episode values, settings,
seconds per method, machine) and a plot next to it (.png).
Targets (issue 9): come ≥ base + 4 dB and within 1.5 dB of oracle on revisit frames; every single
expert and poe below come.
Started by torchrun, the processes share out the episodes and rank 0 writes the files (the same figures).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memory.data.episode import Episode, read_episode, revisit_frames  # noqa: E402
from memory.metrics import machine_info, psnr, ssim  # noqa: E402
from memory.patch_memory import PatchMemory, insert_frames, render_path  # noqa: E402
from memory.train.distributed import ONE_PROCESS, Ranks  # noqa: E402
from memory.world import lora as episodic  # noqa: E402
from memory.world import rollout as rollouts  # noqa: E402
from memory.world.experts import DEFAULT_STM_FRAMES, Composition, LongTermExpert, ShortTermExpert, SpatialExpert  # noqa: E402
from memory.world.mosaic import Mosaic  # noqa: E402
from memory.world.poce import DEFAULT_ALPHA, check_alpha  # noqa: E402
from memory.world.world_model import WorldModel, load_world_model  # noqa: E402

# Sibling modules: their folder is first on sys.path when this file runs as a script.
import plots  # noqa: E402
from next_chunk import check_frame_sizes, episode_files, resolve_model, run_sweep, simulator_of  # noqa: E402

MEMORY_EXPERTS = ("stm", "spatial", "ltm")
# method -> (experts, PoCE mode); "base" is rollouts.BASE_ONLY and "oracle" runs no network
RECIPES = {
    "stm": (("stm",), "single"),
    "ltm": (("ltm",), "single"),
    "spatial": (("spatial",), "single"),
    "stm+ltm": (("stm", "ltm"), "poce"),
    "come": (MEMORY_EXPERTS, "poce"),
    "come_normalized": (MEMORY_EXPERTS, "poce_normalized"),
    "poe": (MEMORY_EXPERTS, "poe"),
}
METHODS = ("base", "stm", "ltm", "spatial", "stm+ltm", "come", "come_normalized", "poe", "oracle")
COLOURS = {"base": "#969696", "stm": "#7fb3d5", "ltm": "#f0b27a", "spatial": "#82e0aa", "stm+ltm": "#c39bd3",
           "come": "#d23c32", "come_normalized": "#e67e22", "poe": "#5d6d7e", "oracle": "#1f3a93"}
TARGETS = {"come_minus_base_psnr_revisit_min_db": 4.0, "oracle_minus_come_psnr_revisit_max_db": 1.5,
           "below_come": ["stm", "ltm", "spatial", "poe"]}
SHEET_FRAMES = 8


@dataclass(frozen=True)
class Settings:
    """What every method of the run shares."""

    alpha: float = DEFAULT_ALPHA
    stm_frames: int = DEFAULT_STM_FRAMES
    lora_rank: int = episodic.DEFAULT_RANK
    lora_steps: int = episodic.DEFAULT_STEPS
    steps: int = rollouts.DEFAULT_STEPS
    chunk: int = 4
    seed: int = 0
    max_frames: int | None = None


@dataclass
class Shared:
    """What the methods of one episode share, built on first use: the patch memory and the LoRA of its context frames."""

    episode: Episode
    model: WorldModel
    settings: Settings
    info: dict = field(default_factory=dict)

    @property
    def context(self) -> slice:
        """The memory: the episode's first ``context_frames`` frames."""
        return slice(0, self.episode.context_frames)

    @cached_property
    def memory(self) -> PatchMemory:
        """Patch memory of all context frames with their true depth."""
        tick = time.perf_counter()
        e, c = self.episode, self.context
        built = insert_frames(PatchMemory.empty(self.model.network.config.patch_size), e.rgb[c], e.depth[c], e.c2w[c], e.K)
        self.info |= {"patch_memory_seconds": time.perf_counter() - tick, "patches": len(built)}
        return built

    @cached_property
    def lora(self) -> episodic.EpisodicLoRA:
        """Episodic LoRA trained on all context frames (one per episode, the same seed for every episode)."""
        tick = time.perf_counter()
        e, c, s = self.episode, self.context, self.settings
        trained, losses = episodic.train_episodic_lora(self.model, e.rgb[c].float() / 255, e.depth[c], e.c2w[c], e.K,
                                                       rank=s.lora_rank, steps=s.lora_steps, seed=s.seed)
        self.info |= {"lora_training_seconds": time.perf_counter() - tick,
                      "lora_final_loss": float(losses[-1]) if len(losses) else None}
        return trained

    @property
    def stop(self) -> int:
        """One past the last frame generated (``max_frames`` caps the frames per episode)."""
        cap = self.settings.max_frames
        return len(self.episode) if cap is None else min(len(self.episode), self.episode.context_frames + cap)


def composition(method: str, shared: Shared) -> Composition:
    """The experts and mode of ``method`` on this episode's memories."""
    if method == "base":
        return rollouts.BASE_ONLY
    names, mode = RECIPES[method]
    s = shared.settings
    make = {"stm": lambda: ShortTermExpert(s.stm_frames, s.alpha),
            "spatial": lambda: SpatialExpert(shared.memory, s.alpha),
            "ltm": lambda: LongTermExpert(shared.lora, s.alpha)}
    return Composition(tuple(make[name]() for name in names), mode)


def prepare(method: str, shared: Shared) -> None:
    """Build the shared memories ``method`` reads before it is timed (their cost is reported once, apart)."""
    experts = RECIPES.get(method, ((),))[0]
    if method == "oracle" or "spatial" in experts:
        _ = shared.memory
    if "ltm" in experts:
        _ = shared.lora


def generate(method: str, shared: Shared, seed: int) -> torch.Tensor:
    """Frames [N,H,W,3] of ``method`` for targets context_frames..stop, generated from the last context frames only."""
    e, s, model = shared.episode, shared.settings, shared.model
    if method == "oracle":
        return oracle(shared)
    first = e.context_frames - initial_frames(model, s)
    path = e.cameras.slice(first, shared.stop)
    run = rollouts.rollout(model, composition(method, shared), e.rgb[first:e.context_frames].float() / 255,
                           e.depth[first:e.context_frames], path, chunk=s.chunk, steps=s.steps, seed=seed)
    return torch.cat([c.rgb for c in list(run)[1:]])


def oracle(shared: Shared) -> torch.Tensor:
    """The context frames' patch memory rendered into each target camera, holes filled with the last context frame."""
    e = shared.episode
    rgb, mask, depth = render_path(shared.memory, e.cameras.slice(e.context_frames, shared.stop))
    last = e.context_frames - 1
    return Mosaic(rgb, depth, mask).fill_holes(e.rgb[last].float() / 255, e.depth[last]).rgb


def initial_frames(model: WorldModel, settings: Settings) -> int:
    """Context frames the rollout starts from: the widest window an expert reads (the model's context or the short-term window)."""
    return max(model.context_frames, settings.stm_frames)


def check_episode(episode: Episode, path: Path, model: WorldModel, settings: Settings) -> None:
    """Refuse an episode this benchmark cannot run: too few context frames for the window, or nothing to generate."""
    known = initial_frames(model, settings)
    if episode.context_frames < known:
        raise ValueError(f"--episodes: {path} has {episode.context_frames} context frames; the rollout starts from "
                         f"the last {known} (model context / --stm-frames).")
    if len(episode) <= episode.context_frames:
        raise ValueError(f"--episodes: {path} has no frame after its {episode.context_frames} context frames.")


def mean(values: list[torch.Tensor]) -> float | None:
    """Mean of the concatenated per-frame values; None if there are none."""
    joined = torch.cat(values) if values else torch.zeros(0)
    return float(joined.mean()) if len(joined) else None


def summarise(scores: list[dict]) -> dict:
    """Means over all frames pooled across episodes, all and revisit frames, of one method's per-frame scores."""
    out = {}
    for metric in ("psnr", "ssim"):
        out[f"{metric}_all"] = mean([s[metric] for s in scores])
        out[f"{metric}_revisit"] = mean([s[metric][s["revisit"]] for s in scores])
    return out


def score(frames: torch.Tensor, truth: torch.Tensor, revisit: torch.Tensor) -> dict:
    """Per-frame PSNR and SSIM of generated ``frames`` vs ``truth`` [N,H,W,3], and the revisit mask [N]."""
    return {"psnr": psnr(frames, truth), "ssim": ssim(frames, truth), "revisit": revisit}


def episode_row(s: dict) -> dict:
    """A method's JSON values on one episode."""
    return {**summarise([s]), "frames": len(s["psnr"]), "revisit_frames": int(s["revisit"].sum())}


def measure(model: WorldModel, methods: list[str], settings: Settings, i: int, file: Path, e: Episode) -> dict:
    """Episode ``i``'s JSON row, each method's per-frame scores and generation seconds, for episode 0 the plot's frames."""
    shared = Shared(e, model, settings)
    truth = e.rgb[e.context_frames:shared.stop].float() / 255
    revisits = set(revisit_frames(e))
    revisit = torch.tensor([t in revisits for t in range(e.context_frames, shared.stop)])
    row = {"file": str(file), "source": e.source, "frames": len(truth), "revisit_frames": int(revisit.sum()),
           "methods": {}}
    outputs, scores, seconds = {}, {}, {}
    for method in methods:
        prepare(method, shared)
        tick = time.perf_counter()
        outputs[method] = generate(method, shared, settings.seed + i)
        seconds[method] = time.perf_counter() - tick
        scores[method] = score(outputs[method], truth, revisit)
        row["methods"][method] = episode_row(scores[method])
    row["shared"] = dict(shared.info)
    shown = None
    if i == 0:
        # only the frames the plot shows: the rest of a long walk's frames need not travel between processes
        picks = pick_frames(revisit)
        shown = {"truth": truth[picks], "file": str(file), "frames": [e.context_frames + int(p) for p in picks],
                 **{m: frames[picks] for m, frames in outputs.items()}}
    return {"row": row, "scores": scores, "seconds": seconds, "shown": shown}


def run(folder: Path, model_folder: Path, methods: list[str], settings: Settings,
        ranks: Ranks = ONE_PROCESS) -> tuple[dict, dict]:
    """All measurements as a JSON-ready dict, and the first episode's revisit frames for the plot; episodes dealt over ``ranks``."""
    started = time.perf_counter()
    files = episode_files(folder)
    model = load_world_model(model_folder, device=ranks.device)
    episodes = [read_episode(f) for f in files]
    for f, e in zip(files, episodes):
        check_episode(e, f, model, settings)
    check_frame_sizes(files, episodes, model)
    measured = ranks.deal(files, lambda i, f: measure(model, methods, settings, i, f, episodes[i]))
    scores = {m: [episode["scores"][m] for episode in measured] for m in methods}
    seconds = {m: sum(episode["seconds"][m] for episode in measured) for m in methods}
    per_episode, shown = [episode["row"] for episode in measured], measured[0]["shown"]
    result = {
        "methods": {m: {**summarise(scores[m]), "seconds": seconds[m]} for m in methods},
        "targets": TARGETS,
        "against_targets": against_targets({m: summarise(scores[m]) for m in methods}),
        "by_simulator": by_simulator(episodes, scores),
        "episodes": per_episode,
        "frames": sum(r["frames"] for r in per_episode),
        "revisit_frames": sum(r["revisit_frames"] for r in per_episode),
        "settings": settings_json(model, methods, settings),
        "shared_seconds": {key: sum(r["shared"].get(f"{key}_seconds", 0.0) for r in per_episode)
                           for key in ("patch_memory", "lora_training")},
        "revisit_definition": "generated frames whose camera is within 1.0 m and 30 deg of yaw of a context frame "
                              "(memory.data.episode.revisit_frames)",
        "metrics_note": "means over frames pooled across episodes of per-frame PSNR (dB, MSE capped at 1e-10) and "
                        "SSIM (kornia, 11x11 window); methods.<m>.seconds is generation only, LoRA training and "
                        "patch-memory building are in shared_seconds",
        "model": str(model_folder),
        "machine": machine_info(),
        "processes": ranks.world_size,
    }
    result["wall_seconds"] = time.perf_counter() - started
    return result, shown


def by_simulator(episodes: list[Episode], scores: dict[str, list[dict]]) -> dict:
    """Each method's means over the episodes of one simulator environment."""
    sims = [simulator_of(e) for e in episodes]
    return {sim: {m: summarise([s for s, e in zip(rows, sims) if e == sim]) for m, rows in scores.items()}
            for sim in sorted(set(sims))}


def against_targets(methods: dict[str, dict]) -> dict:
    """The numbers the issue's targets compare (revisit PSNR differences), for the methods that ran."""
    revisit = {m: r["psnr_revisit"] for m, r in methods.items() if r["psnr_revisit"] is not None}
    if "come" not in revisit:
        return {}
    out = {f"{m}_minus_come_psnr_revisit_db": revisit[m] - revisit["come"] for m in TARGETS["below_come"] if m in revisit}
    if "base" in revisit:
        out["come_minus_base_psnr_revisit_db"] = revisit["come"] - revisit["base"]
    if "oracle" in revisit:
        out["oracle_minus_come_psnr_revisit_db"] = revisit["oracle"] - revisit["come"]
    return out


def settings_json(model: WorldModel, methods: list[str], settings: Settings) -> dict:
    """The settings of the run, with each method's experts, mode and α written out."""
    recipes = {m: {"experts": list(RECIPES[m][0]), "mode": RECIPES[m][1], "alpha": settings.alpha}
               for m in methods if m in RECIPES}
    if "base" in methods:
        recipes["base"] = {"experts": ["base"], "mode": "single", "alpha": 1.0}
    return {**asdict(settings), "methods": recipes, "model_context_frames": model.context_frames,
            "initial_frames": initial_frames(model, settings),
            "lora_stream_steps": field_default(LongTermExpert, "stream_steps"),
            "spatial_max_patches": field_default(SpatialExpert, "max_patches"),
            "spatial_guidance": field_default(SpatialExpert, "guidance")}


def field_default(cls: type, name: str):
    """The default of a dataclass field (the expert settings this benchmark leaves as they are)."""
    return next(f.default for f in fields(cls) if f.name == name)


def plot(result: dict, shown: dict, path: Path) -> None:
    """PNG: PSNR on revisit frames and on all generated frames per method, and revisit frames of the first episode."""
    fig = plots.figure(11, 9.5)
    top, sheet_ax = fig.subfigures(2, 1, height_ratios=[1, 1.6])
    methods = list(result["methods"])
    for ax, key, title in zip(top.subplots(1, 2), ("psnr_revisit", "psnr_all"), ("revisit frames", "all generated frames")):
        values = [result["methods"][m][key] for m in methods]
        plots.bars(ax, methods, [math.nan if v is None else v for v in values], "{:.2f}", [COLOURS[m] for m in methods])
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(f"{title} ({result['revisit_frames' if key == 'psnr_revisit' else 'frames']} frames)", fontsize=9)
        ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    rows = ["truth", *methods]
    ax = sheet_ax.subplots()
    plots.show_frames(ax, torch.cat([shown[r] for r in rows]), len(shown["frames"]),
                      f"{Path(shown['file']).name}: generated frames {shown['frames']}")
    h = shown["truth"].shape[1] + plots.GAP
    ax.set_yticks([r * h + h / 2 for r in range(len(rows))], rows, fontsize=8)
    plots.save(fig, path)


def pick_frames(revisit: torch.Tensor) -> torch.Tensor:
    """Up to SHEET_FRAMES evenly spaced revisit frames (all generated frames if there is no revisit)."""
    pool = revisit.nonzero().flatten() if bool(revisit.any()) else torch.arange(len(revisit))
    return pool[torch.linspace(0, len(pool) - 1, min(SHEET_FRAMES, len(pool))).round().long()]


def parse_methods(text: str) -> list[str]:
    """The comma-separated method names, each known and given once."""
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods or len(set(methods)) != len(methods):
        raise ValueError(f"--methods: give distinct names among {', '.join(METHODS)}; got {text!r}.")
    return methods


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", required=True, type=Path, help="folder of come-episode/1 files (searched recursively)")
    parser.add_argument("--json", required=True, type=plots.json_output, help=plots.JSON_HELP)
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods (default: all nine)")
    parser.add_argument("--model", type=Path, default=None, help="world model folder (default: the embedded model)")
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help="α of every memory expert (base keeps 1)")
    parser.add_argument("--stm-frames", type=int, default=DEFAULT_STM_FRAMES, help="short-term window in frames")
    parser.add_argument("--lora-rank", type=int, default=episodic.DEFAULT_RANK, help="episodic LoRA rank")
    parser.add_argument("--lora-steps", type=int, default=episodic.DEFAULT_STEPS, help="LoRA training steps per episode")
    parser.add_argument("--steps", type=int, default=rollouts.DEFAULT_STEPS, help="denoising steps per chunk")
    parser.add_argument("--chunk", type=int, default=4, help="frames generated per chunk")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first episode (episode i uses seed + i)")
    parser.add_argument("--max-frames", type=int, default=None, help="cap on generated frames per episode (quick runs)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    args = parser.parse_args()
    try:
        methods = parse_methods(args.methods)
        check_alpha(args.alpha, "--alpha")
        settings = Settings(args.alpha, args.stm_frames, args.lora_rank, args.lora_steps, args.steps, args.chunk,
                            args.seed, args.max_frames)
        if min(args.stm_frames, args.lora_rank, args.lora_steps, args.steps, args.chunk, args.max_frames or 1) < 1:
            raise ValueError("--stm-frames, --lora-rank, --lora-steps, --steps, --chunk and --max-frames must be at least 1")
        if not args.episodes.is_dir():
            raise ValueError(f"--episodes: {args.episodes} is not a folder")
        try:
            ShortTermExpert(args.stm_frames)  # its own range check, before any episode is read
        except ValueError as err:
            raise ValueError(f"--stm-frames: {err}") from None
        torch.set_num_threads(args.threads)
    except ValueError as err:
        parser.error(str(err))
    result = run_sweep(parser, args.json,
                       lambda ranks: run(args.episodes, resolve_model(args.model), methods, settings, ranks), plot)
    if result is None:
        return
    print(json.dumps(result["methods"]))
    print(json.dumps({"wall_seconds": result["wall_seconds"], **result["shared_seconds"]}))


if __name__ == "__main__":
    main()
