"""The patch memory value: struct-of-arrays tensors of p x p RGB-D patches, each self-contained.

Every patch keeps its own source camera (pose + intrinsics) and pixel origin, so it can be lifted to
3D, re-rendered or rigidly edited without any other patch or frame: a rigid edit left-multiplies the
stored pose, and merging two memories is a concatenation. Depth 0 marks an invalid pixel.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from functools import cached_property

import torch

from ..geometry.camera import validate_cameras
from ..geometry.projection import lift_batch
from ..limits import MAX_IMAGE_SIDE, MAX_PATCHES, check_count
from .spatial_index import GridIndex

# dtype and per-patch trailing shape of every tensor field; ``p`` stands for the patch size.
FIELD_SPECS: dict[str, tuple[torch.dtype, tuple]] = {
    "rgb": (torch.uint8, ("p", "p", 3)),
    "depth": (torch.float16, ("p", "p")),
    "c2w": (torch.float32, (3, 4)),
    "intrinsics": (torch.float32, (4,)),
    "origins": (torch.int16, (2,)),
    "frame_ids": (torch.int32, ()),
    "times": (torch.float32, ()),
    "groups": (torch.int32, ()),
    "centres": (torch.float32, (3,)),
    "radii": (torch.float32, ()),
}


@dataclass(frozen=True)
class PatchMemory:
    """N patches of ``patch_size``² pixels, as CPU tensors (see FIELD_SPECS for dtypes and shapes).

    ``rgb`` [N,p,p,3] uint8; ``depth`` [N,p,p] float16 z-depth in the source camera (0 = invalid);
    ``c2w`` [N,3,4] source pose; ``intrinsics`` [N,4] (fx, fy, cx, cy); ``origins`` [N,2] pixel (u0, v0)
    of the patch's top-left corner in its source frame; ``frame_ids`` [N]; ``times`` [N]; ``groups`` [N]
    edit groups; ``centres`` [N,3] and ``radii`` [N] bounding spheres of the valid pixels in world space.
    """

    rgb: torch.Tensor
    depth: torch.Tensor
    c2w: torch.Tensor
    intrinsics: torch.Tensor
    origins: torch.Tensor
    frame_ids: torch.Tensor
    times: torch.Tensor
    groups: torch.Tensor
    centres: torch.Tensor
    radii: torch.Tensor
    patch_size: int = 8

    def __post_init__(self) -> None:
        check_count(self.patch_size, "patch_size", 1, MAX_IMAGE_SIDE, "pixels")
        n = int(self.rgb.shape[0]) if self.rgb.ndim else -1
        for name, (dtype, trailing) in FIELD_SPECS.items():
            value = getattr(self, name)
            expected = (n, *(self.patch_size if d == "p" else d for d in trailing))
            if not isinstance(value, torch.Tensor) or value.dtype != dtype or tuple(value.shape) != expected:
                got = f"{value.dtype} {list(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"PatchMemory.{name}: expected {dtype} {list(expected)}, got {got}.")

    @classmethod
    def empty(cls, patch_size: int = 8) -> "PatchMemory":
        """A memory with no patches of ``patch_size`` x ``patch_size`` pixels."""
        patch_size = check_count(patch_size, "patch_size", 1, MAX_IMAGE_SIDE, "pixels")
        tensors = {
            name: torch.zeros((0, *(patch_size if d == "p" else d for d in trailing)), dtype=dtype)
            for name, (dtype, trailing) in FIELD_SPECS.items()
        }
        return cls(**tensors, patch_size=patch_size)

    def __len__(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes held by all tensors of the memory."""
        return sum(t.element_size() * t.numel() for t in self.tensors().values())

    def tensors(self) -> dict[str, torch.Tensor]:
        """The tensor fields by name (what a file stores)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in FIELD_SPECS}

    def subset(self, index: torch.Tensor) -> "PatchMemory":
        """A new memory of the patches at ``index`` (LongTensor of positions or bool mask [N])."""
        return PatchMemory(**{k: v[index] for k, v in self.tensors().items()}, patch_size=self.patch_size)

    def concat(self, other: "PatchMemory") -> "PatchMemory":
        """This memory's patches followed by ``other``'s (same patch size)."""
        if other.patch_size != self.patch_size:
            raise ValueError(f"memory: patch sizes differ ({self.patch_size} vs {other.patch_size}); "
                             "build both memories with the same patch_size.")
        theirs = other.tensors()
        return PatchMemory(**{k: torch.cat([v, theirs[k]]) for k, v in self.tensors().items()},
                           patch_size=self.patch_size)

    def transformed(self, transform: torch.Tensor) -> "PatchMemory":
        """All patches moved by the rigid world transform [4,4] (poses left-multiplied, centres moved)."""
        rot, shift = transform[:3, :3].float(), transform[:3, 3].float()
        c2w = torch.cat([rot @ self.c2w[:, :, :3], (rot @ self.c2w[:, :, 3:]) + shift[:, None]], -1)
        tensors = dict(self.tensors(), c2w=c2w, centres=self.centres @ rot.T + shift)
        return PatchMemory(**tensors, patch_size=self.patch_size)

    def lift(self, index: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """World points [n,p*p,3] and validity [n,p*p] of the patches at ``index`` (all if None)."""
        sub = self if index is None else self.subset(index)
        n, p = len(sub), self.patch_size
        offsets = torch.stack(torch.meshgrid(torch.arange(p), torch.arange(p), indexing="xy"), -1).reshape(-1, 2)
        uv = sub.origins.float()[:, None, :] + offsets.float()[None] + 0.5
        fx, fy, cx, cy = sub.intrinsics.unbind(-1)
        K = torch.zeros(n, 3, 3)
        K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = fx, fy, cx, cy, 1.0
        c2w = torch.cat([sub.c2w, torch.tensor([0.0, 0.0, 0.0, 1.0]).expand(n, 1, 4)], 1)
        depth = sub.depth.float().reshape(n, -1)
        return lift_batch(uv, depth, K, c2w), depth > 0

    def points(self, max_points: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every valid stored pixel as a world point: points [M,3], colours [M,3] float 0..1, patch index [M].

        With ``max_points``, whole patches are subsampled evenly first so that about that many points
        are lifted (cheap previews of very large memories).
        """
        index = torch.arange(len(self))
        per_patch = self.patch_size ** 2
        if max_points is not None and len(self) * per_patch > max_points:
            keep = max(1, max_points // per_patch)
            index = torch.div(torch.arange(keep) * len(self), keep, rounding_mode="floor")
        pts, valid = self.lift(index)
        colours = self.rgb[index].reshape(len(index), -1, 3).float() / 255
        owner = index[:, None].expand(-1, per_patch)
        return pts[valid], colours[valid], owner[valid]

    @cached_property
    def index(self) -> GridIndex:
        """Grid over the patch centres for retrieval, built on first use and kept with this (immutable) memory."""
        return GridIndex.build(self.centres, self.radii)

    @cached_property
    def problem(self) -> str:
        """Why the stored values are not a usable memory ('' if they are); computed once per (immutable) memory.

        Memories built here are valid by construction; this guards the ones that enter from a file or
        another pack, whose NaN or broken poses would otherwise render as if nothing were wrong.
        """
        n, p = len(self), self.patch_size
        if n > MAX_PATCHES:
            return f"{n} patches is more than the limit of {MAX_PATCHES} per memory; split the scene into several memories."
        if n == 0:
            return ""
        checks = (
            ("depth", _bad(self.depth.flatten(1), low=0.0), "is NaN, inf or negative (metric z-depth >= 0, 0 = invalid)"),
            ("centres", _bad(self.centres), "is NaN or inf"),
            ("radii", _bad(self.radii[:, None], low=0.0), "is NaN, inf or negative"),
            ("times", _bad(self.times[:, None]), "is NaN or inf"),
            ("intrinsics", _bad(self.intrinsics), "is NaN or inf"),
            ("intrinsics", _bad(self.intrinsics[:, :2], low=1e-6), "has a focal length fx or fy <= 0"),
            ("origins", _bad(self.origins.float(), low=0.0, high=MAX_IMAGE_SIDE - p),
             f"lies outside a frame of at most {MAX_IMAGE_SIDE} pixels (0 <= u0, v0 <= {MAX_IMAGE_SIDE - p})"),
        )
        for name, bad, what in checks:
            if bad >= 0:
                return f"{name} of patch {bad} {what}; the memory is damaged: rebuild it from its frames."
        # Patches of one frame are stored together with equal poses, so checking each run of equal poses
        # once costs about one check per source frame instead of one per patch.
        first = torch.ones(n, dtype=torch.bool)
        first[1:] = (self.c2w[1:] != self.c2w[:-1]).flatten(1).any(-1)
        runs = first.nonzero().flatten()
        poses = torch.cat([self.c2w[runs], torch.tensor([0.0, 0.0, 0.0, 1.0]).expand(len(runs), 1, 4)], 1)
        try:
            validate_cameras(poses, torch.eye(3), "c2w (source poses of the patches; camera k is the k-th distinct pose)")
        except ValueError as err:
            return f"{err}; the memory is damaged: rebuild it from its frames."
        return ""


def _bad(values: torch.Tensor, low: float = -math.inf, high: float = math.inf) -> int:
    """Index of the first row of ``values`` [N,k] with a NaN, an inf or a value outside low..high, else -1."""
    lo, hi = values.aminmax()  # one pass; NaN propagates into both, so it fails the range test below
    if low <= float(lo) and float(hi) <= high and math.isfinite(float(lo)) and math.isfinite(float(hi)):
        return -1
    ok = (values >= low) & (values <= high) & (values.abs() < math.inf)
    return int((~ok.all(-1)).nonzero()[0])


def check_memory(memory: object, name: str, allow_empty: bool = True) -> PatchMemory:
    """``memory`` if it is a PatchMemory of usable values within the size limit, else a ValueError naming ``name``."""
    if not isinstance(memory, PatchMemory):
        raise ValueError(f"{name}: expected a patch memory, got {type(memory).__name__}; "
                         "connect the output of Build Patch Memory or Load Patch Memory.")
    if memory.problem:
        raise ValueError(f"{name}: {memory.problem}")
    if not allow_empty and len(memory) == 0:
        raise ValueError(f"{name}: the memory is empty: build it from frames first (Build Patch Memory).")
    return memory


def check_patch_budget(count: int, name: str, fix: str) -> None:
    """ValueError naming ``name`` if a memory of ``count`` patches would exceed MAX_PATCHES; ``fix`` says what to do."""
    if count > MAX_PATCHES:
        raise ValueError(f"{name}: the result would hold {count} patches, more than the limit of {MAX_PATCHES} "
                         f"per memory; {fix}.")
