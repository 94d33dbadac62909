"""The training loop of MosaicDiT: x0-prediction with per-frame noise levels, resumable safetensors checkpoints."""
from __future__ import annotations

import json
import random
import shutil
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import EMAModel
from tqdm import tqdm

from ..files import atomic_write
from ..world.backbones.mosaic_dit import RGBD_CHANNELS, MosaicDiT, training_schedule
from ..world.world_model import CONFIG_RANGES, save_world_model
from .distributed import Ranks, joined
from .adversarial import Adversary
from .average import check_decay, save_average, weight_average
from .loss import ADVERSARIAL_WEIGHT, GRADIENT_WEIGHT, STATISTICS_WEIGHT, training_loss, variance_loss
from .optimizer_state import load_state, save_state
from .recolour import RECOLOUR
from .stream import MAX_FORCED_CHUNKS, WindowStream
from .windows import load_episodes

# the modules a run may add, freshly initialised, to an --init model that has none
ADDABLE_MODULES = ("variance.", "refiner.")


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
    generated_confidence: float | None = None
    # the global batch is drawn as this many equal shards, each from its own seeded window stream (default: one
    # per process); the same shards give the same run on any number of processes that divides them
    shards: int | None = None
    # train only the variance head on the frozen network (added to an --init model that has none)
    variance_head: bool = False
    # deepest self-forced rollout, in chunks (each chunk one window)
    forced_chunks: int = MAX_FORCED_CHUNKS
    # share of the drawn episodes recoloured alike in every frame (recolour.recoloured)
    recolour: float = RECOLOUR
    # weight of the colours' gradient difference in the loss (loss.gradient_difference)
    gradient_weight: float = GRADIENT_WEIGHT
    # weight of the difference of each frame's colour and texture statistics (loss.statistics_difference)
    statistics_weight: float = STATISTICS_WEIGHT
    # weight of the scene critic's term (adversarial.Adversary); its critic is saved with every checkpoint
    adversarial_weight: float = ADVERSARIAL_WEIGHT
    # channels of a convolutional refiner added (zero-initialised) to an --init model without one; None keeps the model's
    refiner_channels: int | None = None
    # decay of the weights' moving average saved beside each checkpoint (average.py); 0 keeps none
    ema_decay: float = 0.0


def save_checkpoint(model: MosaicDiT, scheduler: DDPMScheduler, optimizer: torch.optim.Optimizer, step: int,
                    folder: Path, adversary: Adversary | None = None, average: EMAModel | None = None) -> None:
    """Model and its noise schedule (a diffusers folder), optimizer state, critic and weight average, swapped in atomically."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_world_model(model, tmp, scheduler)
    if adversary is not None:
        adversary.save(tmp)
    if average is not None:
        save_average(average, model, tmp, scheduler)
    meta = {"step": step, "ema_updates": average.optimization_step if average is not None else 0}
    save_state(tmp / "optimizer.safetensors", optimizer, meta)
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(folder: Path, optimizer: torch.optim.Optimizer) -> tuple[int, int]:
    """Restore optimizer state saved by :func:`save_checkpoint`; returns the step and the weight average's updates then."""
    _, meta = load_state(folder / "optimizer.safetensors", optimizer)
    return int(meta["step"]), int(meta.get("ema_updates", 0))


def shard_seed(config: TrainConfig, step: int, shard: int) -> int:
    """The seed of one shard's window stream when a run (re)starts at ``step``; shard 0's is that of a one-process run."""
    # shards apart by far more steps than a run takes, so no two streams of a run share a seed
    return config.seed * 100003 + step + shard * 10**9


def check_shards(config: TrainConfig, ranks: Ranks) -> int:
    """The shards of the global batch: ``config.shards`` (default one per process), checked against processes and batch."""
    shards = ranks.world_size if config.shards is None else config.shards
    if shards < 1 or shards % ranks.world_size:
        raise ValueError(f"shards: {shards} shards cannot be split evenly over {ranks.world_size} processes; "
                         "give a multiple of the number of processes.")
    if config.batch_size % shards:
        raise ValueError(f"batch_size: the global batch of {config.batch_size} windows cannot be split into "
                         f"{shards} equal shards (one per process by default); give a multiple of {shards}.")
    return shards


def with_added_modules(model: MosaicDiT, **settings: int) -> MosaicDiT:
    """``model`` rebuilt with new module ``settings`` (e.g. a variance head), its weights kept and the new modules fresh."""
    trunk = model.state_dict()
    # private keys dropped: diffusers resets the keys "_use_default_values" lists to their defaults
    current = {key: value for key, value in model.config.items() if not key.startswith("_")}
    model = MosaicDiT.from_config({**current, **settings})
    missing, unexpected = model.load_state_dict(trunk, strict=False)
    if unexpected or any(not name.startswith(ADDABLE_MODULES) for name in missing):
        raise ValueError(f"init: the model's weights do not fit the modules added beside them ({unexpected[:3]}).")
    return model


def with_variance_head(model: MosaicDiT) -> MosaicDiT:
    """``model`` with only its variance head trainable; one with none gets a new, zero-initialised head (one map per channel)."""
    if not model.config.variance_channels:
        model = with_added_modules(model, variance_channels=RGBD_CHANNELS)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(name.startswith("variance."))
    return model


def trim_log(path: Path, step: int) -> None:
    """Drop the entries of a run's ``loss.jsonl`` after ``step``, so a resumed run logs every step once."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)

    def before(line: str) -> bool:
        # an interrupted run logged steps its last checkpoint does not hold, and may have left half a line
        try:
            return json.loads(line)["step"] <= step
        except (ValueError, KeyError, TypeError):
            return False

    kept = [line for line in lines if before(line)]
    if len(kept) != len(lines):
        atomic_write(path, lambda tmp: Path(tmp).write_text("".join(kept)))


def train(config: TrainConfig) -> Path:
    """Train (or resume) until ``steps`` or ``minutes``; returns the checkpoint folder (a diffusers model folder).

    Started by torchrun, every process trains on its shards of each global batch, the gradients averaged
    (DistributedDataParallel); only rank 0 writes the checkpoint and loss.jsonl.
    """
    with joined() as ranks:
        return _train(config, ranks)


def _train(config: TrainConfig, ranks: Ranks) -> Path:
    """:func:`train` as one of the processes ``ranks`` describes."""
    shards = check_shards(config, ranks)
    if isinstance(config.forced_chunks, bool) or not isinstance(config.forced_chunks, int) or config.forced_chunks < 1:
        raise ValueError(f"forced_chunks: the deepest self-forced rollout must be a whole number of chunks >= 1, "
                         f"got {config.forced_chunks!r}.")
    for name, value, low, high in [("recolour", config.recolour, 0, 1), ("gradient_weight", config.gradient_weight, 0, 100),
                                   ("statistics_weight", config.statistics_weight, 0, 100),
                                   ("adversarial_weight", config.adversarial_weight, 0, 100)]:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
            raise ValueError(f"{name}: must be a number in {low}..{high}, got {value!r}.")
    if config.adversarial_weight and config.variance_head:
        raise ValueError("adversarial_weight: the variance head is trained by likelihood on a frozen network; "
                         "give --adversarial-weight 0 with --variance-head.")
    confidence, (low, high) = config.generated_confidence, CONFIG_RANGES["generated_confidence"]
    if confidence is not None and not (isinstance(confidence, (int, float)) and low <= confidence <= high):
        raise ValueError(f"generated_confidence: must be a number in {low}..{high} (the coverage of mosaic pixels "
                         f"warped from generated frames; 1 = treated as observed), got {confidence!r}.")
    check_decay(config.ema_decay)
    refiner, (_, most) = config.refiner_channels, CONFIG_RANGES["refiner_channels"]
    if refiner is not None and (isinstance(refiner, bool) or not isinstance(refiner, int) or not 0 < refiner <= most):
        raise ValueError(f"refiner_channels: must be a whole number in 1..{most}, got {refiner!r}.")
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    random.seed(config.seed)
    config.out.mkdir(parents=True, exist_ok=True)
    checkpoint = config.out / "checkpoint"
    resuming = checkpoint.exists()
    start = checkpoint if resuming else config.init
    if start is not None and not (start / "config.json").is_file():
        raise ValueError(f"init: {start} is not a model folder (no config.json); give a folder written by "
                         "save_pretrained, e.g. memory/weights/mosaic_dit.")
    model = MosaicDiT.from_pretrained(start) if start is not None else MosaicDiT()
    if refiner is not None and refiner != model.config.refiner_channels:
        if resuming or model.config.refiner_channels:
            raise ValueError(f"refiner_channels: the model already has {model.config.refiner_channels} refiner "
                             "channels and a run sets its refiner when it starts; resume without --refiner-channels, "
                             "or start a new run folder from an --init model without a refiner.")
        model = with_added_modules(model, refiner_channels=refiner)
    if config.variance_head:
        model = with_variance_head(model)
    if config.generated_confidence is not None:
        # an input convention of the model, so it is saved in its config and every caller reads it there
        model.register_to_config(generated_confidence=config.generated_confidence)
    model.to(ranks.device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=0.01)
    adversary = Adversary(config.adversarial_weight, ranks) if config.adversarial_weight else None
    objective = variance_loss if config.variance_head else partial(
        training_loss, gradient_weight=config.gradient_weight, statistics_weight=config.statistics_weight,
        adversary=adversary)
    step, updates = load_checkpoint(checkpoint, optimizer) if resuming else (0, 0)
    average = weight_average(model, config.ema_decay, checkpoint if resuming else None, updates)
    if resuming and ranks.main:
        trim_log(config.out / "loss.jsonl", step)
    if resuming and adversary is not None:
        adversary.load(checkpoint)
    # the schedule is chosen once, when a run starts, and travels with every checkpoint from then on
    scheduler = DDPMScheduler.from_pretrained(start) if start is not None else training_schedule(
        model.config.num_train_timesteps)
    ranks.barrier()  # every process has read the checkpoint before rank 0 writes one
    log = (config.out / "loss.jsonl").open("a") if ranks.main else None

    def save() -> None:
        """Rank 0 writes the log so far and the checkpoint; the others wait, so every rollout worker reads it next."""
        if ranks.main:
            log.flush()
            save_checkpoint(model, scheduler, optimizer, step, checkpoint, adversary, average)
        ranks.barrier()

    if not resuming:
        save()  # what the workers' first rollouts read
    if not checkpoint.exists():
        raise ValueError(f"out: process {ranks.rank} does not see the checkpoint rank 0 wrote under {config.out}; "
                         "on several machines the run folder must be one they all share.")
    episodes = load_episodes(config.data)
    mine = range(ranks.rank * shards // ranks.world_size, (ranks.rank + 1) * shards // ranks.world_size)
    loaders = [torch.utils.data.DataLoader(
        WindowStream(episodes, model.config.context_frames, seed=shard_seed(config, step, shard),
                     rollout_model=checkpoint if config.self_forcing else None,
                     forced_chunks=config.forced_chunks, recolour=config.recolour),
        batch_size=config.batch_size // shards, num_workers=config.workers) for shard in mine]
    # the same draws on every process (each keeps its rows of the batch): they do not depend on the processes
    generator = torch.Generator().manual_seed(config.seed * 7919 + step)
    trained = ranks.parallel(model)
    deadline = time.monotonic() + config.minutes * 60
    bar = tqdm(total=config.steps, initial=step, desc="train", unit="step", disable=not ranks.main)
    model.train()
    for batches in zip(*loaders):
        if step >= config.steps or ranks.any(time.monotonic() > deadline):
            break
        clean, mosaic, rays = (torch.cat(parts).to(ranks.device) for parts in zip(*batches))
        for group in optimizer.param_groups:
            group["lr"] = config.lr * min(1.0, (step + 1) / config.warmup)
        loss = objective(trained, scheduler, clean, mosaic, rays, generator, ranks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        if average is not None:
            average.step(model.parameters())
        step += 1
        logged = ranks.mean(loss.detach()).item()  # the whole batch's loss
        bar.update(1)
        bar.set_postfix(loss=f"{logged:.4f}")
        if ranks.main:
            entry = {"step": step, "loss": logged, "time": time.time()}
            if adversary is not None:
                entry["critic"] = adversary.last_critic_loss
            log.write(json.dumps(entry) + "\n")
        if step % config.save_every == 0:
            save()
    save()
    if ranks.main:
        log.close()
    bar.close()
    return checkpoint
