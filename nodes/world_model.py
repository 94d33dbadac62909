"""Load a world model (the embedded default or a folder from models/world_models/) and navigate with it."""
from __future__ import annotations

import os
from pathlib import Path

import comfy.model_management
import folder_paths
import torch
from comfy_api.latest import io

from ..memory.geometry.camera import CameraPath
from ..memory.geometry.depth import DepthMaps, depth_to_image
from ..memory.files import confined_path
from ..memory.world.backbones.wan import WanWorldModel, is_wan_folder, load_wan_world_model
from ..memory.world.rollout import BASE_ONLY, DEFAULT_STEPS, navigate, rollout_steps
from ..memory.world.wan_rollout import wan_progress_steps, wan_rollout
from ..memory.world.world_model import DEFAULT_MODEL, WorldModel, load_world_model
from .managed_model import load_for_run, manage
from .types import (
    CATEGORY, CameraPathType, DepthType, Progress, WorldModelType, check_options, require_world_model, until_interrupted,
)

SUBCATEGORY = f"{CATEGORY}/world model"
MODEL_FOLDER = "world_models"
DEFAULT_CHOICE = "come-default (embedded)"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

folder_paths.add_model_folder_path(MODEL_FOLDER, os.path.join(folder_paths.models_dir, MODEL_FOLDER))


def model_choices() -> list[str]:
    """The embedded default, then every model folder under ComfyUI's ``models/world_models/``.

    A model folder holds a config.json (MosaicDiT) or is a diffusers Wan pipeline, whose components'
    own config.json files are not models on their own.
    """
    found = set()
    for root in map(Path, folder_paths.get_folder_paths(MODEL_FOLDER)):
        if not root.is_dir():
            continue
        for config in root.rglob("config.json"):
            folder = config.parent
            if is_wan_folder(folder.parent):
                folder = folder.parent
            if folder != root:
                found.add(folder.relative_to(root).as_posix())
    return [DEFAULT_CHOICE, *sorted(found)]


def resolve_model(name: str) -> Path:
    """The folder behind a choice of :func:`model_choices`, confined to the registered world_models folders."""
    if name == DEFAULT_CHOICE:
        return DEFAULT_MODEL
    roots = folder_paths.get_folder_paths(MODEL_FOLDER)
    for root in roots:
        folder = confined_path(root, name, "model")
        if folder.is_dir():
            return folder
    raise ValueError(f"model: no folder '{name}' under {', '.join(roots)}; put a diffusers model folder "
                     "(config.json + .safetensors) there and refresh, or pick another model.")


class LoadWorldModel(io.ComfyNode):
    """Load a MosaicDiT world model: the embedded default, or a diffusers folder from models/world_models/."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CoMELoadWorldModel",
            display_name="Load World Model (CoME)",
            category=SUBCATEGORY,
            description="Loads the RGB-D video world model. The first entry is the small model shipped with the "
            "pack (works offline on a CPU); other entries are folders (config.json + .safetensors, as written by "
            "save_pretrained) under ComfyUI's models/world_models/, or diffusers Wan 2.1 / 2.2 folders (transformer/, "
            "vae/, scheduler/ and text_embeddings.safetensors with the prompt's embeddings).",
            inputs=[
                io.Combo.Input("model", options=model_choices(),
                               tooltip="The embedded default model, or a model folder from models/world_models/."),
                io.Combo.Input("dtype", options=list(DTYPES), default="float32",
                               tooltip="Precision of the weights; float32 is safest on a CPU, "
                               "bfloat16/float16 save memory on a GPU."),
                io.Combo.Input("device", options=["auto", "cpu"], default="auto",
                               tooltip="auto: ComfyUI's compute device (a GPU if present), sharing its memory with "
                               "ComfyUI's other models (offloaded when they need the room); cpu: always the CPU."),
            ],
            outputs=[WorldModelType.Output("world_model", display_name="world_model", tooltip="The loaded world model.")],
        )

    @classmethod
    def execute(cls, model: str, dtype: str, device: str) -> io.NodeOutput:
        # model names are checked by resolve_model, whose errors say why a folder is not usable
        check_options(cls, dtype=dtype, device=device)
        if device == "auto":
            compute, offload = comfy.model_management.get_torch_device(), comfy.model_management.unet_offload_device()
        else:
            compute = offload = torch.device("cpu")
        # read where ComfyUI keeps idle models; it moves the weights to the compute device when a node runs them
        folder = resolve_model(model)
        load = load_wan_world_model if is_wan_folder(folder) else load_world_model
        return io.NodeOutput(manage(load(folder, DTYPES[dtype], offload), compute, offload))


class Navigate(io.ComfyNode):
    """Roll the world model out along a camera path from initial frames, chunk by chunk."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CoMENavigate",
            display_name="Navigate (CoME)",
            category=SUBCATEGORY,
            description="Generates the video seen along camera_path. The FIRST N cameras of camera_path belong to "
            "the N initial frames (so the path must be longer than the initial frames); every later camera gets a "
            "generated frame, chunk_size frames at a time. With one initial frame, a 'Camera Path from Moves' whose "
            "reference is the frame's episode path starts at the right camera. The initial frames must already have "
            "the camera path's image size: a different size is an error, not resized, because the path's "
            "intrinsics describe that size (scale the frames with 'Upscale Image', or build the path at their "
            "size). Without initial_depth the model first predicts the initial frames' depth. Cancelling keeps "
            "the frames finished so far.",
            inputs=[
                WorldModelType.Input("world_model", tooltip="The world model (from Load World Model)."),
                io.Image.Input("initial_frames", tooltip="The frames to start from, one per leading camera of "
                               "camera_path, at the path's image size."),
                CameraPathType.Input("camera_path", tooltip="The cameras to visit: first one per initial frame, "
                                     "then one per frame to generate."),
                io.Int.Input("chunk_size", default=4, min=1, max=64,
                             tooltip="Frames generated together; each chunk sees the previous frames as context."),
                io.Int.Input("steps", default=DEFAULT_STEPS, min=1, max=200,
                             tooltip="Denoising steps per chunk: 1 gives the model's mean prediction (highest fidelity, "
                             "fastest); more steps give sharper, more varied samples. A Wan model needs its own 20-50."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the noise; the same seed and inputs give the same video."),
                DepthType.Input("initial_depth", optional=True,
                                tooltip="Optional metric depth of the initial frames (e.g. from Load Episode); "
                                "predicted by the model if not connected."),
            ],
            outputs=[
                io.Image.Output("frames", display_name="frames", tooltip="All frames: the initial frames, then the generated ones."),
                io.Image.Output("depth", display_name="depth", tooltip="Depth of every frame for display (inverse depth, white = near)."),
                CameraPathType.Output("covered_path", display_name="covered_path", tooltip="The cameras of the returned frames (shorter than the "
                                      "input path if cancelled)."),
                DepthType.Output("metric_depth", display_name="metric_depth", tooltip="Metric z-depth of every frame, e.g. for a patch memory."),
            ],
        )

    @classmethod
    def execute(cls, world_model: WorldModel | WanWorldModel, initial_frames: torch.Tensor, camera_path: CameraPath,
                chunk_size: int,
                steps: int, seed: int, initial_depth: DepthMaps | None = None) -> io.NodeOutput:
        require_world_model(world_model)
        if not isinstance(camera_path, CameraPath):
            raise ValueError(f"camera_path: expected a camera path, got {type(camera_path).__name__}.")
        depth = None if initial_depth is None else initial_depth.metres
        # navigate checks its inputs now and runs lazily, so the bar it ticks can be sized by the checked inputs
        if isinstance(world_model, WanWorldModel):
            rollout = wan_rollout(world_model, BASE_ONLY, initial_frames, depth, camera_path, chunk_size, steps, seed,
                                  callback=lambda _: progress.step())
            total = wan_progress_steps(BASE_ONLY, len(initial_frames), len(camera_path), chunk_size, steps)
        else:
            rollout = navigate(world_model, initial_frames, depth, camera_path, chunk=chunk_size, steps=steps,
                               seed=seed, callback=lambda _: progress.step())
            total = rollout_steps(len(initial_frames), len(camera_path), chunk_size, steps, depth is not None)
        progress = Progress(total)
        load_for_run(world_model, rollout.memory_required)
        done = until_interrupted(rollout, total, "navigation", progress)
        rgb = torch.cat([c.rgb for c in done])
        metres = torch.cat([c.depth for c in done])
        return io.NodeOutput(rgb, depth_to_image(metres), camera_path.slice(0, len(rgb)), DepthMaps(metres))

