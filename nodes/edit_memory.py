"""Edit a patch memory like a scene: select patches in 3D or on screen, then delete, keep, duplicate or move them."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ..memory.geometry.camera import CameraPath, require_path
from ..memory.patch_memory.edits import delete, duplicate, keep_only, move, select_box, select_frames, select_mask, select_sphere
from ..memory.patch_memory import PatchMemory, check_memory
from .patch_memory import SUBCATEGORY, transform_from_widgets, transform_inputs
from .types import CameraPathType, PatchMemoryType, check_options, check_widgets

OPERATIONS = ["delete", "keep_only", "duplicate", "move"]
SELECTIONS = ["box", "sphere", "frames", "mask", "all"]


class EditPatchMemory(io.ComfyNode):
    """Select patches by box, sphere, source frames or a screen mask, then delete / keep only / duplicate / move them."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        coord = dict(min=-1000.0, max=1000.0, step=0.05)
        return io.Schema(
            node_id="CoMEEditPatchMemory",
            display_name="Edit Patch Memory (CoME)",
            category=SUBCATEGORY,
            description="Scene editing on the memory. The selection picks patches by their 3D centre "
            "(box: center ± size/2; sphere: center + radius), by source frame range, or by a mask drawn on "
            "one camera of a path. duplicate/move apply the transform (rotation about the selection's centroid, "
            "then translation). An empty selection leaves the memory unchanged with a warning.",
            inputs=[
                PatchMemoryType.Input("memory", tooltip="The memory to edit (it is not modified; a new one is returned)."),
                io.Combo.Input("operation", options=OPERATIONS, default="delete",
                               tooltip="delete: remove the selection; keep_only: remove everything else; "
                               "duplicate: add a transformed copy; move: transform the selection in place."),
                io.Combo.Input("selection", options=SELECTIONS, default="box",
                               tooltip="How patches are chosen: box, sphere, source frames, screen mask, or all."),
                io.Float.Input("center_x", default=0.0, tooltip="Box/sphere centre x (metres).", **coord),
                io.Float.Input("center_y", default=0.0, tooltip="Box/sphere centre y (metres).", **coord),
                io.Float.Input("center_z", default=0.0, tooltip="Box/sphere centre z (metres, up).", **coord),
                io.Float.Input("size_x", default=1.0, min=0.0, max=1000.0, step=0.05, tooltip="Box extent along x (metres)."),
                io.Float.Input("size_y", default=1.0, min=0.0, max=1000.0, step=0.05, tooltip="Box extent along y (metres)."),
                io.Float.Input("size_z", default=10.0, min=0.0, max=1000.0, step=0.05, tooltip="Box extent along z (metres)."),
                io.Float.Input("radius", default=1.0, min=0.0, max=1000.0, step=0.05, tooltip="Sphere radius (metres)."),
                io.Int.Input("first_frame", default=0, min=0, max=100000,
                             tooltip="frames selection: first source frame id (inclusive)."),
                io.Int.Input("last_frame", default=0, min=0, max=100000,
                             tooltip="frames selection: last source frame id (inclusive)."),
                *transform_inputs(),
                io.Mask.Input("mask", optional=True,
                              tooltip="mask selection: white marks the patches to select, seen from mask_camera."),
                CameraPathType.Input("mask_camera", optional=True,
                                     tooltip="mask selection: the camera path the mask was drawn on."),
                io.Int.Input("mask_frame", default=0, min=0, max=100000, optional=True,
                             tooltip="mask selection: which camera of mask_camera (and which mask of a batch) to use."),
            ],
            outputs=[PatchMemoryType.Output("edited_memory", display_name="edited_memory", tooltip="The edited memory.")],
        )

    @classmethod
    def execute(cls, memory: PatchMemory, operation: str, selection: str, center_x: float, center_y: float,
                center_z: float, size_x: float, size_y: float, size_z: float, radius: float, first_frame: int,
                last_frame: int, mask: torch.Tensor | None = None, mask_camera: CameraPath | None = None,
                mask_frame: int = 0, **transform: float) -> io.NodeOutput:
        check_options(cls, operation=operation, selection=selection)
        check_widgets(cls, center_x=center_x, center_y=center_y, center_z=center_z, size_x=size_x, size_y=size_y,
                      size_z=size_z, radius=radius, first_frame=first_frame, last_frame=last_frame,
                      mask_frame=mask_frame, **transform)
        check_memory(memory, "memory")
        center = torch.tensor([center_x, center_y, center_z])
        half = torch.tensor([size_x, size_y, size_z]) / 2
        if selection == "box":
            sel = select_box(memory, center - half, center + half)
        elif selection == "sphere":
            sel = select_sphere(memory, center, radius)
        elif selection == "frames":
            if last_frame < first_frame:
                raise ValueError(f"last_frame: {last_frame} is before first_frame ({first_frame}); "
                                 "give last_frame >= first_frame (both inclusive).")
            sel = select_frames(memory, int(first_frame), int(last_frame) + 1)
        elif selection == "mask":
            sel = select_mask(memory, *mask_view(mask, mask_camera, mask_frame))
        else:
            sel = torch.ones(len(memory), dtype=torch.bool)
        if operation == "delete":
            return io.NodeOutput(delete(memory, sel))
        if operation == "keep_only":
            return io.NodeOutput(keep_only(memory, sel))
        pivot = memory.centres[sel].mean(0) if bool(sel.any()) else center
        rigid = transform_from_widgets(transform, pivot)
        edit = duplicate if operation == "duplicate" else move
        return io.NodeOutput(edit(memory, sel, rigid))


def mask_view(mask: torch.Tensor | None, camera: CameraPath | None, frame: int) -> tuple:
    """(mask [H,W], K, c2w) for a screen-space selection, with errors naming the missing or malformed input.

    ``mask`` is one mask [H,W] or [1,H,W], or one per camera of ``camera`` [T,H,W]; a mask of another
    resolution with the camera's aspect ratio (e.g. drawn on an upscaled preview) is resized to it.
    """
    missing = [name for name, value in (("mask", mask), ("mask_camera", camera)) if value is None]
    if missing:
        raise ValueError(f"{' and '.join(missing)}: selection 'mask' needs a MASK (white = the patches to select) "
                         "and mask_camera, the camera path it was drawn on; connect them or choose another selection.")
    require_path(camera, "mask_camera")
    if not 0 <= frame < len(camera):
        raise ValueError(f"mask_frame: {frame} is outside mask_camera's {len(camera)} cameras; pick 0..{len(camera) - 1}.")
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3) or 0 in mask.shape:
        got = list(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise ValueError(f"mask: expected a MASK [H,W] or [B,H,W], got {got}.")
    planes = mask if mask.ndim == 3 else mask[None]
    if len(planes) not in (1, len(camera)):
        raise ValueError(f"mask: a batch of {len(planes)} masks for mask_camera's {len(camera)} cameras; "
                         "give one mask, or one per camera.")
    height, width = planes.shape[1:]
    if height * camera.width != width * camera.height:
        raise ValueError(f"mask: {height}x{width} has another aspect ratio than mask_camera's "
                         f"{camera.height}x{camera.width} frames; draw the mask on a frame of that camera path.")
    plane = planes[min(frame, len(planes) - 1)].float()
    lo, hi = plane.aminmax()
    if not 0 <= float(lo) <= float(hi) <= 1:  # NaN fails every comparison
        raise ValueError(f"mask: values must lie in 0..1, got {float(lo):.3g}..{float(hi):.3g}; "
                         "connect a MASK output (not an image with NaN or unscaled values).")
    if (height, width) != (camera.height, camera.width):
        plane = torch.nn.functional.interpolate(plane[None, None], size=(camera.height, camera.width),
                                                mode="nearest")[0, 0]
    return plane > 0.5, camera.K, camera.c2w[int(frame)]
