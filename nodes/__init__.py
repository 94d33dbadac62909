"""ComfyUI nodes of the pack: thin wrappers that declare sockets and call one engine function each."""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io
from typing_extensions import override

from .camera_paths import CameraPathFromJSON, CameraPathKeyframes, CameraPathOrbit, CameraPathText, CameraPathToJSON
from .depth import DepthFromImage
from .edit_memory import EditPatchMemory
from .episode import LoadEpisode
from .experts import (
    BaseExpertNode, LongTermExpertNode, NavigateWithMemory, PoCECombine, ShortTermExpertNode, SpatialExpertNode,
)
from .lora import ExportEpisodicLoRA, LoadEpisodicLoRA, SaveEpisodicLoRA, TrainEpisodicLoRA
from .memory_files import LoadPatchMemory, PatchMemoryMap, PatchMemoryTo3D, SavePatchMemory
from .patch_memory import BuildPatchMemory, MergePatchMemories, RenderPatchMemory
from .poce_guider import PoCEGuiderExpert, PoCEGuiderNode
from .world_model import LoadWorldModel, Navigate

NODES: list[type[io.ComfyNode]] = [
    LoadEpisode,
    CameraPathText,
    CameraPathKeyframes,
    CameraPathOrbit,
    CameraPathFromJSON,
    CameraPathToJSON,
    DepthFromImage,
    BuildPatchMemory,
    EditPatchMemory,
    MergePatchMemories,
    RenderPatchMemory,
    SavePatchMemory,
    LoadPatchMemory,
    PatchMemoryTo3D,
    PatchMemoryMap,
    LoadWorldModel,
    Navigate,
    BaseExpertNode,
    ShortTermExpertNode,
    SpatialExpertNode,
    LongTermExpertNode,
    PoCECombine,
    NavigateWithMemory,
    TrainEpisodicLoRA,
    SaveEpisodicLoRA,
    LoadEpisodicLoRA,
    ExportEpisodicLoRA,
    PoCEGuiderExpert,
    PoCEGuiderNode,
]


class CoMEExtension(ComfyExtension):
    """Registers every CoME node with ComfyUI."""

    @override
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return NODES
