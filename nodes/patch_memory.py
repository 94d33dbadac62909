"""Build a 3D patch memory from frames, render it along a camera path, merge two memories."""
from __future__ import annotations


import torch
from comfy_api.latest import io

from ..memory.geometry.camera import CameraPath, require_path
from ..memory.geometry.depth import DepthMaps, check_metric_depth, depth_to_image
from ..memory.patch_memory.edits import merge, rigid_transform
from ..memory.limits import check_frames
from ..memory.patch_memory import (
    PatchMemory, check_memory, check_patch_budget, insert_frames, iter_render, stack_renderings,
)
from ..memory.patch_memory.retrieval import check_render_path
from .types import CATEGORY, CameraPathType, DepthType, PatchMemoryType, check_widgets, frame_range, until_interrupted

SUBCATEGORY = f"{CATEGORY}/memory"


def transform_inputs(prefix: str = "") -> list[io.Input]:
    """Widgets of a rigid transform: translation (metres), rotation (degrees, about the pivot)."""
    axes = "xyz"
    return [
        *(io.Float.Input(f"{prefix}translate_{a}", default=0.0, min=-1000.0, max=1000.0, step=0.05,
                         tooltip=f"Translation along world {a} in metres.") for a in axes),
        *(io.Float.Input(f"{prefix}rotate_{a}_deg", default=0.0, min=-360.0, max=360.0, step=1.0,
                         tooltip=f"Rotation about world {a} in degrees, around the pivot.") for a in axes),
    ]


class BuildPatchMemory(io.ComfyNode):
    """Lift frames with depth and cameras into a 3D patch memory (MosaicMem's spatial memory)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CoMEBuildPatchMemory",
            display_name="Build Patch Memory (CoME)",
            category=SUBCATEGORY,
            description="Cuts frames into patches, lifts them to 3D with metric depth and the cameras, "
            "and stores them; patches seen again on a revisit are deduplicated by voxel.",
            inputs=[
                io.Image.Input("frames", tooltip="Frames [T,H,W,3]; H and W must be multiples of patch_size."),
                DepthType.Input("metric_depth", tooltip="Metric z-depth per frame (e.g. from Load Episode)."),
                CameraPathType.Input("camera_path", tooltip="One camera per frame."),
                io.Int.Input("patch_size", default=8, min=2, max=64, step=2,
                             tooltip="Patch edge in pixels (the backbone's token footprint)."),
                io.Float.Input("voxel_size", default=0.05, min=0.005, max=10.0, step=0.005,
                               tooltip="Finest dedupe voxel edge in metres: a revisited surface keeps one patch per "
                               "voxel and viewing direction (far patches use coarser voxels)."),
                io.Int.Input("first_frame", default=0, min=0, max=100000, tooltip="First frame to insert."),
                io.Int.Input("last_frame", default=-1, min=-1, max=100000,
                             tooltip="Last frame to insert (inclusive); -1 = the last frame."),
                io.Int.Input("frame_stride", default=1, min=1, max=1000, tooltip="Insert every n-th frame."),
                PatchMemoryType.Input("base_memory", optional=True,
                                      tooltip="Optional memory to add the frames to (a new one is made if not connected)."),
            ],
            outputs=[PatchMemoryType.Output("memory", display_name="memory", tooltip="The patch memory.")],
        )

    @classmethod
    def execute(cls, frames: torch.Tensor, metric_depth: DepthMaps, camera_path: CameraPath, patch_size: int,
                voxel_size: float, first_frame: int, last_frame: int, frame_stride: int,
                base_memory: PatchMemory | None = None) -> io.NodeOutput:
        check_widgets(cls, patch_size=patch_size, voxel_size=voxel_size, first_frame=first_frame,
                      last_frame=last_frame, frame_stride=frame_stride)
        first_frame, last_frame, frame_stride = int(first_frame), int(last_frame), int(frame_stride)
        frames = check_frames(frames, "frames")
        depth = check_metric_depth(metric_depth, "metric_depth")
        require_path(camera_path, "camera_path")
        total = len(frames)
        for name, count, what in (("metric_depth", len(depth), "depth maps"), ("camera_path", len(camera_path), "cameras")):
            if count != total:
                raise ValueError(f"{name}: counts differ: {count} {what} for {total} frames; connect outputs of the same episode.")
        if tuple(depth.shape[1:]) != tuple(frames.shape[1:3]):
            raise ValueError(f"metric_depth: depth maps are {depth.shape[1]}x{depth.shape[2]} but the frames are "
                             f"{frames.shape[1]}x{frames.shape[2]}; resize the depth to the frame size.")
        if (camera_path.height, camera_path.width) != tuple(frames.shape[1:3]):
            raise ValueError(f"camera_path: its cameras are {camera_path.height}x{camera_path.width} pixels but the "
                             f"frames are {frames.shape[1]}x{frames.shape[2]}; use the path recorded with the frames.")
        frames_used = frame_range(total, first_frame, last_frame)
        idx = torch.arange(frames_used.start, frames_used.stop, frame_stride)
        if base_memory is None:
            base = PatchMemory.empty(patch_size=int(patch_size))
        else:
            base = check_memory(base_memory, "base_memory")
        names = dict(memory="base_memory", rgb="frames", depth="metric_depth", c2w="camera_path", K="camera_path")
        built = insert_frames(base, frames[idx], depth[idx], camera_path.c2w[idx], camera_path.K,
                              frame_ids=idx, voxel_size=voxel_size, names=names)
        return io.NodeOutput(built)


class RenderPatchMemory(io.ComfyNode):
    """Render the memory along a camera path: image, coverage mask and depth per camera."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CoMERenderPatchMemory",
            display_name="Render Patch Memory (CoME)",
            category=SUBCATEGORY,
            description="Retrieves the patches each camera sees (frustum + distance culling, coverage-greedy) "
            "and splats them with a z-buffer: the 'mosaic' a world model is conditioned on.",
            inputs=[
                PatchMemoryType.Input("memory", tooltip="The patch memory to render."),
                CameraPathType.Input("camera_path", tooltip="Cameras to render from."),
                io.Int.Input("max_patches", default=4096, min=16, max=1000000,
                             tooltip="Most patches retrieved per frame (bounds the cost however large the memory)."),
                io.Float.Input("max_distance", default=20.0, min=0.1, max=10000.0, step=0.5,
                               tooltip="Patches farther than this from the camera (metres) are skipped."),
            ],
            outputs=[
                io.Image.Output("images", display_name="images", tooltip="Rendered frames (black where the memory has nothing)."),
                io.Mask.Output("mask", display_name="mask", tooltip="Coverage: 1 where the memory rendered a pixel."),
                io.Image.Output("depth", display_name="depth", tooltip="Rendered depth for display (inverse depth, white = near)."),
                DepthType.Output("metric_depth", display_name="metric_depth", tooltip="Rendered metric z-depth (0 = not covered)."),
            ],
        )

    @classmethod
    def execute(cls, memory: PatchMemory, camera_path: CameraPath, max_patches: int,
                max_distance: float) -> io.NodeOutput:
        check_widgets(cls, max_patches=max_patches, max_distance=max_distance)
        check_memory(memory, "memory", allow_empty=False)
        check_render_path(camera_path, "camera_path")
        frames = until_interrupted(iter_render(memory, camera_path, max_patches=max_patches, max_distance=max_distance),
                                   len(camera_path), "rendering")
        rgb, mask, depth = stack_renderings(frames)
        return io.NodeOutput(rgb, mask, depth_to_image(depth), DepthMaps(depth))


class MergePatchMemories(io.ComfyNode):
    """Merge memory B into memory A, placing B with a rigid transform."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CoMEMergePatchMemories",
            display_name="Merge Patch Memories (CoME)",
            category=SUBCATEGORY,
            description="Adds every patch of memory_b to memory_a after moving B by the given transform "
            "(rotation about B's centroid, then translation). Groups of B stay separate.",
            inputs=[
                PatchMemoryType.Input("memory_a", tooltip="The memory that keeps its place."),
                PatchMemoryType.Input("memory_b", tooltip="The memory placed into A by the transform."),
                *transform_inputs(),
            ],
            outputs=[PatchMemoryType.Output("memory", display_name="memory", tooltip="The merged memory.")],
        )

    @classmethod
    def execute(cls, memory_a: PatchMemory, memory_b: PatchMemory, **transform: float) -> io.NodeOutput:
        check_widgets(cls, **transform)
        check_memory(memory_a, "memory_a")
        check_memory(memory_b, "memory_b")
        if len(memory_b) and memory_b.patch_size != memory_a.patch_size:
            raise ValueError(f"memory_b: its patch_size {memory_b.patch_size} differs from memory_a's "
                             f"{memory_a.patch_size}; build both memories with the same patch_size.")
        check_patch_budget(len(memory_a) + len(memory_b), "memory_b", "delete patches from the memories first")
        pivot = memory_b.centres.mean(0) if len(memory_b) else torch.zeros(3)
        return io.NodeOutput(merge(memory_a, memory_b, transform_from_widgets(transform, pivot)))


def transform_from_widgets(values: dict[str, float], pivot: torch.Tensor, prefix: str = "") -> torch.Tensor:
    """The [4,4] rigid transform described by :func:`transform_inputs` widgets (checked by the caller), rotating about ``pivot``."""
    translate = [values[f"{prefix}translate_{a}"] for a in "xyz"]
    rotate = [values[f"{prefix}rotate_{a}_deg"] for a in "xyz"]
    return rigid_transform(translate, rotate, pivot)
