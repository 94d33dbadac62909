"""World models under ComfyUI's model management: a ModelPatcher per loaded backbone, loaded before every run.

ComfyUI then counts the backbone with its other models: it frees VRAM for it (unloading or offloading
other models), offloads it when another model needs the room, and under ``--lowvram`` (or whenever
the weights do not fit) keeps part of them in RAM and streams them in layer by layer, as it does for
its own models. The engine (memory/) stays free of ComfyUI: it runs wherever ``WorldModel.device``
says, which for a managed model is where ComfyUI has put the weights.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

import comfy.model_management
import comfy.ops
import torch
from comfy.model_patcher import ModelPatcher
from torch import nn

from ..memory.world.backbones.wan import WanWorldModel
from ..memory.world.world_model import WorldModel

# ComfyUI's layers that cast their weights to the input's device and dtype when the patcher marks them as
# streamed, by the torch layer each extends: a swapped layer computes exactly as before while its weights
# are on the compute device, which is what lets ComfyUI load a backbone partially, as it loads its own models
CASTING: dict[type[nn.Module], type[nn.Module]] = {
    layer.__bases__[0]: layer for layer in vars(comfy.ops.disable_weight_init).values()
    if isinstance(layer, type) and issubclass(layer, comfy.ops.CastWeightBiasOp)
}


class Backbone(nn.Module):
    """The network as a ModelPatcher's model: the patcher writes its bookkeeping (``device`` and more) on this wrapper."""

    def __init__(self, network: nn.Module, device: torch.device):
        super().__init__()
        self.network = network
        # a wrapper, because ModelPatcher assigns ``model.device`` on every load and diffusers' ModelMixin.device
        # is a read-only property
        self.device = device


@dataclass(frozen=True)
class ManagedWorldModel(WorldModel):
    """A world model whose weights ComfyUI loads, offloads and unloads through ``patcher`` (Load World Model's output).

    ``full_load`` marks a network with weights outside ComfyUI's casting layers: those cannot be
    streamed per layer, so it is always loaded whole.
    """

    patcher: ModelPatcher
    full_load: bool

    @property
    def device(self) -> torch.device:
        """Where ComfyUI keeps the weights now: the compute device once loaded (some may stream in from RAM)."""
        return self.patcher.current_loaded_device()


@dataclass(frozen=True)
class ManagedWanWorldModel(WanWorldModel):
    """A Wan backbone whose transformer ComfyUI loads, offloads and unloads through ``patcher`` (as ManagedWorldModel)."""

    patcher: ModelPatcher
    full_load: bool

    @property
    def device(self) -> torch.device:
        """Where ComfyUI keeps the transformer's weights now."""
        return self.patcher.current_loaded_device()


def _patcher(network: nn.Module, device: torch.device, load_device: torch.device,
             offload_device: torch.device) -> tuple[ModelPatcher, bool]:
    """A ModelPatcher of ``network`` with its layers made ComfyUI's casting layers in place, and whether it must load whole."""
    for module in network.modules():
        if type(module) in CASTING:
            module.__class__ = CASTING[type(module)]
    # a tensor outside the casting layers stays where it is in a partial load, so such a network loads whole
    fixed = any(not isinstance(module, comfy.ops.CastWeightBiasOp)
                and (list(module.parameters(recurse=False)) or list(module.buffers(recurse=False)))
                for module in network.modules())
    return ModelPatcher(Backbone(network, device), load_device=load_device, offload_device=offload_device), fixed


def manage(model: WorldModel | WanWorldModel, load_device: torch.device,
           offload_device: torch.device) -> ManagedWorldModel | ManagedWanWorldModel:
    """``model`` under ComfyUI's model management, computing on ``load_device`` and offloaded to ``offload_device``.

    Its layers become ComfyUI's casting layers in place (same weights, same results). Of a Wan backbone
    the transformer is managed; its VAE computes where it was loaded.
    """
    if isinstance(model, WanWorldModel):
        patcher, fixed = _patcher(model.transformer, model.device, load_device, offload_device)
        return ManagedWanWorldModel(**{f.name: getattr(model, f.name) for f in fields(WanWorldModel)},
                                    patcher=patcher, full_load=fixed)
    patcher, fixed = _patcher(model.network, model.device, load_device, offload_device)
    return ManagedWorldModel(**{f.name: getattr(model, f.name) for f in fields(WorldModel)}, patcher=patcher,
                             full_load=fixed)


def load_for_run(model: WorldModel, memory_required: int) -> None:
    """Have ComfyUI load a managed ``model`` onto its compute device with ``memory_required`` bytes free beside it.

    A world model built outside Load World Model (a script's, a test's) runs where its weights are.
    """
    if isinstance(model, (ManagedWorldModel, ManagedWanWorldModel)):
        comfy.model_management.load_models_gpu([model.patcher], memory_required=memory_required,
                                               force_full_load=model.full_load)
