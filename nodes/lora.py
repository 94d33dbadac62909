"""Train, save and load the long-term expert's episodic LoRA."""
from __future__ import annotations

import logging
import os
from pathlib import Path

import comfy.model_management
import folder_paths
import numpy as np
import torch
from comfy_api.latest import io
from PIL import Image, ImageDraw

from ..memory.files import confined_path
from ..memory.geometry.camera import CameraPath
from ..memory.geometry.depth import DepthMaps
from ..memory.world.lora import (
    DEFAULT_LR, DEFAULT_RANK, DEFAULT_STEPS, MAX_RANK, EpisodicLoRA, load_lora, save_lora, train_episodic_lora,
)
from ..memory.world.world_model import WorldModel
from .experts import SUBCATEGORY
from .types import (
    CameraPathType, DepthType, EpisodicLoRAType, Progress, WorldModelType, check_widgets, output_file,
)

LORA_FOLDER = "episodic_loras"
CURVE_SIZE = (512, 256)

folder_paths.add_model_folder_path(LORA_FOLDER, os.path.join(folder_paths.models_dir, LORA_FOLDER))


def lora_root() -> str:
    """The first registered episodic_loras folder (where saves go)."""
    return folder_paths.get_folder_paths(LORA_FOLDER)[0]


def lora_choices() -> list[str]:
    """Every .safetensors under the registered episodic_loras folders."""
    found = set()
    for root in map(Path, folder_paths.get_folder_paths(LORA_FOLDER)):
        if root.is_dir():
            found |= {p.relative_to(root).as_posix() for p in root.rglob("*.safetensors")}
    return sorted(found)


def loss_curve(losses: list[float]) -> torch.Tensor:
    """An IMAGE [1,H,W,3] of the training loss per step (a line, scaled to its own range)."""
    width, height = CURVE_SIZE
    image = Image.new("RGB", CURVE_SIZE, (20, 20, 26))
    draw = ImageDraw.Draw(image)
    if losses:
        low, high = min(losses), max(losses)
        span = high - low or 1.0
        points = [(16 + i * (width - 32) / max(1, len(losses) - 1), height - 24 - (v - low) / span * (height - 48))
                  for i, v in enumerate(losses)]
        draw.line(points if len(points) > 1 else points * 2, fill=(65, 160, 255), width=2)
        draw.text((16, 6), f"loss {losses[0]:.4f} -> {losses[-1]:.4f} over {len(losses)} steps", fill=(230, 230, 230))
    return torch.from_numpy(np.asarray(image)).float()[None] / 255


class TrainEpisodicLoRA(io.ComfyNode):
    """Store an episode in the weights of a LoRA on the world model (the long-term expert's memory)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CoMETrainEpisodicLoRA", display_name="Train Episodic LoRA (CoME)", category=SUBCATEGORY,
            description="Trains a peft LoRA on the world model's attention and MLP projections with its own training "
            "loss on random windows of the frames (AdamW). The model itself is not changed. Cancelling keeps the "
            "steps finished.",
            inputs=[WorldModelType.Input("world_model", tooltip="The world model the LoRA adapts."),
                    io.Image.Input("frames", tooltip="The episode's frames, one per camera."),
                    DepthType.Input("metric_depth", tooltip="Metric depth of the frames."),
                    CameraPathType.Input("camera_path", tooltip="One camera per frame."),
                    io.Int.Input("rank", default=DEFAULT_RANK, min=1, max=MAX_RANK, tooltip="LoRA rank."),
                    io.Int.Input("steps", default=DEFAULT_STEPS, min=1, max=100000, tooltip="AdamW steps."),
                    io.Float.Input("lr", default=DEFAULT_LR, min=1e-6, max=0.1, step=1e-4, tooltip="Learning rate."),
                    io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, tooltip="Seed of the windows and noise."),
                    EpisodicLoRAType.Input("continue_from", optional=True,
                                           tooltip="A LoRA to continue training (its rank wins).")],
            outputs=[EpisodicLoRAType.Output("lora", display_name="lora", tooltip="The trained LoRA."),
                     io.Image.Output("loss_curve", display_name="loss_curve", tooltip="The loss per step.")])

    @classmethod
    def execute(cls, world_model: WorldModel, frames: torch.Tensor, metric_depth: DepthMaps, camera_path: CameraPath,
                rank: int, steps: int, lr: float, seed: int, continue_from: EpisodicLoRA | None = None) -> io.NodeOutput:
        check_widgets(cls, rank=rank, steps=steps, lr=lr, seed=seed)
        if not isinstance(world_model, WorldModel):
            raise ValueError(f"world_model: expected the output of Load World Model, got {type(world_model).__name__}.")
        if not isinstance(camera_path, CameraPath):
            raise ValueError(f"camera_path: expected a camera path, got {type(camera_path).__name__}.")
        if not isinstance(frames, torch.Tensor) or len(frames) != len(camera_path) or len(metric_depth) != len(camera_path):
            raise ValueError(f"frames/metric_depth/camera_path: give one frame, one depth map and one camera each "
                             f"(got {len(frames)}, {len(metric_depth)}, {len(camera_path)}).")
        progress = Progress(int(steps))
        trained, losses = train_episodic_lora(world_model, frames, metric_depth.metres, camera_path.c2w, camera_path.K,
                                              int(rank), int(steps), lr, int(seed), lambda _: progress.step(),
                                              continue_from)
        if comfy.model_management.processing_interrupted():
            # the cancel stopped training after a finished step: that LoRA is a result worth keeping
            comfy.model_management.interrupt_current_processing(False)
            logging.warning("CoME: LoRA training interrupted after %d of %d steps; returning it.", len(losses), steps)
        return io.NodeOutput(trained, loss_curve(losses))


class SaveEpisodicLoRA(io.ComfyNode):
    """Save an episodic LoRA under ComfyUI's models/episodic_loras/ folder."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CoMESaveEpisodicLoRA", display_name="Save Episodic LoRA (CoME)", category=SUBCATEGORY,
            description="Writes the LoRA atomically as a versioned .safetensors file (come-episodic-lora/1) under "
            "models/episodic_loras/; a counter is appended, no file is ever replaced.",
            is_output_node=True,
            inputs=[EpisodicLoRAType.Input("lora", tooltip="The LoRA to save."),
                    io.String.Input("filename_prefix", default="lora",
                                    tooltip="Name inside models/episodic_loras/; a counter is appended.")],
            outputs=[io.String.Output("path", display_name="path", tooltip="The saved file, relative to that folder.")])

    @classmethod
    def execute(cls, lora: EpisodicLoRA, filename_prefix: str) -> io.NodeOutput:
        if not isinstance(lora, EpisodicLoRA):
            raise ValueError(f"lora: expected an episodic LoRA, got {type(lora).__name__}.")
        path, relative = output_file(filename_prefix, "safetensors", lora_root())
        save_lora(lora, path)
        return io.NodeOutput(relative, ui={"text": [f"saved a rank-{lora.rank} LoRA ({lora.steps} steps) to {relative}"]})


class LoadEpisodicLoRA(io.ComfyNode):
    """Load an episodic LoRA from ComfyUI's models/episodic_loras/ folder."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CoMELoadEpisodicLoRA", display_name="Load Episodic LoRA (CoME)", category=SUBCATEGORY,
            description="Loads a LoRA written by Save Episodic LoRA from models/episodic_loras/.",
            inputs=[io.Combo.Input("lora_file", options=lora_choices(), tooltip="A file in models/episodic_loras/.")],
            outputs=[EpisodicLoRAType.Output("lora", display_name="lora", tooltip="The loaded LoRA.")])

    @classmethod
    def execute(cls, lora_file: str) -> io.NodeOutput:
        for root in folder_paths.get_folder_paths(LORA_FOLDER):
            path = confined_path(root, lora_file, "lora_file")
            if path.is_file():
                return io.NodeOutput(load_lora(path))
        raise ValueError(f"lora_file: no file '{lora_file}' under {', '.join(folder_paths.get_folder_paths(LORA_FOLDER))}; "
                         "save one with Save Episodic LoRA or copy it there, then refresh.")
