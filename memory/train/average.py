"""The run's exponential moving average of the weights (diffusers' EMAModel), kept beside each checkpoint as a model folder.

At a constant learning rate the last checkpoint of a run is one point of a wandering trajectory: two checkpoints
of one run can fall into different long-rollout behaviours (drift), so the run's end would decide by luck. The
average over the last ~1/(1 - decay) steps is the usual remedy for diffusion models (Song & Ermon 2020; Karras
et al. 2024), and, being a model folder, it is what a run ships.
"""
from __future__ import annotations

import copy
from pathlib import Path

import torch
from diffusers import DDPMScheduler
from diffusers.training_utils import EMAModel

from ..world.backbones.mosaic_dit import MosaicDiT
from ..world.world_model import save_world_model

AVERAGE_FOLDER = "ema"


def check_decay(decay: float) -> float:
    """``decay`` if it is a number in [0, 1) (0: no average), else a ValueError naming ``ema_decay``."""
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 <= decay < 1:
        raise ValueError(f"ema_decay: must be a number in [0, 1) (0 keeps no average; 0.999 averages about the "
                         f"last 1000 steps), got {decay!r}.")
    return float(decay)


def weight_average(model: MosaicDiT, decay: float, checkpoint: Path | None, updates: int) -> EMAModel | None:
    """The average of ``model``'s weights (None at decay 0): resumed from ``checkpoint/ema`` if given, else started at them."""
    if not check_decay(decay):
        if checkpoint is not None and (checkpoint / AVERAGE_FOLDER).is_dir():
            raise ValueError(f"ema_decay: the run in {checkpoint.parent} keeps an average of its weights; resume it "
                             "with the --ema-decay it was started with.")
        return None
    start = model
    if checkpoint is not None:
        if not (checkpoint / AVERAGE_FOLDER).is_dir():
            raise ValueError(f"ema_decay: the run in {checkpoint.parent} was started without an average of its "
                             "weights, so there is none to continue; resume it without --ema-decay, or start a new "
                             "run folder with --init from its checkpoint.")
        start = MosaicDiT.from_pretrained(checkpoint / AVERAGE_FOLDER).to(next(model.parameters()).device)
    average = EMAModel(start.parameters(), decay=decay)
    average.optimization_step = updates
    return average


def save_average(average: EMAModel, model: MosaicDiT, folder: Path, scheduler: DDPMScheduler) -> None:
    """Write ``average`` as a model folder ``folder/ema`` (``model``'s config and schedule, the averaged weights)."""
    averaged = copy.deepcopy(model)
    with torch.no_grad():
        average.copy_to(averaged.parameters())
    save_world_model(averaged, folder / AVERAGE_FOLDER, scheduler)
