"""Memory experts, PoCE and the episodic LoRA on a Wan backbone: rollouts in its latent space with flow matching.

The experts are the same values as on the embedded model and read the same rollout state (recent
frames, the patch memory with observed patches over generated ones, the LoRA); what differs is how a
memory enters the network. Each chunk is one latent clip: the latest frame, then ``chunk`` new frames
(a multiple of the VAE's temporal factor). An expert's memory is the conditioning video (that frame,
then the mosaic its memory renders in each target camera) and its coverage mask, which an
image-to-video transformer reads beside its latents; its null memory is the conditioning it reads as
nothing (a grey video, mask 0). PoCE composes the experts' velocities as clean estimates
(x0 = x − σ·v) with the weights of ``poce.weights``, stepped by the folder's own scheduler where the
weights sum to 1 and by the exact composed step where they do not. Generated frames are lifted into
the patch memory with depth from the embedded model (or the caller's depth model).
"""
from __future__ import annotations

import copy
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn

from ..geometry.camera import CameraPath
from ..limits import MAX_LORA_RANK, MAX_LORA_STEPS, MAX_SEED, MAX_STEPS, check_count, check_frames
from ..patch_memory import PatchMemory, insert_frames
from .backbones.wan import WanWorldModel, decode_video, encode_video, transformer_inputs
from .experts import (
    BASE, LORA, BaseExpert, Composition, LongTermExpert, RolloutState, ShortTermExpert, SpatialExpert,
)
from .lora import (
    ADAPTER, DEFAULT_RANK, EpisodicLoRA, LoRATraining, adapted_layer, backbone_fingerprint, check_fits, check_lr, check_weights,
)
from .mosaic import Mosaic, warp_frames
from .poce import composed_step, weighted_mean, weights
from .rollout import MAX_CHUNK, Chunk, check_rollout_inputs, chunk_count, predict_depth
from .world_model import WorldModel, load_world_model

# Wan's own pipelines sample in 30-50 steps; fewer lose detail, more cost time on a CPU
DEFAULT_WAN_STEPS = 30
WAN_SHAPE_KEYS = ("patch_size", "num_attention_heads", "attention_head_dim", "num_layers", "ffn_dim", "in_channels",
                  "text_dim")
# the adapter of the long-term expert's transformer in a rollout
ROLLOUT_ADAPTER = "come_long_term"
GREY = 0.5  # what an image-to-video Wan reads as "no frame here": 0 in its [-1, 1] pixels


@dataclass(frozen=True)
class WanPlan:
    """How one expert predicts a chunk on Wan: which network (BASE or LORA) and the mosaic its memory renders."""

    network: str
    mosaic: Mosaic | None
    guidance: float = 1.0


def wan_lora_targets(transformer: nn.Module) -> tuple[str, ...]:
    """The Linear modules an episodic LoRA adapts on a Wan transformer: attention and MLP projections of every block."""
    return tuple(name for name, module in transformer.named_modules()
                 if isinstance(module, nn.Linear) and name.startswith("blocks.") and adapted_layer(name))


def new_wan_lora(model: WanWorldModel, rank: int = DEFAULT_RANK, seed: int = 0) -> EpisodicLoRA:
    """An untrained episodic LoRA (B = 0) for ``model``'s transformer, initialised by peft from ``seed``."""
    rank = check_count(rank, "rank", 1, MAX_LORA_RANK)
    check_count(seed, "seed", 0, MAX_SEED)
    targets = wan_lora_targets(model.transformer)
    with torch.random.fork_rng(devices=[]):
        # peft initialises A from the global generator: seeded in a fork, ComfyUI's random state stays as it was
        torch.manual_seed(seed)
        network = _adapted(model, targets, rank, float(rank))
        weights = {k: v.detach().float().cpu().clone() for k, v in get_peft_model_state_dict(network, adapter_name=ADAPTER).items()}
    return EpisodicLoRA(weights, rank, float(rank), targets, backbone_fingerprint(model.transformer, WAN_SHAPE_KEYS), 0)


def check_wan_lora(lora: object, model: WanWorldModel, name: str = "lora") -> EpisodicLoRA:
    """``lora`` if it is an episodic LoRA whose backbone, targets and rank fit this Wan transformer, else a ValueError naming ``name``."""
    if not isinstance(lora, EpisodicLoRA):
        raise ValueError(f"{name}: expected an episodic LoRA (Train or Load Episodic LoRA), got {type(lora).__name__}.")
    check_count(lora.rank, name, 1, MAX_LORA_RANK, "(rank)")
    check_weights(lora.weights, lora.rank, lora.targets, name)
    return check_fits(lora, model.transformer, backbone_fingerprint(model.transformer, WAN_SHAPE_KEYS), name)


def _adapted(model: WanWorldModel, targets: tuple[str, ...], rank: int, alpha: float,
             lora: EpisodicLoRA | None = None) -> nn.Module:
    """A trainable float32 copy of the transformer with an episodic adapter (``lora``'s weights) added by its own peft support."""
    with torch.inference_mode(False):
        # a copy outside inference mode: ComfyUI loads weights as inference tensors, which autograd cannot save
        network = copy.deepcopy(model.transformer).float()
        network.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets)), adapter_name=ADAPTER)
        if lora is not None:
            # clones: training must never write into the tensors of the LoRA value it started from
            set_peft_model_state_dict(network, {k: v.clone() for k, v in lora.weights.items()}, adapter_name=ADAPTER)
    for parameter_name, parameter in network.named_parameters():
        parameter.requires_grad_(f".{ADAPTER}." in parameter_name)
    return network


def condition_video(model: WanWorldModel, anchor: torch.Tensor | None, mosaic: Mosaic | None,
                    frames: int, height: int, width: int) -> torch.Tensor:
    """What an image-to-video transformer reads beside its latents [1, 4 + z, T', h, w]: mask and conditioning video.

    ``anchor`` rgb [H,W,3] is the clip's first frame, ``mosaic`` the memory's rendering of the ``frames``
    targets after it (None for both: the null memory, a grey video under mask 0).
    """
    video = torch.full((1 + frames, height, width, 3), GREY)
    coverage = torch.zeros(1 + frames, height, width)
    if anchor is not None:
        video[0], coverage[0] = anchor.float(), 1.0
    if mosaic is not None:
        covered = mosaic.mask > 0
        video[1:] = torch.where(covered[..., None], mosaic.rgb.float(), video[1:])
        coverage[1:] = torch.where(covered, mosaic.mask.float(), 0.0)
    latents = encode_video(model, video)
    return torch.cat([latent_mask(model, coverage), latents], 1)


def latent_mask(model: WanWorldModel, coverage: torch.Tensor) -> torch.Tensor:
    """Coverage [1+T,H,W] as Wan I2V's mask [1,4,T',h,w]: the first frame repeated to a full latent frame, then 4 frames per latent."""
    cells = F.avg_pool2d(coverage[:, None], model.spatial_scale)[:, 0]
    cells = torch.cat([cells[:1].expand(model.temporal_scale, -1, -1), cells[1:]])
    latent_frames = len(cells) // model.temporal_scale
    return cells.view(latent_frames, model.temporal_scale, *cells.shape[1:]).transpose(0, 1)[None]


def guide(model: WanWorldModel, x0: torch.Tensor, condition: torch.Tensor, weight: float) -> torch.Tensor:
    """Training-free memory for a text-to-video transformer: ``x0`` pulled toward the encoded mosaic where the mask covers."""
    coverage = condition[:, :model.temporal_scale].mean(1, keepdim=True)
    return x0 + weight * coverage * (condition[:, model.temporal_scale:] - x0)


def wan_plan(expert: object, state: RolloutState, targets: torch.Tensor, mosaics: dict) -> WanPlan:
    """Which network and mosaic ``expert`` predicts the chunk at cameras ``targets`` [T,4,4] with, from the rollout's memories.

    ``mosaics`` holds the chunk's warps of the latest frames by source count, so experts reading the same
    one share it (and its encoding) instead of warping again.
    """
    def latest(frames: int) -> Mosaic:
        if frames not in mosaics:
            mosaics[frames] = state.latest_mosaic(targets, frames)
        return mosaics[frames]

    if isinstance(expert, ShortTermExpert):
        return WanPlan(BASE, latest(expert.frames))
    if isinstance(expert, SpatialExpert):
        mosaic, memory_only = state.spatial_mosaic(targets, expert.memory, expert.max_patches)
        if expert.guidance > 0:
            return WanPlan(BASE, memory_only, guidance=expert.guidance)
        return WanPlan(BASE, mosaic)
    return WanPlan(LORA if isinstance(expert, LongTermExpert) else BASE, latest(state.mosaic_frames))


def lora_transformer(model: WanWorldModel, lora: EpisodicLoRA) -> nn.Module:
    """The transformer with ``lora`` added by its own peft support, on a copy that shares every weight of the loaded one.

    The loaded transformer stays untouched (other nodes and experts use it as it is); only the adapted
    modules are new, and :func:`load_lora_weights` refreshes the adapter after a streamed update.
    """
    shared = {id(t): t for t in (*model.transformer.parameters(), *model.transformer.buffers())}
    adapted = copy.deepcopy(model.transformer, memo=shared)
    adapted.add_adapter(LoraConfig(r=lora.rank, lora_alpha=lora.alpha, target_modules=list(lora.targets)),
                        adapter_name=ROLLOUT_ADAPTER)
    return load_lora_weights(adapted, lora)


def load_lora_weights(adapted: nn.Module, lora: EpisodicLoRA) -> nn.Module:
    """``adapted`` (from :func:`lora_transformer`) with ``lora``'s weights in its adapter."""
    set_peft_model_state_dict(adapted, lora.weights, adapter_name=ROLLOUT_ADAPTER)
    return adapted


class WanRollout:
    """An iterator of :class:`Chunk` on a Wan backbone (the initial frames first); ``state`` holds the memories."""

    def __init__(self, model: WanWorldModel, composition: Composition, frames: torch.Tensor,
                 depth: torch.Tensor | None, path: CameraPath, chunk: int, steps: int, seed: int,
                 depth_model: WorldModel, callback: Callable[[int], None] | None,
                 lora_callback: Callable[[int], None] | None, keep_memory: bool):
        self.model, self.composition, self.path, self.frames, self.depth = model, composition, path, frames, depth
        self.chunk, self.steps, self.seed, self.depth_model = chunk, steps, seed, depth_model
        self.callback, self.lora_callback = callback, lora_callback
        self.long_term = next((e for e in composition.experts if isinstance(e, LongTermExpert)), None)
        spatial = next((e for e in composition.experts if isinstance(e, SpatialExpert)), None)
        self.observed = spatial.memory if spatial is not None else None
        self.lift = spatial is not None or keep_memory
        self.state: RolloutState | None = None

    @property
    def memory_required(self) -> int:
        """Estimated bytes beside the weights of the largest forward: a step's conditionings of one network, batched."""
        w_memory, w_null = weights(self.composition.mode, self.composition.alphas)
        base = sum(1 for e, w in zip(self.composition.experts, w_memory) if w and not isinstance(e, LongTermExpert))
        return wan_forward_bytes(self.model, max(base + any(w_null), 1), self.chunk, self.path.height, self.path.width)

    def __iter__(self) -> Iterator[Chunk]:
        model, path, frames = self.model, self.path, self.frames
        known = len(frames)
        generator = torch.Generator().manual_seed(self.seed)
        depth = self.depth
        if depth is None:
            depth = predict_depth(self.depth_model, frames, path.c2w[:known], path.K, 1, generator)
        window = max([e.frames for e in self.composition.experts if isinstance(e, ShortTermExpert)] + [1])
        if self.long_term is not None and self.long_term.stream_steps:
            window = max(window, 1 + model.temporal_scale)  # a streamed LoRA step trains on one whole clip
        observed = self.observed
        if observed is None and self.lift:
            observed = insert_frames(PatchMemory.empty(model.token_pixels), frames, depth, path.c2w[:known], path.K)
        self.state = state = RolloutState(
            path, 1, 1, window, frames[-window:], depth[-window:], path.c2w[max(0, known - window):known],
            (frames[-1:], depth[-1:], path.c2w[known - 1:known]), observed=observed,
            lora=None if self.long_term is None else self.long_term.lora, done=known)
        yield Chunk(frames, depth)
        networks = {BASE: model.transformer}
        if state.lora is not None:
            networks[LORA] = lora_transformer(model, state.lora)
        yield from self._chunks(state, networks, generator)

    def _chunks(self, state: RolloutState, networks: dict[str, nn.Module], generator: torch.Generator) -> Iterator[Chunk]:
        """The generated chunks, one latent clip each, the memories updated after every one."""
        model, path = self.model, self.path
        w_memory, w_null = weights(self.composition.mode, self.composition.alphas)
        total = sum(w_memory) + sum(w_null)
        latent_shape = (1, model.latent_channels, 1 + self.chunk // model.temporal_scale,
                        path.height // model.spatial_scale, path.width // model.spatial_scale)
        # the null memory holds nothing of the walk: one encoding serves every chunk
        null = condition_video(model, None, None, self.chunk, path.height, path.width) if any(w_null) else None
        chunk_index = 0
        while state.done < len(path):
            if chunk_index and self.long_term is not None and self.long_term.stream_steps:
                # streamed after the previous chunk was handed out: an interrupt here loses no frame
                lora = train_wan_lora(model, state.rgb, state.depth, state.c2w, path.K, state.lora,
                                      self.long_term.stream_steps, self.long_term.stream_lr,
                                      (self.seed + chunk_index) % (MAX_SEED + 1), self.lora_callback)
                networks[LORA] = load_lora_weights(networks[LORA], lora)
                state.lora = lora
            new = min(self.chunk, len(path) - state.done)
            # the last chunk keeps the clip length the VAE needs: its last camera repeated, the extra frames dropped
            cameras = path.c2w[state.done:state.done + new]
            targets = torch.cat([cameras, cameras[-1:].expand(self.chunk - new, -1, -1)])
            anchor = state.rgb[-1]
            mosaics: dict[int, Mosaic] = {}
            plans = [(w, v, wan_plan(expert, state, targets, mosaics))
                     for expert, w, v in zip(self.composition.experts, w_memory, w_null) if w]
            conditions: dict[int, torch.Tensor] = {}
            for _, _, p in plans:
                if id(p.mosaic) not in conditions:
                    conditions[id(p.mosaic)] = condition_video(model, anchor, p.mosaic, self.chunk, path.height,
                                                               path.width)
            latents = self._denoise(plans, conditions, null, networks, latent_shape, total, generator)
            rgb = decode_video(model, latents)[1:1 + new]
            depth = predict_depth(self.depth_model, rgb, cameras, path.K, 1, generator)
            state.add(rgb, depth, cameras, lift=self.lift)
            chunk_index += 1
            yield Chunk(rgb, depth)

    def _denoise(self, plans: list, conditions: dict, null: torch.Tensor | None, networks: dict[str, nn.Module],
                 shape: tuple, total: float, generator: torch.Generator) -> torch.Tensor:
        """One clip's clean latents under the composition, from pure noise along the folder's scheduler's sigmas."""
        model = self.model
        scheduler = model.scheduler()
        scheduler.set_timesteps(self.steps)
        sigmas = scheduler.sigmas.float()
        x = torch.randn(shape, generator=generator)
        wanted = [(p.network, id(p.mosaic), conditions[id(p.mosaic)]) for _, _, p in plans]
        if null is not None:
            wanted.append((BASE, "null", null))
        unique = {(network, key): condition for network, key, condition in wanted}
        for i, t in enumerate(scheduler.timesteps):
            sigma, sigma_next = float(sigmas[i]), float(sigmas[i + 1])
            clean = {}
            for network in sorted({network for network, _ in unique}):
                keys = [key for key in unique if key[0] == network]
                batch = torch.cat([unique[k] for k in keys])
                args, kwargs = transformer_inputs(model, x.expand(len(keys), -1, -1, -1, -1), sigma, batch)
                with torch.no_grad():
                    v = networks[network](*args, **kwargs)[0].float().cpu()
                clean |= {k: x - sigma * v[j:j + 1] for j, k in enumerate(keys)}
            terms = []
            for w, v_null, p in plans:
                x0 = clean[(p.network, id(p.mosaic))]
                if not model.reads_mosaics and p.mosaic is not None:
                    x0 = guide(model, x0, conditions[id(p.mosaic)], p.guidance)
                terms.append((w, x0))
                if v_null:
                    terms.append((v_null, clean[(BASE, "null")]))
            mean, _ = weighted_mean(terms)
            if total == 1:
                x = scheduler.step(((x - mean) / sigma).to(x.dtype), t, x).prev_sample
            else:
                x = composed_step(x, mean, 1 - sigma, sigma, 1 - sigma_next, sigma_next, total)
            if self.callback is not None:
                self.callback(i)
        return x


def wan_forward_bytes(model: WanWorldModel, batch: int, chunk: int, height: int, width: int) -> int:
    """Estimated peak bytes of one transformer forward of ``batch`` clips of 1 + ``chunk`` frames at height x width.

    An estimate from sizes, not a count: per token the attention's q, k, v and output (4 x hidden) and
    the MLP's hidden layer (2 x ffn_dim) in the transformer's dtype, plus the float32 conditioning video.
    """
    config = model.transformer.config
    latent_frames = 1 + chunk // model.temporal_scale
    tokens = batch * latent_frames * (height // model.token_pixels) * (width // model.token_pixels)
    hidden = config.num_attention_heads * config.attention_head_dim
    return tokens * (4 * hidden + 2 * config.ffn_dim) * model.dtype.itemsize + batch * (1 + chunk) * height * width * 12


def wan_progress_steps(composition: Composition, initial: int, cameras: int, chunk: int, steps: int) -> int:
    """Callback calls of a Wan rollout: denoising steps of every chunk and streamed LoRA steps between chunks."""
    chunks = chunk_count(initial, cameras, chunk)
    expert = next((e for e in composition.experts if isinstance(e, LongTermExpert)), None)
    return steps * chunks + (0 if expert is None else expert.stream_steps * max(chunks - 1, 0))


def wan_rollout(model: WanWorldModel, composition: Composition, frames: torch.Tensor, depth: torch.Tensor | None,
                path: CameraPath, chunk: int = 4, steps: int = DEFAULT_WAN_STEPS, seed: int = 0,
                depth_model: WorldModel | None = None, callback: Callable[[int], None] | None = None,
                lora_callback: Callable[[int], None] | None = None, keep_memory: bool = False) -> WanRollout:
    """Roll ``composition`` out on a Wan backbone along ``path``; inputs are checked now, chunks made as it is iterated.

    ``depth_model`` (default: the embedded model) predicts the depth that lifts generated frames into
    the patch memory, and that of the initial frames when ``depth`` is None. A caller that stops early
    keeps every chunk finished, and ``WanRollout.state`` holds memories consistent with them.
    """
    frames, depth = check_rollout_inputs(composition, frames, depth, path)
    chunk = check_count(chunk, "chunk_size", 1, MAX_CHUNK, "frames")
    if chunk % model.temporal_scale:
        raise ValueError(f"chunk_size: {chunk} frames do not fill whole latent frames of this Wan VAE "
                         f"({model.temporal_scale} frames each); use a multiple of {model.temporal_scale}.")
    check_count(steps, "steps", 1, MAX_STEPS)
    check_count(seed, "seed", 0, MAX_SEED)
    token = model.token_pixels
    if path.height % token or path.width % token:
        raise ValueError(f"camera_path: image size {path.height}x{path.width} is not a multiple of the Wan model's token "
                         f"({token} pixels: VAE {model.spatial_scale} x patch); set the path's size to multiples of "
                         f"{token}.")
    for expert in composition.experts:
        memory = getattr(expert, "memory", None)
        if memory is not None and memory.patch_size != token:
            raise ValueError(f"memory: the spatial expert's patch memory has {memory.patch_size}-pixel patches, this Wan "
                             f"model's tokens are {token} pixels (one patch per token); build the memory with "
                             f"patch_size {token}.")
        if isinstance(expert, LongTermExpert):
            check_wan_lora(expert.lora, model)
    depth_model = depth_model if depth_model is not None else load_world_model()
    return WanRollout(model, composition, frames, depth, path, chunk, steps, seed,
                      depth_model, callback, lora_callback, keep_memory)


def wan_lora_training(model: WanWorldModel, rgb: torch.Tensor, depth: torch.Tensor, c2w: torch.Tensor,
                      K: torch.Tensor, lora: EpisodicLoRA, steps: int, lr: float, seed: int) -> LoRATraining:
    """Checked inputs of an episodic-LoRA training on a Wan backbone that runs as it is iterated (one item per AdamW step).

    The loss is the backbone's own flow-matching loss under the base expert's conditioning (a clip's
    first frame and its warp into the other cameras of the clip) on the frames after the first, for
    clips drawn at random from frames rgb [F,H,W,3] 0..1, depth [F,H,W], c2w [F,4,4]. Works inside
    ``torch.inference_mode()``; deterministic for a seed; a caller that stops keeps the steps finished.
    """
    check_wan_lora(lora, model)
    steps = check_count(steps, "steps", 1, MAX_LORA_STEPS)
    lr = check_lr(lr)
    check_count(seed, "seed", 0, MAX_SEED)
    clip = 1 + model.temporal_scale
    with torch.inference_mode(False):
        # copies made outside inference mode, which autograd can save for backward
        frames, depth = check_frames(rgb, "frames").float().clone(), depth.float().clone()
        c2w, K = c2w.float().clone(), K.float().clone()
    if len(frames) < clip:
        raise ValueError(f"frames: an episodic LoRA on this Wan model trains on clips of {clip} frames, got "
                         f"{len(frames)}; give at least {clip} frames.")
    height, width = frames.shape[1:3]

    def clip_loss(network: nn.Module, rng: random.Random, generator: torch.Generator) -> torch.Tensor:
        """The flow-matching loss of one random clip."""
        start = rng.randrange(len(frames) - clip + 1)
        source = slice(start, start + 1)
        mosaic = warp_frames(frames[source], depth[source], c2w[source], K, c2w[start + 1:start + clip])
        condition = condition_video(model, frames[start], mosaic, clip - 1, height, width)
        target = encode_video(model, frames[start:start + clip])
        sigma = torch.rand((), generator=generator)
        noise = torch.randn(target.shape, generator=generator)
        args, kwargs = transformer_inputs(model, (1 - sigma) * target + sigma * noise, sigma, condition,
                                          dtype=torch.float32)
        predicted = network(*args, **kwargs)[0].float().cpu()
        return F.mse_loss(predicted[:, :, 1:], (noise - target)[:, :, 1:])

    return LoRATraining(lora, steps, lr, seed, lambda: _adapted(model, lora.targets, lora.rank, lora.alpha, lora),
                        clip_loss)


def train_wan_lora(model: WanWorldModel, rgb: torch.Tensor, depth: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor,
                   lora: EpisodicLoRA, steps: int, lr: float, seed: int,
                   callback: Callable[[int], None] | None = None) -> EpisodicLoRA:
    """``lora`` trained ``steps`` steps (:func:`wan_lora_training`); ``callback(step)`` after each, its exceptions propagate."""
    run = wan_lora_training(model, rgb, depth, c2w, K, lora, steps, lr, seed)
    for step, _ in enumerate(run):
        if callback is not None:
            callback(step)
    return run.lora
