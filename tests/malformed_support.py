"""The table format of the malformed-input test: a case, and the environment its call runs in.

A case feeds one malformed value to a node (or to the engine behind it) and names the node input a
user has to fix; ``tests/test_malformed_inputs.py`` asserts that the call raises a ``ValueError``
whose message contains that name, at once, and that it wrote or changed no file. Each family of
nodes keeps its cases in ``tests/malformed_cases/<family>.py`` as a list ``CASES``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class Case:
    """One malformed input: ``call(env)`` must raise a ValueError whose message contains ``input_name``.

    ``setup(env)`` runs before the file snapshot, e.g. to write a damaged file that ``call`` loads.
    """

    id: str
    input_name: str
    call: Callable[["Env"], Any]
    setup: Callable[["Env"], Any] | None = None


@dataclass
class Env:
    """ComfyUI's registered nodes, its folders, and valid values for every socket type of the pack."""

    mappings: dict
    output: Path
    input: Path
    scratch: Path
    cache: dict = field(default_factory=dict)

    def node(self, node_id: str) -> type:
        """The registered class of a node."""
        return self.mappings[node_id]

    def call(self, node_id: str, **overrides: Any) -> Any:
        """Execute a node with valid inputs (widget defaults, sample values for sockets) except ``overrides``.

        Optional inputs stay unconnected unless overridden; required sockets get :meth:`socket_value`.
        """
        cls = self.node(node_id)
        kwargs = {}
        for spec in cls.GET_SCHEMA().inputs:
            if spec.id in overrides or getattr(spec, "optional", False):
                continue
            default = getattr(spec, "default", None)
            if default is None and getattr(spec, "options", None):
                default = spec.options[0]
            kwargs[spec.id] = default if default is not None else self.socket_value(spec.get_io_type(), node_id)
        kwargs.update(overrides)
        return cls.execute(**kwargs)

    def socket_value(self, io_type: str, node_id: str = "") -> Any:
        """A valid value for a socket of ``io_type``, all from the embedded sample episode."""
        values = {
            "IMAGE": lambda: self.frames,
            "MASK": lambda: torch.ones(1, self.path.height, self.path.width),
            "COME_CAMERA_PATH": lambda: self.path,
            "COME_DEPTH": lambda: self.metric_depth,
            "COME_PATCH_MEMORY": lambda: self.memory,
            "COME_WORLD_MODEL": lambda: self.model,
            "COME_EXPERT": lambda: self.expert,
            "COME_COMPOSITION": lambda: self.composition,
            "COME_EPISODIC_LORA": lambda: self.lora,
            "COME_GUIDER_EXPERTS": lambda: self.guider_experts,
        }
        if io_type not in values:
            raise KeyError(f"no sample value for a {io_type} socket of {node_id}")
        return values[io_type]()

    @cached_property
    def episode(self) -> tuple:
        """The outputs of Load Episode on the embedded sample: frames, depth image, path, metric depth, context."""
        return self.node("CoMELoadEpisode").execute(episode="sample_episode.safetensors").args

    @property
    def frames(self) -> torch.Tensor:
        """The sample episode's frames [T,H,W,3]."""
        return self.episode[0]

    @property
    def path(self) -> Any:
        """The sample episode's camera path."""
        return self.episode[2]

    @property
    def metric_depth(self) -> Any:
        """The sample episode's metric depth."""
        return self.episode[3]

    @cached_property
    def memory(self) -> Any:
        """A patch memory of the sample episode's first 16 frames."""
        path = self.path.slice(0, 16)
        depth = type(self.metric_depth)(self.metric_depth.metres[:16])
        return self.node("CoMEBuildPatchMemory").execute(
            frames=self.frames[:16], metric_depth=depth, camera_path=path, patch_size=8, voxel_size=0.05,
            first_frame=0, last_frame=-1, frame_stride=1).args[0]

    @cached_property
    def guider_experts(self) -> Any:
        """One PoCE guider expert on the embedded model's ModelPatcher (a real MODEL), with a one-token conditioning."""
        conditioning = [[torch.zeros(1, 1, 8), {}]]
        return self.node("CoMEPoCEGuiderExpert").execute(model=self.model.patcher, positive=conditioning,
                                                          null=conditioning, alpha=2.0).args[0]

    @cached_property
    def model(self) -> Any:
        """The embedded default world model, through Load World Model."""
        return self.call("CoMELoadWorldModel", device="cpu").args[0]

    @cached_property
    def expert(self) -> Any:
        """A base expert, through its node."""
        return self.call("CoMEBaseExpert").args[0]

    @cached_property
    def composition(self) -> Any:
        """A composition of the base expert alone, through PoCE Combine."""
        return self.call("CoMEPoCECombine", expert_1=self.expert).args[0]

    @cached_property
    def lora(self) -> Any:
        """A one-step episodic LoRA of the sample's first 8 frames, through Train Episodic LoRA."""
        depth = type(self.metric_depth)(self.metric_depth.metres[:8])
        return self.call("CoMETrainEpisodicLoRA", frames=self.frames[:8], metric_depth=depth,
                         camera_path=self.path.slice(0, 8), steps=1).args[0]
