"""The long-term expert's episodic LoRA: an episode stored in the weights of a peft LoRA on the backbone.

The adapter sits on the attention and MLP projections of every block (``qkv``, ``proj``, ``fc1``,
``fc2``), trained with the backbone's own training loss (memory/train/loop.py) on random windows
of the episode's frames (memory/train/windows.py), so the LoRA learns exactly what the backbone
reads. The backbone itself is never changed: training runs on a copy with the adapter injected, and
predictions on a copy whose adapted projections have the LoRA merged in (every other weight shared).
"""
from __future__ import annotations

import copy
import json
import math
import os
import random
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict
from torch import nn

from ..files import atomic_save_safetensors, read_safetensors
from ..geometry.camera import validate_cameras
from ..geometry.depth import check_metric_depth
from ..limits import MAX_LORA_RANK, MAX_LORA_STEPS, MAX_SEED, check_count, check_frames
from ..train.loss import training_loss
from ..train.windows import TARGET_FRAMES, make_window, mosaic_sources
from .world_model import WorldModel

LORA_FORMAT = "come-episodic-lora/1"
TARGET_LAYERS = ("qkv", "proj", "fc1", "fc2")
# on a Wan transformer: the projections of every block's self- and cross-attention and of its MLP (diffusers' names)
WAN_LORA_LAYERS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
                   "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0", "ffn.net.0.proj", "ffn.net.2")
ADAPTER = "episodic"
# Measured on this 2-core CPU with the embedded model on the sample episode's 64 context frames (64x64):
# rank 16 (131k adapter weights), 100 AdamW steps of one window each take about 13 s; at lr 1e-3 they
# lower the one-step error on those frames by about 11%, at the paper's 1e-4 (paired there with 500
# steps on a GPU) by about 1%, so the CPU default takes the larger step.
DEFAULT_RANK = 16
DEFAULT_STEPS = 100
DEFAULT_LR = 1e-3
GRAD_CLIP = 1.0  # the backbone's own training clips at 1 too
_WHOLE = re.compile(r"[0-9]{1,12}")


@dataclass(frozen=True, eq=False)
class EpisodicLoRA:
    """LoRA weights (peft names without the adapter name, CPU float32) and what they were trained as and on.

    ``weights`` holds ``<target>.lora_A.weight`` [rank, in] and ``<target>.lora_B.weight`` [out, rank]
    for every module name in ``targets``; the update is ``alpha / rank * B @ A``. ``backbone`` is
    the :func:`backbone_fingerprint` of the network it was trained on, ``steps`` the steps trained so far.
    """

    weights: dict[str, torch.Tensor]
    rank: int
    alpha: float
    targets: tuple[str, ...]
    backbone: str
    steps: int

    def __len__(self) -> int:
        return sum(t.numel() for t in self.weights.values())

    @property
    def scale(self) -> float:
        """The factor of ``B @ A`` in the adapted weights."""
        return self.alpha / self.rank


def backbone_fingerprint(network: nn.Module, keys: tuple[str, ...] = ("patch_size", "hidden_size", "depth", "num_heads")
                         ) -> str:
    """What an adapter's shapes depend on: the backbone class and its shape-defining settings ``keys``."""
    shape = {k: network.config[k] for k in keys if k in network.config}
    return f"{type(network).__name__}:{json.dumps(shape, sort_keys=True)}"


def lora_targets(network: nn.Module) -> tuple[str, ...]:
    """The modules an episodic LoRA adapts: every Linear named qkv, proj, fc1 or fc2 (attention and MLP projections)."""
    return tuple(name for name, module in network.named_modules()
                 if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in TARGET_LAYERS)


def new_lora(model: WorldModel, rank: int = DEFAULT_RANK, seed: int = 0) -> EpisodicLoRA:
    """An untrained LoRA (the update B @ A is zero) for ``model``'s backbone, with alpha = rank."""
    rank = check_count(rank, "rank", 1, MAX_LORA_RANK)
    # peft's own initialisation (kaiming-uniform A, zero B) from a seeded generator, so that a seed gives
    # the same LoRA without touching the global random state ComfyUI's other nodes use
    generator = torch.Generator().manual_seed(check_count(seed, "seed", 0, MAX_SEED))
    weights = {}
    for name in lora_targets(model.network):
        module = model.network.get_submodule(name)
        bound = 1 / math.sqrt(module.in_features)
        weights[f"{name}.lora_A.weight"] = (torch.rand(rank, module.in_features, generator=generator) * 2 - 1) * bound
        weights[f"{name}.lora_B.weight"] = torch.zeros(module.out_features, rank)
    return EpisodicLoRA(weights, rank, float(rank), lora_targets(model.network), backbone_fingerprint(model.network), 0)


def adapted_layer(target: str) -> bool:
    """Whether module name ``target`` is a projection an episodic LoRA adapts (MosaicDiT's or a Wan block's)."""
    return target.rsplit(".", 1)[-1] in TARGET_LAYERS or (
        target.startswith("blocks.") and target.split(".", 2)[-1] in WAN_LORA_LAYERS)


def check_weights(weights: dict[str, torch.Tensor], rank: int, targets: tuple[str, ...], name: str) -> None:
    """ValueError naming ``name`` unless ``weights`` are exactly the finite float A [rank,in] and B [out,rank] of ``targets``."""
    if not targets or any(not isinstance(t, str) or not adapted_layer(t) for t in targets) \
            or len(set(targets)) != len(targets):
        raise ValueError(f"{name}: its targets {list(targets)[:4]} are not distinct {'/'.join(TARGET_LAYERS)} (or Wan "
                         "attention / MLP projection) modules; "
                         "train or save the LoRA again.")
    expected = {f"{t}.lora_{side}.weight" for t in targets for side in "AB"}
    if set(weights) != expected:
        odd = sorted(set(weights) ^ expected)[:3]
        raise ValueError(f"{name}: its weights do not match its targets ({', '.join(odd)}); train or save it again.")
    for key, tensor in weights.items():
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point() or tensor.ndim != 2:
            raise ValueError(f"{name}: weight {key} is not a 2-D float tensor; the LoRA is damaged.")
        if tensor.shape[0 if ".lora_A." in key else 1] != rank:
            raise ValueError(f"{name}: weight {key} has shape {list(tensor.shape)}, which is not rank {rank}; "
                             "the LoRA is damaged.")
        if not torch.isfinite(tensor).all():
            raise ValueError(f"{name}: weight {key} holds NaN or inf; the file is damaged or the training diverged.")


def check_lora(lora: object, model: WorldModel, name: str = "lora") -> EpisodicLoRA:
    """``lora`` if it is an EpisodicLoRA whose backbone, targets and rank fit ``model``, else a ValueError naming ``name``."""
    if not isinstance(lora, EpisodicLoRA):
        raise ValueError(f"{name}: expected an episodic LoRA (Train or Load Episodic LoRA), got {type(lora).__name__}.")
    check_count(lora.rank, name, 1, MAX_LORA_RANK, "(rank)")
    check_weights(lora.weights, lora.rank, lora.targets, name)
    return check_fits(lora, model.network, backbone_fingerprint(model.network), name)


def check_fits(lora: EpisodicLoRA, network: nn.Module, fingerprint: str, name: str = "lora") -> EpisodicLoRA:
    """``lora`` if it was trained on a backbone of ``fingerprint`` and every adapter fits ``network``'s modules, else a ValueError naming ``name``."""
    if lora.backbone != fingerprint:
        raise ValueError(f"{name}: a LoRA trained on another backbone ({lora.backbone}); this world model is "
                         f"{fingerprint}. Train a LoRA on this world model.")
    modules = dict(network.named_modules())
    for target in lora.targets:
        module = modules.get(target)
        a, b = lora.weights[f"{target}.lora_A.weight"], lora.weights[f"{target}.lora_B.weight"]
        if not isinstance(module, nn.Linear) or (a.shape[1], b.shape[0]) != (module.in_features, module.out_features):
            raise ValueError(f"{name}: a LoRA trained on another backbone or rank: its {target} adapter "
                             f"(rank {lora.rank}, {a.shape[1]}->{b.shape[0]}) does not fit this world model. "
                             "Train a LoRA on this world model.")
    return lora


@contextmanager
def _trainable() -> Iterator[None]:
    """Autograd on, even inside ComfyUI's ``torch.inference_mode()`` (every prompt runs under it)."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


@dataclass(frozen=True)
class _Frames:
    """What training windows are cut from (the fields of an Episode that make_window reads): rgb uint8, depth, c2w, K."""

    rgb: torch.Tensor
    depth: torch.Tensor
    c2w: torch.Tensor
    K: torch.Tensor

    def __len__(self) -> int:
        return int(self.rgb.shape[0])


def _frames(model: WorldModel, rgb: object, depth: object, c2w: object, K: object) -> _Frames:
    """The checked training frames, as new (non-inference) tensors: frames 0..1 [T,H,W,3], depth [T,H,W], c2w [T,4,4], K [3,3]."""
    rgb = check_frames(rgb, "frames")
    count, height, width = rgb.shape[:3]
    least = model.context_frames + TARGET_FRAMES
    if count < least:
        raise ValueError(f"frames: a LoRA training window is {least} frames ({model.context_frames} context + "
                         f"{TARGET_FRAMES} targets), got {count}; give at least {least} frames.")
    patch = model.network.config.patch_size
    if height % patch or width % patch:
        raise ValueError(f"frames: {height}x{width} is not a multiple of the model's patch size {patch}; "
                         f"resize the frames to multiples of {patch}.")
    depth = check_metric_depth(depth, "metric_depth")
    if tuple(depth.shape) != (count, height, width):
        raise ValueError(f"metric_depth: {list(depth.shape)} (count, height, width) does not match the frames "
                         f"{[count, height, width]}; give one depth map per frame at their size.")
    if not isinstance(c2w, torch.Tensor) or not isinstance(K, torch.Tensor):
        raise ValueError("camera_path: expected camera poses c2w [T,4,4] and intrinsics K [3,3] as tensors.")
    validate_cameras(c2w.float(), K.float(), "camera_path")
    if len(c2w) != count:
        raise ValueError(f"camera_path: {len(c2w)} cameras for {count} frames; give one camera per frame.")
    with _trainable():
        # make_window reads frames as uint8 (episodes store them so); copies made here are ordinary tensors,
        # since tensors created under inference_mode cannot be saved for backward
        return _Frames((rgb * 255).round().to(torch.uint8), depth.float().clone(), c2w.float().clone(),
                       K.float().clone())


def _adapted(model: WorldModel, lora: EpisodicLoRA) -> nn.Module:
    """A float32 CPU copy of the backbone with ``lora`` injected as a trainable peft adapter (the backbone frozen)."""
    with _trainable():
        # nn.Module.to: diffusers' ModelMixin.to warns about dtype casts that are intended here
        network = nn.Module.to(copy.deepcopy(model.network), device="cpu", dtype=torch.float32)
        config = LoraConfig(r=lora.rank, lora_alpha=lora.alpha, target_modules=list(lora.targets), lora_dropout=0.0)
        # low_cpu_mem_usage: the adapter starts on the meta device (no random init), its weights are loaded next
        network = inject_adapter_in_model(config, network, adapter_name=ADAPTER, low_cpu_mem_usage=True)
        # clones: training must never write into the tensors of the LoRA value it started from
        set_peft_model_state_dict(network, {k: v.clone() for k, v in lora.weights.items()}, adapter_name=ADAPTER,
                                  low_cpu_mem_usage=True)
        for key, parameter in network.named_parameters():
            parameter.requires_grad_(".lora_" in key)
    return network


def check_lr(lr: object) -> float:
    """``lr`` as a float in (0, 1), else a ValueError naming ``lr``."""
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < 1:
        raise ValueError(f"lr: the learning rate must be a number in (0, 1), got {lr!r}; try {DEFAULT_LR}.")
    return float(lr)


class LoRATraining:
    """LoRA training as it runs: each item is one AdamW step (its loss); ``lora`` is the adapter after the steps finished.

    ``adapt()`` gives the trainable copy of the backbone with ``start`` in its adapter, and
    ``loss(network, rng, generator)`` one step's loss on a random window of the episode, so every
    backbone trains its LoRA in this one loop. A caller that stops iterating (a cancel) keeps a
    consistent LoRA of the steps done so far.
    """

    def __init__(self, start: EpisodicLoRA, steps: int, lr: float, seed: int, adapt: Callable[[], nn.Module],
                 loss: Callable[[nn.Module, random.Random, torch.Generator], torch.Tensor]):
        self.start, self.steps, self.lr, self.seed, self.adapt, self.loss = start, steps, lr, seed, adapt, loss
        self.losses: list[float] = []
        self._network: nn.Module | None = None

    def __iter__(self) -> Iterator[float]:
        self.losses, network = [], self.adapt()
        self._network = network.train()
        trainable = [p for p in network.parameters() if p.requires_grad]
        with _trainable():
            optimizer = torch.optim.AdamW(trainable, lr=self.lr, weight_decay=0.0)
        rng, generator = random.Random(self.seed), torch.Generator().manual_seed(self.seed)
        for _ in range(self.steps):
            # grad mode per step, not around the yield: the caller's code must not run with autograd on
            with _trainable():
                loss = self.loss(network, rng, generator)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, GRAD_CLIP)
                optimizer.step()
            self.losses.append(loss.item())
            yield self.losses[-1]

    @property
    def lora(self) -> EpisodicLoRA:
        """The LoRA after the steps finished so far (``start`` before the first)."""
        if self._network is None:
            return self.start
        with _trainable():
            state = get_peft_model_state_dict(self._network, adapter_name=ADAPTER)
            weights = {k: v.detach().float().cpu().clone() for k, v in state.items()}
        return replace(self.start, weights=weights, steps=self.start.steps + len(self.losses))


def lora_training(model: WorldModel, rgb: torch.Tensor, depth: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor,
                  rank: int = DEFAULT_RANK, steps: int = DEFAULT_STEPS, lr: float = DEFAULT_LR, seed: int = 0,
                  start: EpisodicLoRA | None = None) -> LoRATraining:
    """Checked inputs of a LoRA training that runs as it is iterated (see :func:`train_episodic_lora` for the arguments)."""
    if not isinstance(model, WorldModel):
        raise ValueError(f"world_model: expected the output of Load World Model, got {type(model).__name__}.")
    steps = check_count(steps, "steps", 1, MAX_LORA_STEPS)
    lr = check_lr(lr)
    seed = check_count(seed, "seed", 0, MAX_SEED)
    start = new_lora(model, rank, seed) if start is None else check_lora(start, model)
    frames, c = _frames(model, rgb, depth, c2w, K), model.context_frames

    def window_loss(network: nn.Module, rng: random.Random, generator: torch.Generator) -> torch.Tensor:
        """The backbone's own loss on one random window of the frames."""
        first = rng.randrange(0, len(frames) - c - TARGET_FRAMES + 1)
        window = make_window(frames, first, mosaic_sources(frames, first, c, rng), c)
        return training_loss(network, model.schedule, window.clean[None], window.mosaic[None], window.rays[None],
                             generator)

    return LoRATraining(start, steps, lr, seed, lambda: _adapted(model, start), window_loss)


def train_episodic_lora(model: WorldModel, rgb: torch.Tensor, depth: torch.Tensor, c2w: torch.Tensor,
                        K: torch.Tensor, rank: int = DEFAULT_RANK, steps: int = DEFAULT_STEPS,
                        lr: float = DEFAULT_LR, seed: int = 0, callback: Callable[[int], None] | None = None,
                        start: EpisodicLoRA | None = None) -> tuple[EpisodicLoRA, list[float]]:
    """A LoRA trained ``steps`` AdamW steps on random windows of frames rgb [T,H,W,3] 0..1, depth [T,H,W], c2w [T,4,4], K.

    ``start`` continues an earlier LoRA (its rank wins; the optimizer starts afresh). ``callback(step)``
    runs after every step; an exception it raises (a cancel) propagates; iterate :func:`lora_training`
    to keep the steps finished instead. Deterministic for a seed; works inside ``torch.inference_mode()``.
    """
    run = lora_training(model, rgb, depth, c2w, K, rank, steps, lr, seed, start)
    for step, _ in enumerate(run):
        if callback is not None:
            callback(step)
    return run.lora, run.losses


def stream_update(model: WorldModel, lora: EpisodicLoRA, rgb: torch.Tensor, depth: torch.Tensor, c2w: torch.Tensor,
                  K: torch.Tensor, steps: int, lr: float, seed: int,
                  callback: Callable[[int], None] | None = None) -> EpisodicLoRA:
    """``lora`` after ``steps`` more steps on the latest frames (at least context + 4); a rollout calls it after each chunk.

    Each step trains on one window whatever the number of frames, so the cost per call is constant
    when the caller passes a bounded number of recent frames.
    """
    return train_episodic_lora(model, rgb, depth, c2w, K, steps=steps, lr=lr, seed=seed, callback=callback,
                               start=lora)[0]


def lora_network(model: WorldModel, lora: EpisodicLoRA) -> WorldModel:
    """A copy of ``model`` whose network is the backbone with ``lora`` merged into its projections (``model`` unchanged).

    The copy keeps ``model``'s class and fields (a subclass that says where the backbone computes, as the
    nodes' managed model does), so it runs where the weights it shares with the backbone are.
    """
    check_lora(lora, model)
    network = model.network
    # every parameter is shared with the backbone except the adapted weights, which are new tensors assigned
    # to the copied modules: a copy costs the adapted projections only, and the backbone is never written
    shared = {id(t): t for t in (*network.parameters(), *network.buffers())}
    adapted = copy.deepcopy(network, memo=shared)
    with torch.no_grad():
        for target in lora.targets:
            module = adapted.get_submodule(target)
            a, b = lora.weights[f"{target}.lora_A.weight"], lora.weights[f"{target}.lora_B.weight"]
            delta = (b @ a * lora.scale).to(module.weight.device)
            merged = (module.weight.float() + delta).to(module.weight.dtype)
            module.weight = nn.Parameter(merged, requires_grad=False)
    return replace(model, network=adapted.eval(), name=f"{model.name}+lora")


def save_lora(lora: EpisodicLoRA, path: str | os.PathLike) -> Path:
    """Write ``lora`` atomically as a ``come-episodic-lora/1`` safetensors file (rank, alpha, targets, backbone, steps in metadata)."""
    metadata = {"format": LORA_FORMAT, "rank": str(lora.rank), "alpha": repr(float(lora.alpha)),
                "targets": json.dumps(list(lora.targets)), "backbone": lora.backbone, "steps": str(lora.steps)}
    return atomic_save_safetensors(lora.weights, path, metadata)


def load_lora(path: str | os.PathLike) -> EpisodicLoRA:
    """Read a LoRA written by :func:`save_lora`; ValueErrors naming ``lora_file`` for damaged or foreign files."""
    tensors, metadata = read_safetensors(path, LORA_FORMAT, "lora_file")
    where = f"lora_file: {path}"
    try:
        rank, steps, alpha = metadata["rank"], metadata["steps"], float(metadata["alpha"])
        targets, backbone = json.loads(metadata["targets"]), metadata["backbone"]
    except (KeyError, ValueError, TypeError):
        raise ValueError(f"{where} has missing or damaged metadata (rank, alpha, targets, backbone, steps); "
                         "save the LoRA again.") from None
    if not _WHOLE.fullmatch(rank) or not _WHOLE.fullmatch(steps) or not 1 <= int(rank) <= MAX_LORA_RANK \
            or not math.isfinite(alpha) or alpha <= 0 or not isinstance(targets, list) or not backbone:
        raise ValueError(f"{where} has metadata out of range (rank {rank!r}, alpha {alpha!r}, steps {steps!r}, "
                         f"targets, backbone); save the LoRA again.")
    targets = tuple(targets)
    check_weights(tensors, int(rank), targets, where)
    return EpisodicLoRA({k: v.float() for k, v in tensors.items()}, int(rank), alpha, targets, backbone, int(steps))
