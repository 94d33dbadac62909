"""The training loop of MosaicDiT: x0-prediction with per-frame noise levels, resumable safetensors checkpoints."""
from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDPMScheduler
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from ..world.backbones.mosaic_dit import MosaicDiT, training_schedule
from ..world.world_model import save_world_model
from .loss import training_loss
from .stream import WindowStream
from .windows import load_episodes


@dataclass(frozen=True)
class TrainConfig:
    """What a training run needs; everything else is in the model's config."""

    data: Path
    out: Path
    steps: int = 20000
    minutes: float = 360.0
    batch_size: int = 8
    lr: float = 3e-4
    warmup: int = 200
    seed: int = 0
    save_every: int = 100
    threads: int = 1
    workers: int = 1
    init: Path | None = None
    self_forcing: bool = True


def save_checkpoint(model: MosaicDiT, scheduler: DDPMScheduler, optimizer: torch.optim.Optimizer, step: int,
                    folder: Path) -> None:
    """Model and its noise schedule (a diffusers folder) and optimizer state as safetensors, swapped in atomically."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_world_model(model, tmp, scheduler)
    tensors, meta = {}, {"step": step, "param_groups": optimizer.state_dict()["param_groups"]}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"{index}.{key}"] = value if value.ndim else value.reshape(1)
    save_file(tensors, str(tmp / "optimizer.safetensors"), metadata={"state": json.dumps(meta)})
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(folder: Path, optimizer: torch.optim.Optimizer) -> int:
    """Restore optimizer state saved by :func:`save_checkpoint`; returns the step it was saved at."""
    from safetensors import safe_open

    with safe_open(str(folder / "optimizer.safetensors"), framework="pt") as f:
        meta = json.loads(f.metadata()["state"])
    tensors = load_file(str(folder / "optimizer.safetensors"))
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value.reshape(()) if key == "step" else value
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return int(meta["step"])


def train(config: TrainConfig) -> Path:
    """Train (or resume) until ``steps`` or ``minutes``; returns the checkpoint folder (a diffusers model folder)."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    config.out.mkdir(parents=True, exist_ok=True)
    checkpoint = config.out / "checkpoint"
    start = checkpoint if checkpoint.exists() else config.init
    model = MosaicDiT.from_pretrained(start) if start is not None else MosaicDiT()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    step = load_checkpoint(checkpoint, optimizer) if checkpoint.exists() else 0
    # the schedule is chosen once, when a run starts, and travels with every checkpoint from then on
    scheduler = DDPMScheduler.from_pretrained(start) if start is not None else training_schedule(
        model.config.num_train_timesteps)
    if not checkpoint.exists():
        save_checkpoint(model, scheduler, optimizer, step, checkpoint)  # what the workers' first rollouts read
    stream = WindowStream(load_episodes(config.data), model.config.context_frames, seed=config.seed * 100003 + step,
                          rollout_model=checkpoint if config.self_forcing else None)
    loader = torch.utils.data.DataLoader(stream, batch_size=config.batch_size, num_workers=config.workers)
    generator = torch.Generator().manual_seed(config.seed * 7919 + step)
    log = (config.out / "loss.jsonl").open("a")
    deadline = time.monotonic() + config.minutes * 60
    bar = tqdm(total=config.steps, initial=step, desc="train", unit="step")
    model.train()
    for clean, mosaic, rays in loader:
        if step >= config.steps or time.monotonic() > deadline:
            break
        for group in optimizer.param_groups:
            group["lr"] = config.lr * min(1.0, (step + 1) / config.warmup)
        loss = training_loss(model, scheduler, clean, mosaic, rays, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        log.write(json.dumps({"step": step, "loss": loss.item(), "time": time.time()}) + "\n")
        if step % config.save_every == 0:
            log.flush()
            save_checkpoint(model, scheduler, optimizer, step, checkpoint)
    save_checkpoint(model, scheduler, optimizer, step, checkpoint)
    log.close()
    bar.close()
    return checkpoint
