"""The long-term expert's episodic LoRA: an episode stored in the weights of a peft LoRA on the backbone.

The adapter sits on the attention and MLP projections of every block (``qkv``, ``proj``, ``fc1``,
``fc2``), trained with the backbone's own training loss (memory/train/loop.py) on random windows
of the episode's frames (memory/train/windows.py), so the LoRA learns exactly what the backbone
reads. The backbone itself is never changed: training and prediction use a copy with the adapter.
"""
from __future__ import annotations

import copy
import json
import os
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model, set_peft_model_state_dict

from ..data.episode import Episode
from ..files import atomic_save_safetensors, read_safetensors
from ..limits import check_count, check_frames
from ..train.loop import training_loss
from ..train.windows import TARGET_FRAMES, make_window, mosaic_sources
from .backbones.mosaic_dit import MosaicDiT
from .world_model import WorldModel

LORA_FORMAT = "come-episodic-lora/1"
TARGETS = ("qkv", "proj", "fc1", "fc2")
ADAPTER = "episodic"
# Defaults measured on the 2-core CPU (one thread) with the embedded model on the sample's 64 context
# frames: rank 16 (131k adapter weights), 100 AdamW steps of one window each take 13 s and lower the
# one-step error on those frames by 11% at lr 1e-3 (1% at the paper's 1e-4, which pairs it with 500 steps).
DEFAULT_RANK = 16
DEFAULT_STEPS = 100
DEFAULT_LR = 1e-3
MAX_RANK = 512
MAX_STEPS = 100_000


@dataclass(frozen=True)
class EpisodicLoRA:
    """LoRA weights (peft names without the adapter name, CPU float32) and what they were trained as and on."""

    weights: dict[str, torch.Tensor]
    rank: int
    alpha: float
    targets: tuple[str, ...]
    backbone: str
    steps: int

    def __len__(self) -> int:
        return sum(t.numel() for t in self.weights.values())


def backbone_fingerprint(network: MosaicDiT) -> str:
    """What an adapter's shapes depend on: the backbone class and its shape-defining settings."""
    shape = {k: network.config[k] for k in ("patch_size", "hidden_size", "depth", "num_heads")}
    return f"{type(network).__name__}:{json.dumps(shape, sort_keys=True)}"


def _adapted(model: WorldModel, rank: int, alpha: float, weights: dict[str, torch.Tensor] | None,
             seed: int = 0) -> MosaicDiT:
    """A float32 CPU copy of the backbone with a LoRA adapter injected (initialised from ``seed``, or loaded from ``weights``)."""
    # nn.Module.to: diffusers' ModelMixin.to warns about dtype casts that are intended here
    network = nn.Module.to(copy.deepcopy(model.network), device="cpu", dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(TARGETS), lora_dropout=0.0)
    with torch.random.fork_rng(devices=[]):
        # peft draws lora_A from the global generator; a seeded fork keeps training deterministic per seed
        torch.manual_seed(seed)
        network = inject_adapter_in_model(config, network, adapter_name=ADAPTER)
    if weights is not None:
        set_peft_model_state_dict(network, weights, adapter_name=ADAPTER)
    for name, parameter in network.named_parameters():
        parameter.requires_grad_("lora_" in name)
    return network


def _episode(rgb: torch.Tensor, depth: torch.Tensor, c2w: torch.Tensor, K: torch.Tensor, name: str) -> Episode:
    """The frames as an Episode that training windows are cut from (cloned: inference tensors cannot be trained on)."""
    frames = check_frames(rgb, name)
    return Episode((frames * 255).round().to(torch.uint8).clone(), depth.float().clone(), c2w.float().clone(),
                   K.float().clone(), None, "episodic-lora", 0, len(frames) - 1)


def train_episodic_lora(model: WorldModel, rgb: torch.Tensor, depth: torch.Tensor, c2w: torch.Tensor,
                        K: torch.Tensor, rank: int = DEFAULT_RANK, steps: int = DEFAULT_STEPS,
                        lr: float = DEFAULT_LR, seed: int = 0, callback: Callable[[int], None] | None = None,
                        start: EpisodicLoRA | None = None) -> tuple[EpisodicLoRA, list[float]]:
    """A LoRA trained ``steps`` AdamW steps on random windows of frames rgb [T,H,W,3] 0..1, depth [T,H,W], c2w [T,4,4].

    ``start`` continues an earlier LoRA (its rank wins). ``callback(step)`` runs after every step; if
    it raises (a cancel), training stops and the steps finished are kept. Works inside
    ``torch.inference_mode()``, as every ComfyUI prompt runs.
    """
    if start is not None:
        check_lora(start, model)
    rank = start.rank if start is not None else check_count(rank, "rank", 1, MAX_RANK)
    check_count(steps, "steps", 1, MAX_STEPS)
    if not (isinstance(lr, (int, float)) and 0 < lr < 1):
        raise ValueError(f"lr: the learning rate must be a number in (0, 1), got {lr!r}.")
    c = model.context_frames
    if len(rgb) < c + TARGET_FRAMES:
        raise ValueError(f"frames: a LoRA window needs {c + TARGET_FRAMES} frames ({c} context + {TARGET_FRAMES}), "
                         f"got {len(rgb)}; give more frames.")
    alpha = float(start.alpha if start is not None else rank)
    losses: list[float] = []
    with torch.inference_mode(False), torch.enable_grad():
        episode = _episode(rgb, depth, c2w, K, "frames")
        network = _adapted(model, rank, alpha, None if start is None else start.weights, seed).train()
        optimizer = torch.optim.AdamW([p for p in network.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
        rng, generator = random.Random(seed), torch.Generator().manual_seed(seed)
        for step in range(int(steps)):
            first = rng.randrange(0, len(episode) - c - TARGET_FRAMES + 1)
            window = make_window(episode, first, mosaic_sources(episode, first, c, rng), c)
            loss = training_loss(network, model.schedule, window.clean[None], window.mosaic[None],
                                 window.rays[None], generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if callback is not None:
                try:
                    callback(step)
                except Exception:  # a cancel from the caller: keep the steps finished
                    break
        weights = {k: v.detach().float().cpu().clone()
                   for k, v in get_peft_model_state_dict(network, adapter_name=ADAPTER).items()}
    done = (start.steps if start is not None else 0) + len(losses)
    return EpisodicLoRA(weights, rank, alpha, TARGETS, backbone_fingerprint(model.network), done), losses


def check_lora(lora: object, model: WorldModel, name: str = "lora") -> EpisodicLoRA:
    """``lora`` if it is an EpisodicLoRA trained on this backbone, else a ValueError naming ``name``."""
    if not isinstance(lora, EpisodicLoRA):
        raise ValueError(f"{name}: expected an episodic LoRA (Train or Load Episodic LoRA), got {type(lora).__name__}.")
    expected = backbone_fingerprint(model.network)
    if lora.backbone != expected:
        raise ValueError(f"{name}: it was trained on another backbone ({lora.backbone}), this model is {expected}; "
                         "train a LoRA on this world model.")
    return lora


def lora_network(model: WorldModel, lora: EpisodicLoRA) -> WorldModel:
    """The world model with the LoRA applied (a copy; ``model`` stays as it is)."""
    check_lora(lora, model)
    try:
        network = _adapted(model, lora.rank, lora.alpha, lora.weights)
    except (RuntimeError, ValueError, KeyError) as err:
        raise ValueError(f"lora: its weights do not fit this backbone with rank {lora.rank} ({err}).") from None
    network = nn.Module.to(network, device=model.device, dtype=model.dtype).eval()
    return WorldModel(network, f"{model.name}+lora", model.schedule)


def stream_update(model: WorldModel, lora: EpisodicLoRA, rgb: torch.Tensor, depth: torch.Tensor, c2w: torch.Tensor,
                  K: torch.Tensor, steps: int, lr: float, seed: int,
                  callback: Callable[[int], None] | None = None) -> EpisodicLoRA:
    """``lora`` after ``steps`` more steps on the latest frames (a rollout calls it after each chunk: constant cost)."""
    return train_episodic_lora(model, rgb, depth, c2w, K, steps=steps, lr=lr, seed=seed, callback=callback,
                               start=lora)[0]


def save_lora(lora: EpisodicLoRA, path: str | os.PathLike) -> Path:
    """Write ``lora`` atomically as a ``come-episodic-lora/1`` safetensors file."""
    metadata = {"format": LORA_FORMAT, "rank": str(lora.rank), "alpha": repr(lora.alpha),
                "targets": json.dumps(list(lora.targets)), "backbone": lora.backbone, "steps": str(lora.steps)}
    return atomic_save_safetensors(lora.weights, path, metadata)


def load_lora(path: str | os.PathLike) -> EpisodicLoRA:
    """Read a LoRA written by :func:`save_lora`; ValueErrors naming ``lora_file`` for damaged or foreign files."""
    tensors, metadata = read_safetensors(path, LORA_FORMAT, "lora_file")
    try:
        rank, alpha, steps = int(metadata["rank"]), float(metadata["alpha"]), int(metadata["steps"])
        targets, backbone = tuple(json.loads(metadata["targets"])), metadata["backbone"]
    except (KeyError, ValueError, TypeError):
        raise ValueError(f"lora_file: {path} has missing or damaged metadata (rank, alpha, targets, backbone, "
                         "steps); save the LoRA again.") from None
    if not 1 <= rank <= MAX_RANK or not 0 < alpha < float("inf") or steps < 0 or targets != TARGETS:
        raise ValueError(f"lora_file: {path} has metadata out of range (rank {rank}, alpha {alpha}, steps {steps}, "
                         f"targets {list(targets)}); save the LoRA again.")
    if not tensors:
        raise ValueError(f"lora_file: {path} holds no weights; save the LoRA again.")
    for name, tensor in tensors.items():
        if not name.endswith((".lora_A.weight", ".lora_B.weight")) or not name.rsplit(".", 2)[0].endswith(TARGETS):
            raise ValueError(f"lora_file: {path} holds '{name}', not a LoRA weight of {', '.join(TARGETS)}.")
        if not tensor.is_floating_point() or not torch.isfinite(tensor).all():
            raise ValueError(f"lora_file: {path} weight {name} is not finite float values; the file is damaged.")
        side = 0 if name.endswith("lora_A.weight") else 1
        if tensor.ndim != 2 or tensor.shape[side] != rank:
            raise ValueError(f"lora_file: {path} weight {name} has shape {list(tensor.shape)}, not rank {rank}.")
    return EpisodicLoRA({k: v.float() for k, v in tensors.items()}, rank, alpha, targets, backbone, steps)
