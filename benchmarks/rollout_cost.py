"""Cost per frame of memory-expert rollouts: flat over a 1000-frame walk, PoCE steps in backbone evaluations, streaming LoRA.

    python benchmarks/rollout_cost.py --json OUT [--model FOLDER] [--frames N] [--stream-steps S] [--lora-steps N]
        [--threads N]

The memory is the sample episode's context: a patch memory of its context frames (true depth) and an
episodic LoRA trained on them; the rollout starts from its last context frames (true depth) and walks
a 2 m square again and again (a revisit every loop) for ``--frames`` generated frames (default 1000).
Measured, with ``steps`` and ``chunk`` at the rollout's defaults:

- ``frame1000_over_frame100``: the full composition (short-term + spatial + long-term with streaming
  LoRA, mode poce) — median seconds per frame of the chunks around the last frame over those around
  frame 100 (100 = a tenth of ``--frames``); beside it the same ratio of a full-context baseline that
  grows: the backbone reading every previous frame as clean context, one chunk timed at each history
- ``poce3_step_in_evals``: one denoising step of base + short-term + spatial (mode poce) over one
  backbone evaluation (the base conditioning, evaluated as a rollout evaluates it: with the variance
  head where the backbone has one; ``poce3_step_in_mean_only_evals``: over the evaluation without it),
  and the evaluations it counts
- ``lora_stream_overhead``: the full composition with streaming over the same without, per chunk
- ``lora_stream_over_base``: the full composition with streaming over the base model alone, per chunk
  (``ltm_stream_over_base``: the long-term expert alone, streaming, over the base model)

Compared runs are timed interleaved, a chunk of each in turn, so load from other jobs on the machine
hits them alike: the walk's last chunks run beside a second walk's first chunks (frame 1000 beside
frame 100) and beside the runs without streaming, long-term alone and base alone; the evaluation
unit is the median of lone base-context evaluations timed between the probe's steps. A step evaluates
each distinct conditioning once, in one batched forward per context length.

Writes OUT and a PNG next to it: seconds per frame along the walk, and the patches the memory holds.
Targets (issue 9): frame1000_over_frame100 <= 1.2, poce3_step_in_evals <= 4.2 (naive 6),
lora_stream_overhead <= 1.5.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from memory.files import write_json  # noqa: E402
from memory.data.episode import SAMPLE_EPISODE, Episode, read_episode  # noqa: E402
from memory.geometry.camera import CameraPath  # noqa: E402
from memory.geometry.paths import parse_moves  # noqa: E402
from memory.metrics import machine_info  # noqa: E402
from memory.patch_memory import PatchMemory, insert_frames  # noqa: E402
from memory.world import lora as episodic  # noqa: E402
from memory.world import rollout as rollouts  # noqa: E402
from memory.world.conditioning import Conditioning, build_conditioning  # noqa: E402
from memory.world.experts import (  # noqa: E402
    DEFAULT_STM_FRAMES, BaseExpert, Composition, LongTermExpert, ShortTermExpert, SpatialExpert)
from memory.world.mosaic import Mosaic  # noqa: E402
from memory.world.poce import DEFAULT_ALPHA  # noqa: E402
from memory.world.world_model import WorldModel, load_world_model, predict_clean, predict_clean_batch  # noqa: E402

# Sibling modules: their folder is first on sys.path when this file runs as a script.
import plots  # noqa: E402
from next_chunk import resolve_model  # noqa: E402
from revisit import field_default  # noqa: E402

FRAMES = 1000
# a 2 m square at 0.1 m and 5 deg per frame: 152 frames a loop, so the walk comes back again and again
LOOP = "forward 2; turn_left 90; " * 4
WINDOW = 48  # frames of chunks whose median stands for the cost "at" a frame (12 chunks of 4)
MIN_FRAMES = 8  # two chunks; below 2 * WINDOW the early and late windows overlap (smoke tests only)
FULL_CONTEXT_AT = (100, 300, 1000)
PROBE_STEPS, PROBE_CHUNKS = 4, 6  # the PoCE step probe: several steps per chunk, so steps can be timed apart
# one streamed LoRA step per chunk: the Long-Term Expert node's default is 0 (no streaming), the
# paper streams 25-30 steps; the JSON gives one step's cost so other counts can be read off it
DEFAULT_STREAM_STEPS = 1
DEFAULT_LORA_STEPS = 20  # cost does not depend on how well the LoRA is trained
TARGETS = {"frame1000_over_frame100_max": 1.2, "poce3_step_in_evals_max": 4.2, "poce3_naive_evals": 6,
           "lora_stream_overhead_max": 1.5, "paper_lora_stream_over_base": [2, 4]}


@dataclass
class Timing:
    """One timed rollout: per chunk its last generated frame (1-based), seconds and evaluations; step times; patches."""

    frames: list[int] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    evaluations: list[int] = field(default_factory=list)
    patches: list[int] = field(default_factory=list)
    step_seconds: list[float] = field(default_factory=list)
    unit_seconds: list[float] = field(default_factory=list)
    mean_only_unit_seconds: list[float] = field(default_factory=list)
    # all the time spent timing units (a warm-up and the two units), which is not the rollout's work
    unit_overhead_seconds: list[float] = field(default_factory=list)

    def per_frame(self) -> list[float]:
        """Seconds per generated frame of each chunk."""
        sizes = [b - a for a, b in zip([0, *self.frames], self.frames)]
        return [s / n for s, n in zip(self.seconds, sizes)]

    def median_around(self, lo: int, hi: int) -> float:
        """Median seconds per frame of the chunks whose last frame is in lo..hi."""
        picked = [s for f, s in zip(self.frames, self.per_frame()) if lo <= f <= hi]
        if not picked:
            raise ValueError(f"no chunk ends in frames {lo}..{hi}; use more --frames.")
        return statistics.median(picked)

    def median_chunk(self, skip: int = 1) -> float:
        """Median seconds of a chunk after the first ``skip`` (the first streams nothing and warms caches)."""
        return statistics.median(self.seconds[skip:] or self.seconds)


@dataclass(frozen=True)
class Evaluation:
    """One batched call to the backbone a rollout made: its seconds and the context frames of each conditioning."""

    seconds: float
    context_frames: tuple[int, ...]

    @property
    def forwards(self) -> int:
        """Network forwards of the call: one per context length (predict_clean_batch batches the rest)."""
        return len(set(self.context_frames))


@contextmanager
def counted_evaluations() -> Iterator[list[Evaluation]]:
    """Record the backbone calls rollouts make: their ``predict_clean_batch`` wrapped (and timed) while the block runs."""
    calls: list[Evaluation] = []
    original = rollouts.predict_clean_batch

    def counting(model, conditionings, *args, **kwargs):
        tick = time.perf_counter()
        out = original(model, conditionings, *args, **kwargs)
        calls.append(Evaluation(time.perf_counter() - tick, tuple(c.context_frames for c in conditionings)))
        return out

    rollouts.predict_clean_batch = counting
    try:
        yield calls
    finally:
        rollouts.predict_clean_batch = original


class TimedRun:
    """A rollout advanced one chunk at a time, so several can run interleaved under the same machine load."""

    def __init__(self, model: WorldModel, composition: Composition, initial: tuple[torch.Tensor, torch.Tensor],
                 path: CameraPath, steps: int, chunk: int, calls: list[Evaluation], unit: bool = False):
        self.timing, self.calls, self.ticks, self.unit = Timing(), calls, [], unit
        self.model, self.chunk = model, chunk
        self.rollout = rollouts.rollout(model, composition, *initial, path, chunk=chunk, steps=steps,
                                        callback=self.on_step)
        self.chunks = iter(self.rollout)
        next(self.chunks)  # the initial frames
        self.left = len(path) - len(initial[0])

    @property
    def done(self) -> int:
        """Frames generated so far."""
        return self.timing.frames[-1] if self.timing.frames else 0

    def on_step(self, i: int) -> None:
        """Denoising-step callback: time every step after a chunk's first (the first also holds the chunk's planning)."""
        now = time.perf_counter()
        if i > 0:
            self.timing.step_seconds.append(now - self.ticks[-1])
        if self.unit:
            now = self.time_unit()
        self.ticks.append(now)

    def time_unit(self) -> float:
        """Time one lone evaluation of the chunk's base conditioning between two steps (the unit, under the same load).

        The unit is the evaluation as a rollout runs it: with the variance head where the backbone has one.
        The same evaluation without the head is timed beside it (``poce3_step_in_mean_only_evals``).
        """
        state = self.rollout.state
        targets = state.path.c2w[state.done:state.done + self.chunk]
        x = torch.randn(len(targets), 4, state.path.height, state.path.width)
        conditioning, t = state.base(targets), float(self.model.top_timestep)
        units = {"full": lambda: predict_clean_batch(self.model, [conditioning], x, t,
                                                     with_variance=self.model.predicts_variance),
                 "mean_only": lambda: predict_clean(self.model, conditioning, x, t)}
        # the first forward after the step's batched ones pays for the change of shapes: an untimed one takes
        # it, and the two units take turns going first
        start = time.perf_counter()
        units["full"]()
        order = ["full", "mean_only"] if len(self.timing.unit_seconds) % 2 else ["mean_only", "full"]
        timings = {"full": self.timing.unit_seconds, "mean_only": self.timing.mean_only_unit_seconds}
        for name in order:
            tick = time.perf_counter()
            units[name]()
            timings[name].append(time.perf_counter() - tick)
        now = time.perf_counter()
        self.timing.unit_overhead_seconds.append(now - start)
        return now

    def advance(self) -> bool:
        """Generate and time the next chunk; False once the path is done."""
        if self.done >= self.left:
            return False
        tick, before, units = time.perf_counter(), len(self.calls), len(self.timing.unit_overhead_seconds)
        out = next(self.chunks)
        # the lone unit evaluations are not the rollout's work
        self.timing.seconds.append(time.perf_counter() - tick - sum(self.timing.unit_overhead_seconds[units:]))
        self.timing.frames.append(self.done + len(out.rgb))
        self.timing.evaluations.append(sum(len(e.context_frames) for e in self.calls[before:]))
        memory = self.rollout.state.memory
        self.timing.patches.append(0 if memory is None else len(memory))
        return True


def interleave(runs: list[TimedRun]) -> None:
    """Advance the runs a chunk each in turn until all are done: load from other jobs hits them alike."""
    while any([run.advance() for run in runs]):
        pass


def long_path(episode: Episode, known: int, frames: int) -> CameraPath:
    """The last ``known`` context cameras, then ``frames`` cameras walking LOOP again and again from the last one."""
    start = episode.context_frames
    one = len(parse_moves(LOOP)) - 1
    walk = parse_moves(LOOP * math.ceil(frames / one), start_c2w=episode.c2w[start - 1], K=episode.K,
                       height=episode.height, width=episode.width)
    return CameraPath(torch.cat([episode.c2w[start - known:start], walk.c2w[1:frames + 1]]), episode.K,
                      episode.height, episode.width)


def context_conditioning(episode: Episode, path: CameraPath, history: int, chunk: int) -> Conditioning:
    """Conditioning of the chunk after ``history`` frames with all of them as clean context (episode frames cycled:
    content does not change the cost) and an empty mosaic of the same size."""
    frames = torch.arange(history) % len(episode)
    return build_conditioning(episode.rgb[frames].float() / 255, episode.depth[frames], path.c2w[:history],
                              path.c2w[history:history + chunk], episode.K, Mosaic.empty(chunk, path.height, path.width))


def full_context_costs(model: WorldModel, episode: Episode, path: CameraPath, frames: int, steps: int,
                       chunk: int) -> dict[int, float]:
    """Seconds per frame of the full-context baseline at each history length of FULL_CONTEXT_AT within the walk."""
    out = {}
    # a whole chunk of cameras must follow the history (the walk starts after as few initial frames as 2)
    for history in sorted({min(h, frames, len(path) - chunk) for h in FULL_CONTEXT_AT}):
        tick = time.perf_counter()
        conditioning = context_conditioning(episode, path, history, chunk)
        x = torch.randn(chunk, 4, path.height, path.width)
        predict_clean(model, conditioning, x, float(model.top_timestep))
        # one evaluation per denoising step; building the context is part of the cost too
        out[history] = (time.perf_counter() - tick) * steps / chunk
    return out


def experts(memory: PatchMemory, lora: episodic.EpisodicLoRA, stream_steps: int,
            stm_frames: int = DEFAULT_STM_FRAMES) -> dict[str, Composition]:
    """The compositions measured (α at the default, the short-term window at its default)."""
    stm, spatial = ShortTermExpert(stm_frames, DEFAULT_ALPHA), SpatialExpert(memory, DEFAULT_ALPHA)
    return {
        "full_stream": Composition((stm, spatial, LongTermExpert(lora, DEFAULT_ALPHA, stream_steps)), "poce"),
        "full": Composition((stm, spatial, LongTermExpert(lora, DEFAULT_ALPHA)), "poce"),
        "ltm_stream": Composition((LongTermExpert(lora, DEFAULT_ALPHA, stream_steps),), "single"),
        "base": rollouts.BASE_ONLY,
        "poce3": Composition((BaseExpert(DEFAULT_ALPHA), stm, spatial), "poce"),
    }


def run(model_folder: Path, frames: int, stream_steps: int, lora_steps: int, seed: int,
        stm_frames: int = DEFAULT_STM_FRAMES) -> tuple[dict, dict]:
    """All measurements as a JSON-ready dict, and the timings the plot draws."""
    started, load_before = time.perf_counter(), os.getloadavg()[0]
    episode = read_episode(SAMPLE_EPISODE)
    model = load_world_model(model_folder)
    steps, chunk = rollouts.DEFAULT_STEPS, 4
    known = max(model.context_frames, stm_frames)
    c = slice(0, episode.context_frames)
    rgb, depth = episode.rgb[c].float() / 255, episode.depth[c]
    memory = insert_frames(PatchMemory.empty(model.network.config.patch_size), episode.rgb[c], depth, episode.c2w[c],
                           episode.K)
    tick = time.perf_counter()
    lora, _ = episodic.train_episodic_lora(model, rgb, depth, episode.c2w[c], episode.K, steps=lora_steps, seed=seed)
    lora_seconds = time.perf_counter() - tick
    path = long_path(episode, known, frames)
    initial = (rgb[-known:], depth[-known:])
    compositions = experts(memory, lora, stream_steps, stm_frames)
    early = max(1, frames // 10)
    head = min(frames, early + WINDOW // 2)  # frames the comparison runs generate, through the early window
    with counted_evaluations() as calls:
        def start(name: str, cameras: int, denoising_steps: int = steps, unit: bool = False) -> TimedRun:
            return TimedRun(model, compositions[name], initial, path.slice(0, known + cameras), denoising_steps,
                            chunk, calls, unit)

        probe = start("poce3", min(frames, PROBE_CHUNKS * chunk), PROBE_STEPS, unit=True)
        interleave([probe])
        probe_calls = list(calls)
        walk = start("full_stream", frames)
        while walk.done < frames - head:
            walk.advance()
        # the walk's last chunks run interleaved with the first chunks of a second walk and of the references:
        # frame 1000 is timed beside frame 100, streaming beside not streaming, under the same load
        others = {name: start(name, head) for name in ("full_stream", "full", "ltm_stream", "base")}
        interleave([walk, *others.values()])
    t = {"poce3": probe.timing, "walk": walk.timing, **{name: run.timing for name, run in others.items()}}
    unit = statistics.median(probe.timing.unit_seconds)
    full_context = full_context_costs(model, episode, path, frames, steps, chunk)
    result = summarise(t, unit, probe_calls, full_context, early, frames, stream_steps)
    result.update({
        "settings": {"frames": frames, "steps": steps, "chunk": chunk, "stream_steps": stream_steps,
                     "stream_lr": field_default(LongTermExpert, "stream_lr"),
                     "lora_steps": lora_steps, "alpha": DEFAULT_ALPHA, "stm_frames": stm_frames,
                     "initial_frames": known, "loop": LOOP.strip(), "window_frames": WINDOW,
                     "comparison_frames": head, "probe_steps": PROBE_STEPS,
                     "compositions": {"full": "stm + spatial + ltm, poce", "poce3": "base + stm + spatial, poce",
                                      "ltm_stream": "ltm alone (single) with streaming", "base": "base alone"}},
        "lora_training_seconds": lora_seconds,
        "episode": str(SAMPLE_EPISODE),
        "model": str(model_folder),
        "load_average_1min": [load_before, os.getloadavg()[0]],
        "machine": machine_info(),
        "wall_seconds": time.perf_counter() - started,
    })
    return result, t


def summarise(t: dict[str, Timing], unit: float, probe_calls: list[Evaluation], full_context: dict[int, float],
              early: int, frames: int, stream_steps: int) -> dict:
    """The ratios and the numbers behind them (``unit``: seconds of one base evaluation, timed inside the probe)."""
    early_window = (max(1, early - WINDOW // 2), early + WINDOW // 2)
    late_window = (max(1, frames - WINDOW + 1), frames)
    at_early, at_late = t["full_stream"].median_around(*early_window), t["walk"].median_around(*late_window)
    histories = sorted(full_context)
    chunk = {name: x.median_chunk() for name, x in t.items() if name != "walk"}
    probe = t["poce3"]
    step = statistics.median(probe.step_seconds)
    steps_run = len(probe.evaluations) * PROBE_STEPS
    stream_step = (chunk["full_stream"] - chunk["full"]) / stream_steps
    return {
        "frame1000_over_frame100": at_late / at_early,
        "poce3_step_in_evals": step / unit,
        # the unit without the variance head, which the step's evaluations do run
        "poce3_step_in_mean_only_evals": step / statistics.median(probe.mean_only_unit_seconds),
        "lora_stream_overhead": chunk["full_stream"] / chunk["full"],
        "lora_stream_over_base": chunk["full_stream"] / chunk["base"],
        "ltm_stream_over_base": chunk["ltm_stream"] / chunk["base"],
        "targets": TARGETS,
        "early_frame": early, "late_frame": frames,
        "early_window_frames": list(early_window), "late_window_frames": list(late_window),
        "full_stream_seconds_per_frame": {"early": at_early, "late": at_late},
        "full_context_baseline": {
            "what": "the base backbone reading every previous frame as clean context (an empty mosaic of the same "
                    "size): one chunk's evaluation timed at each history length, not rolled out (quadratic "
                    "attention makes a 1000-frame rollout take hours; the model was trained on "
                    "2 context frames, so only its cost is meaningful)",
            "seconds_per_frame_at_history": {str(h): full_context[h] for h in histories},
            "last_over_first": full_context[histories[-1]] / full_context[histories[0]],
        },
        "poce3_evaluations_per_step": sum(len(e.context_frames) for e in probe_calls) / steps_run,
        "poce3_forwards_per_step": sum(e.forwards for e in probe_calls) / steps_run,
        # the evaluations alone (a short-term window longer than the model's context costs more than one)
        "poce3_step_evaluations_in_evals": sum(e.seconds for e in probe_calls) / steps_run / unit,
        "poce3_step_seconds": step,
        "poce3_chunk_overhead_in_evals": statistics.median(s - PROBE_STEPS * step for s in probe.seconds) / unit,
        "evaluation_seconds": unit,
        "evaluation_seconds_mean_only": statistics.median(probe.mean_only_unit_seconds),
        "evaluations_per_chunk": {name: statistics.median(x.evaluations) for name, x in t.items()},
        "chunk_seconds_median": chunk,
        "stream_step_seconds": stream_step,
        "stream_step_in_evals": stream_step / unit,
        "walk_per_chunk": {"frames": t["walk"].frames, "seconds": t["walk"].seconds, "patches": t["walk"].patches},
    }


def plot(result: dict, t: dict[str, Timing], path: Path) -> None:
    """PNG: seconds per frame along the walk (full composition with streaming, references, full-context baseline), and patches."""
    cost_ax, patch_ax = plots.figure(10, 6.4).subplots(2, 1, height_ratios=[1.6, 1], sharex=True)
    stream = t["walk"]
    cost_ax.plot(stream.frames, stream.per_frame(), ".", markersize=3, color="#d23c32",
                 label="full composition, streaming LoRA (stm + spatial + ltm, poce)")
    for name, colour, label in (("full_stream", "#7b241c", "the same, timed beside the walk's last frames"),
                                ("full", "#e67e22", "same without streaming"), ("base", "#969696", "base model alone")):
        cost_ax.plot(t[name].frames, t[name].per_frame(), "-", color=colour, linewidth=1, label=label)
    growth = result["full_context_baseline"]["seconds_per_frame_at_history"]
    cost_ax.plot([int(h) for h in growth], list(growth.values()), "s--", color="#1f3a93",
                 label="full-context baseline (every previous frame as context)")
    cost_ax.set_yscale("log")
    cost_ax.set_ylabel("seconds per frame")
    cost_ax.set_title(f"frame {result['late_frame']} / frame {result['early_frame']}: "
                      f"{result['frame1000_over_frame100']:.2f} (full-context baseline "
                      f"{result['full_context_baseline']['last_over_first']:.1f}); PoCE-3 step "
                      f"{result['poce3_step_in_evals']:.2f} evaluations; streaming overhead "
                      f"{result['lora_stream_overhead']:.2f}x", fontsize=9)
    cost_ax.legend(fontsize=7, loc="upper left")
    patch_ax.plot(stream.frames, stream.patches, "-", color="#2e86c1")
    patch_ax.set_ylabel("patches in memory")
    patch_ax.set_xlabel("generated frame")
    plots.save(cost_ax.figure, path)


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", required=True, type=plots.json_output, help=plots.JSON_HELP)
    parser.add_argument("--model", type=Path, default=None, help="world model folder (default: the embedded model)")
    parser.add_argument("--frames", type=int, default=FRAMES, help=f"generated frames of the long walk (default {FRAMES})")
    parser.add_argument("--stream-steps", type=int, default=DEFAULT_STREAM_STEPS, help="LoRA steps streamed per chunk")
    parser.add_argument("--lora-steps", type=int, default=DEFAULT_LORA_STEPS, help="offline LoRA training steps")
    parser.add_argument("--seed", type=int, default=0, help="seed of the LoRA training")
    parser.add_argument("--stm-frames", type=int, default=DEFAULT_STM_FRAMES, help="short-term window in frames")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the machine is shared)")
    args = parser.parse_args()
    if args.frames < MIN_FRAMES or args.stream_steps < 1 or args.lora_steps < 1:
        parser.error(f"--frames must be at least {MIN_FRAMES}, --stream-steps and --lora-steps at least 1")
    try:
        ShortTermExpert(args.stm_frames)  # its own range check, before minutes of set-up
    except ValueError as err:
        parser.error(f"--stm-frames: {err}")
    torch.set_num_threads(args.threads)
    try:
        result, timings = run(resolve_model(args.model), args.frames, args.stream_steps, args.lora_steps, args.seed,
                              args.stm_frames)
    except ValueError as err:
        parser.error(str(err))
    write_json(args.json, result)
    plot(result, timings, args.json.with_suffix(".png"))
    print(json.dumps({k: result[k] for k in ("frame1000_over_frame100", "poce3_step_in_evals", "lora_stream_overhead",
                                             "lora_stream_over_base", "ltm_stream_over_base", "wall_seconds")}))


if __name__ == "__main__":
    main()
