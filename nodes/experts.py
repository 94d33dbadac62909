"""Memory experts as nodes, PoCE Combine, and Navigate with Memory (the rollout under a composition)."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ..memory.geometry.camera import CameraPath
from ..memory.geometry.depth import DepthMaps, depth_to_image
from ..memory.patch_memory import PatchMemory, check_memory
from ..memory.world.experts import (
    DEFAULT_STM_FRAMES, MAX_RETRIEVED, MAX_STM_FRAMES, BaseExpert, Composition, Expert, LongTermExpert, ShortTermExpert,
    SpatialExpert,
)
from ..memory.world.backbones.wan import WanWorldModel
from ..memory.world.poce import DEFAULT_ALPHA, MODES
from ..memory.world.rollout import DEFAULT_STEPS, rollout, rollout_steps, stream_steps
from ..memory.world.wan_rollout import wan_progress_steps, wan_rollout
from ..memory.world.world_model import WorldModel
from .managed_model import load_for_run
from .types import (
    CATEGORY, CameraPathType, CompositionType, DepthType, EpisodicLoRAType, ExpertType, PatchMemoryType, Progress,
    WorldModelType, check_options, check_widgets, require_world_model, until_interrupted,
)

SUBCATEGORY = f"{CATEGORY}/experts"
EXPERT_SLOTS = 4


def alpha_input() -> io.Input:
    """The PoCE weight of an expert."""
    return io.Float.Input("alpha", default=DEFAULT_ALPHA, min=1.0, max=10.0, step=0.05,
                          tooltip="PoCE weight α ≥ 1: how strongly the expert's memory is contrasted against its "
                          "null memory (1 = the expert as it is; the paper uses 2).")


def expert_output() -> io.Output:
    """The expert socket every expert node outputs."""
    return ExpertType.Output("expert", display_name="expert", tooltip="The expert, for PoCE Combine.")


class BaseExpertNode(io.ComfyNode):
    """The backbone with its own short memory (what Navigate runs), as an expert."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CoMEBaseExpert", display_name="Base Expert (CoME)", category=SUBCATEGORY,
            description="The world model alone: its declared context frames and the latest frame's mosaic.",
            inputs=[alpha_input()], outputs=[expert_output()])

    @classmethod
    def execute(cls, alpha: float) -> io.NodeOutput:
        check_widgets(cls, alpha=alpha)
        return io.NodeOutput(BaseExpert(alpha))


class ShortTermExpertNode(io.ComfyNode):
    """The last K frames as clean context and as the sources of the mosaic."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CoMEShortTermExpert", display_name="Short-Term Memory Expert (CoME)", category=SUBCATEGORY,
            description="Short-term memory: the last `frames` frames are the context of each chunk and are warped "
            "into its cameras as the mosaic (the latest on top).",
            inputs=[io.Int.Input("frames", default=DEFAULT_STM_FRAMES, min=1, max=MAX_STM_FRAMES,
                                 tooltip="How many recent frames the expert remembers."),
                    alpha_input()],
            outputs=[expert_output()])

    @classmethod
    def execute(cls, frames: int, alpha: float) -> io.NodeOutput:
        check_widgets(cls, frames=frames, alpha=alpha)
        return io.NodeOutput(ShortTermExpert(frames, alpha))


class SpatialExpertNode(io.ComfyNode):
    """The 3D patch memory rendered into the target cameras."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CoMESpatialExpert", display_name="Spatial Memory Expert (CoME)", category=SUBCATEGORY,
            description="Spatial memory (MosaicMem): the patch memory (built, edited or loaded) is rendered into each "
            "chunk's cameras as the mosaic; generated frames are lifted into it with the model's depth, observed "
            "patches winning over generated ones. guidance > 0 is the training-free variant for backbones never "
            "trained on mosaics: the prediction is pulled toward the rendering where it covers.",
            inputs=[PatchMemoryType.Input("memory", tooltip="The patch memory the walk should find again."),
                    alpha_input(),
                    io.Float.Input("guidance", default=0.0, min=0.0, max=1.0, step=0.05,
                                   tooltip="0: the backbone reads the memory as its mosaic. >0: training-free, "
                                   "pull the base prediction this far toward the rendered memory."),
                    io.Int.Input("max_patches", default=4096, min=16, max=MAX_RETRIEVED,
                                 tooltip="Most patches retrieved per frame (bounds the cost per frame).")],
            outputs=[expert_output()])

    @classmethod
    def execute(cls, memory: PatchMemory, alpha: float, guidance: float, max_patches: int) -> io.NodeOutput:
        check_widgets(cls, alpha=alpha, guidance=guidance, max_patches=max_patches)
        return io.NodeOutput(SpatialExpert(check_memory(memory, "memory", allow_empty=False), alpha, guidance,
                                           max_patches))


class LongTermExpertNode(io.ComfyNode):
    """The backbone with an episodic LoRA that stores the episode in its weights."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CoMELongTermExpert", display_name="Long-Term Memory Expert (CoME)", category=SUBCATEGORY,
            description="Long-term memory: the world model with an episodic LoRA (Train or Load Episodic LoRA). "
            "stream_steps > 0 trains the LoRA that many steps on the latest frames after every chunk.",
            inputs=[EpisodicLoRAType.Input("lora", tooltip="The episodic LoRA."),
                    alpha_input(),
                    io.Int.Input("stream_steps", default=0, min=0, max=1000,
                                 tooltip="LoRA steps on the latest frames after each generated chunk (0 = frozen)."),
                    io.Float.Input("stream_lr", default=1e-3, min=1e-7, max=1e-1, step=1e-5,
                                   tooltip="Learning rate of the streamed steps.")],
            outputs=[expert_output()])

    @classmethod
    def execute(cls, lora, alpha: float, stream_steps: int, stream_lr: float) -> io.NodeOutput:
        check_widgets(cls, alpha=alpha, stream_steps=stream_steps, stream_lr=stream_lr)
        return io.NodeOutput(LongTermExpert(lora, alpha, stream_steps, stream_lr))


class PoCECombine(io.ComfyNode):
    """Compose experts with PoCE (or an ablation) for Navigate with Memory."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        slots = [ExpertType.Input(f"expert_{i}", optional=True, tooltip=f"Expert {i} (optional).")
                 for i in range(2, EXPERT_SLOTS + 1)]
        return io.Schema(
            node_id="CoMEPoCECombine", display_name="PoCE Combine (CoME)", category=SUBCATEGORY,
            description="Combines the experts' predictions at every denoising step. poce (paper): Σ α·ε + (1−α)·ε_null; "
            "poce_normalized: one shared prior + Σ α(ε − ε_null); poe: Σ ε; single: the first expert alone. "
            "Chain a composition into `more` to combine any number of experts. The null memory is evaluated once "
            "per step for all experts.",
            inputs=[io.Combo.Input("mode", options=list(MODES), default="poce",
                                   tooltip="How the experts' scores are combined."),
                    ExpertType.Input("expert_1", tooltip="The first expert (single mode uses only this one)."),
                    *slots,
                    CompositionType.Input("more", optional=True,
                                          tooltip="Another composition whose experts come after these.")],
            outputs=[CompositionType.Output("composition", display_name="composition",
                                            tooltip="The composition, for Navigate with Memory.")])

    @classmethod
    def execute(cls, mode: str, expert_1: Expert, more: Composition | None = None, **slots: Expert) -> io.NodeOutput:
        check_options(cls, mode=mode)
        experts = [expert_1, *(slots[f"expert_{i}"] for i in range(2, EXPERT_SLOTS + 1) if slots.get(f"expert_{i}"))]
        if more is not None:
            if not isinstance(more, Composition):
                raise ValueError(f"more: expected a composition from PoCE Combine, got {type(more).__name__}.")
            experts += list(more.experts)
        for i, expert in enumerate(experts, start=1):
            if not isinstance(expert, (BaseExpert, ShortTermExpert, SpatialExpert, LongTermExpert)):
                raise ValueError(f"expert_{i}: expected an expert node's output, got {type(expert).__name__}.")
        return io.NodeOutput(Composition(tuple(experts), mode))


class NavigateWithMemory(io.ComfyNode):
    """Roll a composition of memory experts out along a camera path, updating the memories as it goes."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CoMENavigateWithMemory", display_name="Navigate with Memory (CoME)", category=SUBCATEGORY,
            description="Generates the video seen along camera_path under a PoCE composition of memory experts. As in "
            "Navigate, the first N cameras belong to the N initial frames. After each chunk the frames join the "
            "short-term window, are lifted into the patch memory with the model's depth, and train a streaming "
            "LoRA. Outputs the final patch memory and LoRA, so an artist can edit and continue. Cancelling keeps "
            "the finished frames and a memory consistent with them.",
            inputs=[WorldModelType.Input("world_model", tooltip="The world model (from Load World Model)."),
                    CompositionType.Input("composition", tooltip="The experts (from PoCE Combine)."),
                    io.Image.Input("initial_frames", tooltip="The frames to start from, one per leading camera."),
                    CameraPathType.Input("camera_path", tooltip="First one camera per initial frame, then the "
                                         "cameras to generate."),
                    io.Int.Input("chunk_size", default=4, min=1, max=64, tooltip="Frames generated together."),
                    io.Int.Input("steps", default=DEFAULT_STEPS, min=1, max=200, tooltip="Denoising steps per chunk (the embedded model: 1; a Wan model: 20-50)."),
                    io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                                 tooltip="Seed of the noise; the same seed and inputs give the same video."),
                    DepthType.Input("initial_depth", optional=True,
                                    tooltip="Metric depth of the initial frames; predicted if not connected."),
                    WorldModelType.Input("depth_model", optional=True,
                                         tooltip="For a Wan world_model: the MosaicDiT model (Load World Model) whose "
                                         "depth pass lifts generated frames into the patch memory; the embedded "
                                         "model if not connected.")],
            outputs=[io.Image.Output("frames", display_name="frames", tooltip="Initial and generated frames."),
                     io.Image.Output("depth", display_name="depth", tooltip="Depth of every frame for display."),
                     CameraPathType.Output("covered_path", display_name="covered_path",
                                           tooltip="The cameras of the returned frames."),
                     DepthType.Output("metric_depth", display_name="metric_depth", tooltip="Metric depth of every frame."),
                     PatchMemoryType.Output("memory", display_name="memory",
                                            tooltip="The observed memory plus every generated frame lifted into it."),
                     EpisodicLoRAType.Output("lora", display_name="lora",
                                             tooltip="The long-term expert's LoRA after streaming (none without one).")])

    @classmethod
    def execute(cls, world_model: WorldModel | WanWorldModel, composition: Composition, initial_frames: torch.Tensor,
                camera_path: CameraPath, chunk_size: int, steps: int, seed: int,
                initial_depth: DepthMaps | None = None,
                depth_model: WorldModel | None = None) -> io.NodeOutput:
        require_world_model(world_model)
        if not isinstance(camera_path, CameraPath):
            raise ValueError(f"camera_path: expected a camera path, got {type(camera_path).__name__}.")
        depth = None if initial_depth is None else initial_depth.metres
        # the rollout checks its inputs now and runs lazily, so the bar it ticks can be sized by the checked inputs
        if depth_model is not None and not isinstance(depth_model, WorldModel):
            raise ValueError("depth_model: expected a MosaicDiT world model from Load World Model (its depth pass "
                             f"predicts metric depth), got {type(depth_model).__name__}; leave it unconnected for the "
                             "embedded model.")
        if isinstance(world_model, WanWorldModel):
            run = wan_rollout(world_model, composition, initial_frames, depth, camera_path, chunk_size, steps, seed,
                              depth_model=depth_model, callback=lambda _: progress.step(),
                              lora_callback=lambda _: progress.step(), keep_memory=True)
            total = wan_progress_steps(composition, len(initial_frames), len(camera_path), chunk_size, steps)
        else:
            run = rollout(world_model, composition, initial_frames, depth, camera_path, chunk_size, steps, seed,
                          callback=lambda _: progress.step(), lora_callback=lambda _: progress.step(), keep_memory=True)
            total = (rollout_steps(len(initial_frames), len(camera_path), chunk_size, steps, depth is not None)
                     + stream_steps(world_model, composition, len(initial_frames), len(camera_path), chunk_size))
        progress = Progress(total)
        load_for_run(world_model, run.memory_required)
        done = until_interrupted(run, total, "navigation with memory", progress)
        rgb = torch.cat([c.rgb for c in done])
        metres = torch.cat([c.depth for c in done])
        state = run.state
        return io.NodeOutput(rgb, depth_to_image(metres), camera_path.slice(0, len(rgb)), DepthMaps(metres),
                             state.memory, state.lora)
