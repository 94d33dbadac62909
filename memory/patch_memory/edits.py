"""Scene editing on a patch memory: selections (bool [N] masks, combined with & | ~) and edits.

Edits never modify their input (ComfyUI caches node outputs); each returns a new memory. An edit
whose selection is empty warns and returns the input unchanged, so a mis-set box does not silently
wipe or keep nothing. Rigid transforms are [4,4] world matrices; a moved patch keeps its pixels and
depth and gets the transform left-multiplied onto its source pose.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import kornia
import torch

from ..geometry.camera import validate_cameras
from ..geometry.projection import project
from .patches import PatchMemory, check_patch_budget
from .retrieval import render

VISIBILITY_TOL = 0.05


def select_box(memory: PatchMemory, lo: Sequence[float] | torch.Tensor, hi: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Patches whose centre lies in the axis-aligned box [lo, hi] (metres, world xyz)."""
    lo, hi = _vector(lo, "lo"), _vector(hi, "hi")
    if (lo > hi).any():
        raise ValueError(f"lo/hi: every lo must be <= hi, got lo={lo.tolist()} hi={hi.tolist()}; swap them.")
    return ((memory.centres >= lo) & (memory.centres <= hi)).all(-1)


def select_sphere(memory: PatchMemory, center: Sequence[float] | torch.Tensor, radius: float) -> torch.Tensor:
    """Patches whose centre lies within ``radius`` metres of ``center``."""
    if not 0 <= radius < math.inf:
        raise ValueError(f"radius: must be a finite number of metres >= 0, got {radius}.")
    return (memory.centres - _vector(center, "center")).norm(dim=-1) <= radius


def select_frames(memory: PatchMemory, start: int, stop: int) -> torch.Tensor:
    """Patches cut from source frame ids in [start, stop)."""
    if stop < start:
        raise ValueError(f"start/stop: stop ({stop}) is before start ({start}); give start <= stop.")
    return (memory.frame_ids >= start) & (memory.frame_ids < stop)


def select_group(memory: PatchMemory, group: int) -> torch.Tensor:
    """Patches of edit group ``group`` (0 = inserted frames; duplicates and merged memories get new groups)."""
    return memory.groups == group


def select_mask(
    memory: PatchMemory, mask: torch.Tensor, K: torch.Tensor, c2w: torch.Tensor, visible_only: bool = True,
) -> torch.Tensor:
    """Patches whose centre projects inside the screen ``mask`` [H,W] of camera K [3,3], c2w [4,4], in front of it.

    With ``visible_only`` a patch must also be on the visible surface (not hidden behind nearer
    patches in the memory's own rendering from that camera); otherwise the selection goes through.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask: expected one mask [H,W], got shape {list(mask.shape)}.")
    if mask.is_floating_point() and not bool(torch.isfinite(mask).all()):
        raise ValueError("mask: contains NaN or inf; give a mask of 0/1 (or bool) values.")
    if tuple(c2w.shape) != (4, 4):
        raise ValueError(f"c2w: expected one camera pose [4,4], got shape {list(c2w.shape)}.")
    validate_cameras(c2w[None].float(), K.float(), "mask camera")
    if len(memory) == 0:
        return torch.zeros(0, dtype=torch.bool)
    h, w = mask.shape
    uv, z = project(memory.centres, K.float(), c2w.float())
    col, row = uv[:, 0].floor().long(), uv[:, 1].floor().long()
    inside = (z > 0) & (col >= 0) & (col < w) & (row >= 0) & (row < h)
    col, row = col.clamp(0, w - 1), row.clamp(0, h - 1)
    selected = inside & (mask.bool()[row, col])
    if visible_only and bool(selected.any()):
        depth = render(memory, K, c2w, h, w, max_patches=max(len(memory), 1)).depth[row, col]
        front = (depth == 0) | (z <= depth * (1 + VISIBILITY_TOL) + memory.radii)
        selected &= front
    return selected


def delete(memory: PatchMemory, selection: torch.Tensor) -> PatchMemory:
    """The memory without the selected patches."""
    if _empty(memory, selection, "delete"):
        return memory
    return memory.subset(~selection)


def keep_only(memory: PatchMemory, selection: torch.Tensor) -> PatchMemory:
    """The memory with only the selected patches."""
    if _empty(memory, selection, "keep_only"):
        return memory
    return memory.subset(selection)


def duplicate(memory: PatchMemory, selection: torch.Tensor, transform: torch.Tensor) -> PatchMemory:
    """The memory plus a copy of the selected patches moved by ``transform`` [4,4], in a new edit group."""
    if _empty(memory, selection, "duplicate"):
        return memory
    check_patch_budget(len(memory) + int(selection.sum()), "memory", "duplicate fewer patches or delete some first")
    copy = memory.subset(selection).transformed(_rigid(transform))
    copy = PatchMemory(**dict(copy.tensors(), groups=torch.full_like(copy.groups, _next_group(memory))),
                       patch_size=copy.patch_size)
    return memory.concat(copy)


def move(memory: PatchMemory, selection: torch.Tensor, transform: torch.Tensor) -> PatchMemory:
    """The memory with the selected patches moved by ``transform`` [4,4] (order of patches kept)."""
    if _empty(memory, selection, "move"):
        return memory
    moved = memory.transformed(_rigid(transform))
    pick = selection.bool()

    def blend(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        return torch.where(pick.reshape(-1, *[1] * (old.ndim - 1)), new, old)

    return PatchMemory(**dict(memory.tensors(), c2w=blend(memory.c2w, moved.c2w), centres=blend(memory.centres, moved.centres)),
                       patch_size=memory.patch_size)


def merge(a: PatchMemory, b: PatchMemory, b_to_a: torch.Tensor | None = None) -> PatchMemory:
    """All patches of ``a`` and of ``b`` placed by ``b_to_a`` [4,4]; b's edit groups are renumbered after a's."""
    if len(b) == 0:
        return a
    check_patch_budget(len(a) + len(b), "b", "delete patches from the memories first")
    moved = b if b_to_a is None else b.transformed(_rigid(b_to_a))
    offset = _next_group(a) - int(b.groups.min())
    moved = PatchMemory(**dict(moved.tensors(), groups=moved.groups + offset), patch_size=moved.patch_size)
    return a.concat(moved)


def rigid_transform(
    translate_xyz: Sequence[float] | torch.Tensor = (0.0, 0.0, 0.0),
    rotate_deg_xyz: Sequence[float] | torch.Tensor = (0.0, 0.0, 0.0),
    pivot_xyz: Sequence[float] | torch.Tensor = (0.0, 0.0, 0.0),
) -> torch.Tensor:
    """World transform [4,4]: rotate about world x, then y, then z (degrees) around ``pivot``, then translate (metres)."""
    angles = torch.deg2rad(_vector(rotate_deg_xyz, "rotate_deg_xyz"))
    rotation = torch.eye(3)
    for axis in range(3):
        axis_angle = torch.zeros(1, 3)
        axis_angle[0, axis] = angles[axis]
        rotation = kornia.geometry.conversions.axis_angle_to_rotation_matrix(axis_angle)[0] @ rotation
    pivot = _vector(pivot_xyz, "pivot_xyz")
    shift = pivot - rotation @ pivot + _vector(translate_xyz, "translate_xyz")
    return kornia.geometry.conversions.Rt_to_matrix4x4(rotation[None], shift.reshape(1, 3, 1))[0]


def _vector(value: Sequence[float] | torch.Tensor, name: str) -> torch.Tensor:
    """``value`` as a finite float32 vector [3], or ValueError naming ``name``."""
    vec = torch.as_tensor(value, dtype=torch.float32).reshape(-1)
    if vec.shape != (3,) or not all(math.isfinite(x) for x in vec.tolist()):
        raise ValueError(f"{name}: expected three finite numbers (x, y, z), got {value!r}.")
    return vec


def _rigid(transform: torch.Tensor) -> torch.Tensor:
    """``transform`` as float32 [4,4] after checking it is a rigid motion."""
    transform = torch.as_tensor(transform, dtype=torch.float32)
    if tuple(transform.shape) != (4, 4):
        raise ValueError(f"transform: expected a [4,4] matrix, got shape {list(transform.shape)}.")
    validate_cameras(transform[None], torch.eye(3), "transform (must be a rigid motion)")
    return transform


def _empty(memory: PatchMemory, selection: torch.Tensor, edit: str) -> bool:
    """True (after a warning) if ``selection`` picks no patch; ValueError if it is not a bool mask [N]."""
    if selection.dtype != torch.bool or tuple(selection.shape) != (len(memory),):
        raise ValueError(f"{edit}: selection must be a bool mask [{len(memory)}] (one per patch), "
                         f"got {selection.dtype} {list(selection.shape)}; use the select_* functions.")
    if bool(selection.any()):
        return False
    warnings.warn(f"{edit}: the selection is empty (0 of {len(memory)} patches), so the memory is unchanged; "
                  "widen the box/sphere, check the frame range, or draw the mask where the memory is visible.",
                  stacklevel=3)
    return True


def _next_group(memory: PatchMemory) -> int:
    """A group id not used in ``memory``."""
    return int(memory.groups.max()) + 1 if len(memory) else 0
