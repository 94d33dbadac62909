"""Rollouts: generate a camera path chunk by chunk under a composition of memory experts, updating the memories.

After every chunk the generated frames join the short-term window, are lifted into the patch memory
with the model's own depth, and (when the long-term expert streams) train its LoRA a fixed number of
steps on the latest frames. Cost per chunk stays constant: a bounded window, a bounded retrieval,
fixed LoRA steps.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from ..geometry.camera import CameraPath
from ..limits import MAX_SEED, MAX_STEPS, check_count, check_frames
from ..patch_memory import PatchMemory, insert_frames
from .backbones.mosaic_dit import RAY_CHANNELS, RGBD_CHANNELS
from .conditioning import build_conditioning
from .experts import (
    BASE, LORA, BaseExpert, Composition, LongTermExpert, RolloutState, ShortTermExpert, SpatialExpert, plan,
)
from .lora import EpisodicLoRA, lora_network, stream_update
from .mosaic import MOSAIC_CHANNELS, Mosaic
from .poce import expert_variance, gaussian_product, prior_variance, weighted_mean, weights
from .rgbd import decode_rgbd
from .world_model import WorldModel, denoise, predict_clean_batch, sample_chunk

# One DDIM step from the last timestep is the model's mean prediction: on held-out episodes it scored
# higher PSNR than 2 steps (22.5 vs 22.3 dB at training step 2300) and is the fastest. Raise it for
# sharper, more varied samples.
DEFAULT_STEPS = 1
MAX_CHUNK = 64
# frames a streaming LoRA step trains on after each chunk (the model's context plus one training window)
STREAM_TARGETS = 4
BASE_ONLY = Composition((BaseExpert(alpha=1.0),), mode="single")
# Peak activations of one backbone forward, per token, in hidden-size units of the weights' dtype: counted on
# the CPU over every tensor alive during forwards of the embedded model at 32-512 px, 23.5 in float32 and 23.7
# in bfloat16 (a few float32 parts), the same at every size: attention runs fused, without a tokens² matrix
# (tests/test_model_management.py checks the bound)
ACTIVATIONS_PER_TOKEN = 24


@dataclass(frozen=True)
class Chunk:
    """Generated frames: ``rgb`` [T,H,W,3] 0..1 and metric ``depth`` [T,H,W]."""

    rgb: torch.Tensor
    depth: torch.Tensor


class Rollout:
    """An iterator of :class:`Chunk` (the initial frames first); ``state`` holds the memories as they stand so far."""

    def __init__(self, model: WorldModel, composition: Composition, frames: torch.Tensor, depth: torch.Tensor | None,
                 path: CameraPath, chunk: int, steps: int, seed: int, callback: Callable[[int], None] | None,
                 lora_callback: Callable[[int], None] | None, keep_memory: bool):
        self.model, self.composition, self.path = model, composition, path
        self.frames, self.depth, self.chunk, self.steps, self.seed = frames, depth, chunk, steps, seed
        self.callback, self.lora_callback = callback, lora_callback
        self.state: RolloutState | None = None
        self.long_term = next((e for e in composition.experts if isinstance(e, LongTermExpert)), None)
        spatial = next((e for e in composition.experts if isinstance(e, SpatialExpert)), None)
        self.observed = spatial.memory if spatial is not None else None
        self.lift = spatial is not None or keep_memory

    @property
    def memory_required(self) -> int:
        """Estimated bytes beside the weights that the rollout's largest forward needs on the compute device.

        Each step evaluates each network once per context length, batching the conditionings the mode
        weighs (as ``plan`` assigns them: the short-term expert with its own context, the long-term one on
        the LoRA network, the null with the base context); a long-term expert adds its merged projections.
        """
        model, path, composition = self.model, self.path, self.composition
        w_memory, w_null = weights(composition.mode, composition.alphas)
        samples: Counter[tuple[str, int]] = Counter()
        for expert, w in zip(composition.experts, w_memory):
            if w:
                context = expert.frames if isinstance(expert, ShortTermExpert) else model.context_frames
                samples[LORA if isinstance(expert, LongTermExpert) else BASE, context] += 1
        if any(w_null):
            samples[BASE, model.context_frames] += 1
        largest = max(forward_bytes(model, n, context + self.chunk, path.height, path.width)
                      for (_, context), n in samples.items())
        if self.depth is None:
            largest = max(largest, forward_bytes(model, 1, len(self.frames), path.height, path.width))
        if self.long_term is not None:
            modules = dict(model.network.named_modules())
            largest += sum(modules[t].weight.numel() for t in self.long_term.lora.targets) * model.dtype.itemsize
        return largest

    def __iter__(self) -> Iterator[Chunk]:
        model, path, frames = self.model, self.path, self.frames
        known = len(frames)
        generator = torch.Generator().manual_seed(self.seed)
        # the null context's noise has its own stream, so a composition without a null samples like the base model
        null_generator = torch.Generator().manual_seed((self.seed + 1) % (MAX_SEED + 1))
        depth = self.depth
        if depth is None:
            depth = predict_depth(model, frames, path.c2w[:known], path.K, self.steps, generator, self.callback)
        window = window_frames(model, self.composition)
        observed = self.observed
        if observed is None and self.lift:
            observed = insert_frames(PatchMemory.empty(model.network.config.patch_size), frames, depth,
                                     path.c2w[:known], path.K)
        self.state = state = RolloutState(
            path, model.context_frames, model.mosaic_frames, window, frames[-window:], depth[-window:],
            path.c2w[max(0, known - window):known], (frames[-1:], depth[-1:], path.c2w[known - 1:known]),
            observed=observed, lora=None if self.long_term is None else self.long_term.lora, done=known,
            generated_confidence=model.generated_confidence)
        yield Chunk(frames, depth)
        lora_model = None if state.lora is None else lora_network(model, state.lora)
        w_memory, w_null = weights(self.composition.mode, self.composition.alphas)
        gaussian, alphas_cumprod = model.predicts_variance, model.schedule.alphas_cumprod
        chunk_index = 0
        streams = stream_schedule(model, self.composition, known, len(path), self.chunk)
        while state.done < len(path):
            if streams[chunk_index]:
                # streamed after the previous chunk was handed out, so an interrupt here loses no frame and
                # leaves the previous LoRA in the state
                state.lora = stream_update(model, state.lora, state.rgb, state.depth, state.c2w, path.K,
                                           self.long_term.stream_steps, self.long_term.stream_lr,
                                           (self.seed + chunk_index) % (MAX_SEED + 1), self.lora_callback)
                lora_model = lora_network(model, state.lora)
            targets = path.c2w[state.done:state.done + self.chunk]
            # each expert with the weight of its own null (in every mode an expert without weight has no null)
            plans = [(w, v, plan(expert, state, targets))
                     for expert, w, v in zip(self.composition.experts, w_memory, w_null) if w]
            null = state.null(targets)
            noise = torch.randn(null.context.shape, generator=null_generator) if any(w_null) else None
            networks = {BASE: model, LORA: lora_model}

            def predict(x: torch.Tensor, t: float) -> torch.Tensor:
                # experts that read the same network under the same conditioning share one evaluation, and the
                # evaluations of one network go through it batched
                wanted = [(p.network, p.conditioning) for _, _, p in plans] + [(BASE, null)] * any(w_null)
                unique = {(network, id(c)): (network, c) for network, c in wanted}
                out = {}
                for network in {network for network, _ in unique.values()}:
                    keys = [key for key, (n, _) in unique.items() if n == network]
                    predictions = predict_clean_batch(networks[network], [unique[k][1] for k in keys], x, t, noise,
                                                      with_variance=gaussian)
                    out |= dict(zip(keys, predictions))
                if not gaussian:
                    terms = [(w, p.apply_guidance(out[(p.network, id(p.conditioning))])) for w, _, p in plans]
                    terms += [(v, out[(BASE, id(null))]) for _, v, _ in plans if v]
                    return weighted_mean(terms)[0]
                null_mean, null_variance = out[(BASE, id(null))] if any(w_null) else (None, None)
                gaussians = []
                for w, v, p in plans:
                    mean, variance = out[(p.network, id(p.conditioning))]
                    mean = p.apply_guidance(mean)
                    if not v:
                        gaussians.append((w, mean, variance))
                        continue
                    variance = expert_variance(variance, null_variance)
                    gaussians += [(w, mean, variance), (v, null_mean, prior_variance(mean, variance, null_mean, null_variance))]
                return gaussian_product(gaussians, x, float(alphas_cumprod[int(t)]))

            height, width = path.height, path.width
            # a Gaussian product is the composed posterior's own mean, stepped as DDIM steps one model's
            encoded = denoise(model, predict, (len(targets), 4, height, width), self.steps, generator, self.callback,
                              weight=1.0 if gaussian else sum(w_memory) + sum(w_null))
            out = Chunk(*decode_rgbd(encoded))
            state.add(out.rgb, out.depth, targets, lift=self.lift)
            chunk_index += 1
            yield out


def predict_depth(model: WorldModel, frames: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor, steps: int,
                  generator: torch.Generator, callback: Callable[[int], None] | None = None) -> torch.Tensor:
    """Metric depth [F,H,W] the backbone predicts for frames rgb [F,H,W,3] (0..1) seen from ``c2w`` [F,4,4]: its depth pass."""
    height, width = frames.shape[1:3]
    # the frames as a fully covering mosaic whose depth is hidden: the network fills in the depth channel
    seen = Mosaic(frames, torch.zeros(frames.shape[:3]), torch.ones(frames.shape[:3]))
    depth_pass = build_conditioning(frames[:0], torch.zeros(0, height, width), c2w[:0], c2w, K, seen,
                                    depth_known=False)
    return decode_rgbd(sample_chunk(model, depth_pass, len(frames), steps, generator, callback))[1]


def check_rollout_inputs(composition: object, frames: object, depth: torch.Tensor | None,
                         path: CameraPath) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The checked initial frames and depth (float) of a rollout on any backbone; bad input raises naming it."""
    if not isinstance(composition, Composition):
        raise ValueError(f"composition: expected the output of PoCE Combine, got {type(composition).__name__}.")
    frames = check_frames(frames, "initial_frames")
    if not 1 <= len(frames) < len(path):
        raise ValueError(f"camera_path: it has {len(path)} cameras but {len(frames)} initial frames; the path must be "
                         "longer than the initial frames (one camera per initial frame, then the cameras to generate).")
    if tuple(frames.shape[1:3]) != (path.height, path.width):
        raise ValueError(f"initial_frames: size {tuple(frames.shape[1:3])} differs from the camera path's "
                         f"{(path.height, path.width)}; resize the frames or build the path at their size.")
    if depth is not None:
        if tuple(depth.shape) != tuple(frames.shape[:3]):
            raise ValueError(f"initial_depth: {tuple(depth.shape)} (count, height, width) does not match "
                             f"initial_frames {tuple(frames.shape[:3])}; give one depth map per initial frame at "
                             "their size, or leave initial_depth unconnected to predict it.")
        if not torch.isfinite(depth).all() or bool((depth < 0).any()):
            raise ValueError("initial_depth: holds NaN, inf or negative values; metric depth is metres >= 0 "
                             "(0 = unknown or sky).")
        depth = depth.float()
    return frames, depth


def rollout(model: WorldModel, composition: Composition, frames: torch.Tensor, depth: torch.Tensor | None,
            path: CameraPath, chunk: int = 4, steps: int = DEFAULT_STEPS, seed: int = 0,
            callback: Callable[[int], None] | None = None,
            lora_callback: Callable[[int], None] | None = None, keep_memory: bool = False) -> Rollout:
    """Roll ``composition`` out along ``path``: the first len(frames) cameras are the given frames, the rest is generated.

    Inputs are checked now; the rollout runs as it is iterated, so a caller that stops early keeps
    every chunk finished and ``Rollout.state`` holds memories consistent with them. ``callback`` is
    called after every denoising step, ``lora_callback`` after every streamed LoRA step. Generated
    frames are lifted into a patch memory when a spatial expert reads it or ``keep_memory`` asks for it.
    """
    frames, depth = check_rollout_inputs(composition, frames, depth, path)
    chunk = check_count(chunk, "chunk_size", 1, MAX_CHUNK, "frames")
    check_count(steps, "steps", 1, MAX_STEPS)
    check_count(seed, "seed", 0, MAX_SEED)
    patch = model.network.config.patch_size
    if path.height % patch or path.width % patch:
        raise ValueError(f"camera_path: image size {path.height}x{path.width} is not a multiple of the model's "
                         f"patch size {patch}; set the path's width and height to multiples of {patch}.")
    for expert in composition.experts:
        memory = getattr(expert, "memory", None)
        if memory is not None and memory.patch_size != patch:
            raise ValueError(f"memory: the spatial expert's patch memory has {memory.patch_size}-pixel patches, the "
                             f"backbone {patch}; build the memory with patch_size {patch}.")
        if isinstance(getattr(expert, "lora", None), EpisodicLoRA):
            lora_network(model, expert.lora)  # refuses a LoRA of another backbone or rank now, not mid-rollout
    return Rollout(model, composition, frames, depth, path, chunk, steps, seed, callback, lora_callback, keep_memory)


def navigate(model: WorldModel, frames: torch.Tensor, depth: torch.Tensor | None, path: CameraPath,
             chunk: int = 4, steps: int = DEFAULT_STEPS, seed: int = 0,
             callback: Callable[[int], None] | None = None) -> Rollout:
    """Roll the base model alone out along ``path`` (its declared context and the latest frame's mosaic).

    The last initial frame is an observation and a generated frame's depth is partly a guess, so the
    initial frame stays on top of every chunk's mosaic wherever it is visible, and is found again
    when the camera comes back.
    """
    return rollout(model, BASE_ONLY, frames, depth, path, chunk, steps, seed, callback)


def forward_bytes(model: WorldModel, batch: int, frames: int, height: int, width: int) -> int:
    """Estimated peak bytes of one backbone forward of ``batch`` x ``frames`` frames at height x width: its inputs and activations."""
    patch, hidden = model.network.config.patch_size, model.network.config.hidden_size
    tokens = batch * frames * (height // patch) * (width // patch)
    inputs = (RGBD_CHANNELS + MOSAIC_CHANNELS + RAY_CHANNELS) * patch * patch
    return tokens * (ACTIVATIONS_PER_TOKEN * hidden + inputs) * model.dtype.itemsize


def rollout_steps(initial: int, cameras: int, chunk: int, steps: int, depth_known: bool) -> int:
    """Denoising steps (callback calls) of a rollout: per chunk, plus a depth pass without depth."""
    return steps * (chunk_count(initial, cameras, chunk) + (not depth_known))


def chunk_count(initial: int, cameras: int, chunk: int) -> int:
    """Chunks a rollout generates after ``initial`` given frames along ``cameras`` cameras."""
    return math.ceil((cameras - initial) / chunk)


def window_frames(model: WorldModel, composition: Composition) -> int:
    """Recent frames a rollout keeps: the most any expert or the streaming LoRA reads."""
    return max(model.context_frames, model.mosaic_frames, model.context_frames + STREAM_TARGETS,
               *(getattr(e, "frames", 0) for e in composition.experts))


def stream_schedule(model: WorldModel, composition: Composition, initial: int, cameras: int, chunk: int) -> list[bool]:
    """Per chunk, whether the LoRA streams before it: after a chunk, once the window holds a training window."""
    expert = next((e for e in composition.experts if isinstance(e, LongTermExpert)), None)
    count = chunk_count(initial, cameras, chunk)
    if expert is None or expert.stream_steps == 0:
        return [False] * count
    window, need = window_frames(model, composition), model.context_frames + STREAM_TARGETS
    return [i > 0 and min(window, initial + min(i * chunk, cameras - initial)) >= need for i in range(count)]


def stream_steps(model: WorldModel, composition: Composition, initial: int, cameras: int, chunk: int) -> int:
    """LoRA steps (lora_callback calls) a rollout streams."""
    expert = next((e for e in composition.experts if isinstance(e, LongTermExpert)), None)
    streams = sum(stream_schedule(model, composition, initial, cameras, chunk))
    return 0 if expert is None else expert.stream_steps * streams
