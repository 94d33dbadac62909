"""Train, save, load and export (in ComfyUI's LoRA format) the long-term expert's episodic LoRA."""
from __future__ import annotations

import os
from pathlib import Path

import folder_paths
import numpy as np
import torch
from comfy_api.latest import io
from PIL import Image, ImageDraw

from ..memory.files import check_prefix, confined_path
from ..memory.geometry.camera import CameraPath, require_path
from ..memory.geometry.depth import DepthMaps, check_metric_depth
from ..memory.limits import MAX_LORA_RANK, MAX_LORA_STEPS, MAX_SEED, check_frames
from ..memory.world.lora import (
    DEFAULT_LR, DEFAULT_RANK, DEFAULT_STEPS, EpisodicLoRA, check_lora, check_weights, load_lora, lora_training,
    save_lora,
)
from ..memory.world.backbones.wan import WanWorldModel
from ..memory.world.lora_format import peft_lora, save_comfy_lora
from ..memory.world.wan_rollout import check_wan_lora, new_wan_lora, wan_lora_training
from ..memory.world.world_model import WorldModel
from .experts import SUBCATEGORY
from .types import (
    CameraPathType, DepthType, EpisodicLoRAType, WorldModelType, check_options, check_widgets, frame_range, output_file,
    require_world_model, until_interrupted,
)

LORA_FOLDER = "episodic_loras"
CURVE_SIZE = (512, 256)
SMOOTHING = 0.9

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


def require_lora(lora: object) -> EpisodicLoRA:
    """``lora`` if it is an episodic LoRA, else a ValueError naming the input ``lora``."""
    if not isinstance(lora, EpisodicLoRA):
        raise ValueError(f"lora: expected an episodic LoRA, got {type(lora).__name__}.")
    return lora


def loss_curve(losses: list[float]) -> torch.Tensor:
    """An IMAGE [1,H,W,3] of the loss per step (faint) and its running mean (bright), scaled to their range."""
    width, height = CURVE_SIZE
    image = Image.new("RGB", CURVE_SIZE, (20, 20, 26))
    draw = ImageDraw.Draw(image)
    if losses:
        # every step draws another window and noise level, so single losses jump; the running mean shows the trend
        mean, smooth = losses[0], []
        for value in losses:
            mean = SMOOTHING * mean + (1 - SMOOTHING) * value
            smooth.append(mean)
        low, high = min(losses), max(losses)
        span = high - low or 1.0

        def line(values: list[float], colour: tuple[int, int, int]) -> None:
            points = [(16 + i * (width - 32) / max(1, len(values) - 1), height - 24 - (v - low) / span * (height - 48))
                      for i, v in enumerate(values)]
            draw.line(points if len(points) > 1 else points * 2, fill=colour, width=2)

        line(losses, (50, 70, 100))
        line(smooth, (65, 160, 255))
        draw.text((16, 6), f"loss (running mean) {smooth[0]:.4f} -> {smooth[-1]:.4f} over {len(losses)} steps",
                  fill=(230, 230, 230))
    return torch.from_numpy(np.array(image)).float()[None] / 255


class TrainEpisodicLoRA(io.ComfyNode):
    """Store an episode in the weights of a LoRA on the world model (the long-term expert's memory)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CoMETrainEpisodicLoRA", display_name="Train Episodic LoRA (CoME)", category=SUBCATEGORY,
            description="Trains a peft LoRA on the world model's attention and MLP projections with its own training "
            "loss on random windows of frames first_frame..last_frame (AdamW; at least the model's context + 4 frames). "
            "The model itself is not changed. The LoRA feeds the Long-Term Memory Expert; save it to reuse it. "
            "Cancelling keeps the steps finished.",
            inputs=[WorldModelType.Input("world_model", tooltip="The world model the LoRA adapts."),
                    io.Image.Input("frames", tooltip="The episode's frames, one per camera."),
                    DepthType.Input("metric_depth", tooltip="Metric depth of the frames."),
                    CameraPathType.Input("camera_path", tooltip="One camera per frame."),
                    io.Int.Input("rank", default=DEFAULT_RANK, min=1, max=MAX_LORA_RANK,
                                 tooltip="LoRA rank: how much the adapter can store (more = slower, larger file). "
                                 "Ignored when continuing a LoRA (its rank is kept)."),
                    io.Int.Input("steps", default=DEFAULT_STEPS, min=1, max=MAX_LORA_STEPS,
                                 tooltip="AdamW steps, one random window of the frames each (about 0.15 s per step "
                                 "for the embedded model on a CPU)."),
                    io.Float.Input("lr", default=DEFAULT_LR, min=1e-6, max=0.1, step=1e-4,
                                   tooltip="Learning rate (the paper uses 1e-4 with 500 steps; 1e-3 stores more in "
                                   "100 steps)."),
                    io.Int.Input("seed", default=0, min=0, max=MAX_SEED, control_after_generate=True,
                                 tooltip="Seed of the windows, the noise and the adapter's initialisation; the same "
                                 "seed and inputs give the same LoRA."),
                    io.Int.Input("first_frame", default=0, min=0, max=100000, tooltip="First frame to train on."),
                    io.Int.Input("last_frame", default=-1, min=-1, max=100000,
                                 tooltip="Last frame to train on (-1 = the last one), e.g. the episode's last context "
                                 "frame."),
                    EpisodicLoRAType.Input("continue_from", optional=True,
                                           tooltip="A LoRA to continue training (its rank wins).")],
            outputs=[EpisodicLoRAType.Output("lora", display_name="lora", tooltip="The trained LoRA."),
                     io.Image.Output("loss_curve", display_name="loss_curve", tooltip="The loss per step.")])

    @classmethod
    def execute(cls, world_model: WorldModel | WanWorldModel, frames: torch.Tensor, metric_depth: DepthMaps,
                camera_path: CameraPath, rank: int, steps: int, lr: float, seed: int, first_frame: int = 0, last_frame: int = -1,
                continue_from: EpisodicLoRA | None = None) -> io.NodeOutput:
        check_widgets(cls, rank=rank, steps=steps, lr=lr, seed=seed, first_frame=first_frame, last_frame=last_frame)
        require_world_model(world_model)
        frames = check_frames(frames, "frames")
        depth = check_metric_depth(metric_depth, "metric_depth")
        require_path(camera_path, "camera_path")
        for name, count, what in (("metric_depth", len(depth), "depth maps"), ("camera_path", len(camera_path), "cameras")):
            if count != len(frames):
                raise ValueError(f"{name}: counts differ: {count} {what} for {len(frames)} frames; connect outputs of "
                                 "the same episode.")
        if (camera_path.height, camera_path.width) != tuple(frames.shape[1:3]):
            raise ValueError(f"camera_path: its cameras are {camera_path.height}x{camera_path.width} pixels but the "
                             f"frames are {frames.shape[1]}x{frames.shape[2]}; use the path recorded with the frames.")
        chosen = frame_range(len(frames), int(first_frame), int(last_frame))
        # checked now; the training runs as it is iterated, one progress step (and interrupt check) per LoRA step.
        # The backbone is not loaded onto the compute device: training runs on a float32 copy of its weights
        # (memory/world/lora.py), read wherever ComfyUI keeps them
        episode = (frames[chosen], depth[chosen], camera_path.c2w[chosen], camera_path.K)
        if isinstance(world_model, WanWorldModel):
            start = (new_wan_lora(world_model, int(rank), int(seed)) if continue_from is None
                     else check_wan_lora(continue_from, world_model, "continue_from"))
            run = wan_lora_training(world_model, *episode, start, int(steps), float(lr), int(seed))
        else:
            if continue_from is not None:
                check_lora(continue_from, world_model, "continue_from")
            run = lora_training(world_model, *episode, int(rank), int(steps), float(lr), int(seed), continue_from)
        until_interrupted(run, int(steps), "LoRA training")
        # a cancel keeps the steps finished: run.lora and run.losses both stand after the last of them
        return io.NodeOutput(run.lora, loss_curve(run.losses))


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
        lora = require_lora(lora)
        check_weights(lora.weights, lora.rank, lora.targets, "lora")
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
        check_options(cls, lora_file=lora_file)
        for root in folder_paths.get_folder_paths(LORA_FOLDER):
            path = confined_path(root, lora_file, "lora_file")
            if path.is_file():
                return io.NodeOutput(load_lora(path))
        raise ValueError(f"lora_file: no file '{lora_file}' under {', '.join(folder_paths.get_folder_paths(LORA_FOLDER))}; "
                         "save one with Save Episodic LoRA or copy it there, then refresh.")


class ExportEpisodicLoRA(io.ComfyNode):
    """Export an episodic LoRA on a Wan transformer as a ComfyUI LoRA under models/loras/ (core LoraLoaderModelOnly applies it)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CoMEExportEpisodicLoRA", display_name="Export Episodic LoRA (ComfyUI format)", category=SUBCATEGORY,
            description="Writes a LoRA trained on a diffusers Wan 2.1 / 2.2 transformer in ComfyUI's own LoRA keys "
            "(diffusion_model.<module>.lora_up/lora_down/alpha of the native Wan model) under models/loras/, so core "
            "Load LoRA (LoraLoaderModelOnly) applies it to the matching native Wan checkpoint. The embedded model has "
            "no ComfyUI counterpart: save its LoRA with Save Episodic LoRA. Core Train LoRA can continue from the file "
            "(existing_lora). No file is ever replaced.",
            is_output_node=True,
            inputs=[EpisodicLoRAType.Input("lora", tooltip="A LoRA trained on a Wan transformer."),
                    io.String.Input("filename_prefix", default="come_episodic_lora",
                                    tooltip="Name inside models/loras/; the LoRA's steps and a counter are appended "
                                    "(<prefix>_<steps>_steps_00001_, as core Save LoRA Weights names them).")],
            outputs=[io.String.Output("path", display_name="path", tooltip="The written file, relative to models/loras/.")])

    @classmethod
    def execute(cls, lora: EpisodicLoRA, filename_prefix: str) -> io.NodeOutput:
        lora = require_lora(lora)
        value = peft_lora(lora.weights, lora.rank, lora.alpha, name="lora")
        root = folder_paths.get_folder_paths("loras")[0]
        # named as core SaveLoRANode names its files: core TrainLoraNode reads the steps back from '_<steps>_steps_'
        path, relative = output_file(f"{check_prefix(filename_prefix, root)}_{lora.steps}_steps", "safetensors", root)
        save_comfy_lora(value, path)
        return io.NodeOutput(relative, ui={"text": [f"exported a rank-{lora.rank} LoRA ({len(value.targets)} modules) "
                                                    f"to models/loras/{relative}"]})
