"""Malformed inputs of the patch-memory nodes: build, render, merge, edit, save, load (damaged files), 3D export, map."""
from __future__ import annotations

import math

import torch
from safetensors.torch import save_file

from malformed_support import Case

NAN, INF = math.nan, math.inf
MEMORY_FOLDER = "patch_memories"


# Values are built with the classes of the pack as ComfyUI loaded it (type(env.memory) etc.): the
# top-level `memory` package the tests import is another copy of the module, whose classes differ.


def _tensor_changed(tensor: torch.Tensor, change) -> torch.Tensor:
    """A copy of ``tensor`` after ``change(copy)`` edits it in place."""
    copy = tensor.clone()
    change(copy)
    return copy


def _damaged(env, field: str, change):
    """The sample memory with one tensor field damaged in place by ``change`` (shapes and dtypes kept)."""
    tensors = env.memory.tensors()
    return type(env.memory)(**dict(tensors, **{field: _tensor_changed(tensors[field], change)}),
                            patch_size=env.memory.patch_size)


def _empty(env):
    """An empty memory of the pack's PatchMemory class."""
    return type(env.memory).empty()


def _depth_maps(env, metres):
    """``metres`` as the pack's DepthMaps value."""
    return type(env.metric_depth)(metres)


def _frames(change):
    """The sample frames after ``change(copy)``."""
    return lambda env: _tensor_changed(env.frames, change)


def _depth(change):
    """The sample metric depth after ``change(copy)``."""
    return lambda env: _depth_maps(env, _tensor_changed(env.metric_depth.metres, change))


def _build(**overrides):
    """Build Patch Memory with sample inputs except ``overrides`` (callables get the env)."""
    return lambda env: env.call("CoMEBuildPatchMemory",
                                **{k: v(env) if callable(v) else v for k, v in overrides.items()})


def _node(node_id: str, **overrides):
    """Run ``node_id`` with sample inputs except ``overrides`` (callables get the env)."""
    return lambda env: env.call(node_id, **{k: v(env) if callable(v) else v for k, v in overrides.items()})


def _path(env, frames: int | None = None, height: int | None = None, width: int | None = None):
    """The sample path with its first camera repeated ``frames`` times and/or another image size."""
    path = env.path
    c2w = path.c2w if frames is None else path.c2w[:1].expand(frames, 4, 4)
    return type(path)(c2w, path.K, height or path.height, width or path.width)


def _small_memory(env, patch_size: int):
    """A memory of the first 4 sample frames with another patch size."""
    key = f"memory_p{patch_size}"
    if key not in env.cache:
        depth = _depth_maps(env, env.metric_depth.metres[:4])
        env.cache[key] = env.call("CoMEBuildPatchMemory", frames=env.frames[:4], metric_depth=depth,
                                  camera_path=env.path.slice(0, 4), patch_size=patch_size).args[0]
    return env.cache[key]


def _set(index, value):
    """A change that writes ``value`` at ``index``."""
    def change(t):
        t[index] = value
    return change


def _scale_rotation(t):
    t[0, :, :3] *= 2.0


DAMAGED_MEMORIES = [
    ("nan-depth", "depth", _set((0, 0, 0), NAN)),
    ("inf-depth", "depth", _set((1, 2, 3), INF)),
    ("negative-depth", "depth", _set((2, 0, 0), -1.0)),
    ("nan-centre", "centres", _set((0, 1), NAN)),
    ("inf-centre", "centres", _set((3, 2), -INF)),
    ("negative-radius", "radii", _set(4, -0.5)),
    ("nan-radius", "radii", _set(0, NAN)),
    ("scaled-pose", "c2w", _scale_rotation),
    ("nan-pose", "c2w", _set((5, 0, 3), NAN)),
    ("zero-focal", "intrinsics", _set((0, 0), 0.0)),
    ("negative-focal", "intrinsics", _set((2, 1), -40.0)),
    ("inf-principal-point", "intrinsics", _set((1, 2), INF)),
    ("negative-origin", "origins", _set((0, 0), -8)),
    ("origin-out-of-frame", "origins", _set((0, 1), 30000)),
    ("nan-time", "times", _set(0, NAN)),
]


def _memory_file(name: str, field: str | None = None, change=None, metadata: dict | None = None,
                 tensors=None, raw=None, truncate: int | None = None):
    """A setup writing input/patch_memories/<name>.safetensors: the sample memory damaged as described."""
    def setup(env):
        folder = env.input / MEMORY_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{name}.safetensors"
        if raw is not None:
            target.write_bytes(raw(env))
            return
        data = env.memory.tensors()
        if field is not None:
            data = dict(data, **{field: _tensor_changed(data[field], change)})
        if tensors is not None:
            data = tensors(data)
        meta = {"format": "come-patch-memory/1", "patch_size": "8", "patches": str(len(data["rgb"]))}
        meta.update(metadata or {})
        save_file({k: v.contiguous() for k, v in data.items()}, str(target),
                  metadata={k: v for k, v in meta.items() if v is not None})
        if truncate is not None:
            target.write_bytes(target.read_bytes()[:truncate])
    return setup


def _load(name: str):
    """Load Patch Memory on input/patch_memories/<name>.safetensors."""
    return lambda env: env.call("CoMELoadPatchMemory", memory_file=f"{MEMORY_FOLDER}/{name}.safetensors [input]")


def _load_case(name: str, **damage) -> Case:
    return Case(f"memory-load-{name}", "memory_file", _load(name), _memory_file(name, **damage))


def _mask(shape, fill=1.0):
    return lambda env: torch.full(shape, fill)


def _edit(**overrides):
    return _node("CoMEEditPatchMemory", **overrides)


MASKED = dict(selection="mask", mask_camera=lambda env: env.path)

CASES: list[Case] = [
    # Build Patch Memory: frames
    Case("memory-build-frames-nan", "frames", _build(frames=_frames(_set((3, 10, 10, 1), NAN)))),
    Case("memory-build-frames-inf", "frames", _build(frames=_frames(_set((0, 0, 0, 0), INF)))),
    Case("memory-build-frames-0-255", "frames", _build(frames=_frames(lambda t: t.mul_(255)))),
    Case("memory-build-frames-negative", "frames", _build(frames=_frames(_set((0, 5, 5, 2), -0.5)))),
    Case("memory-build-frames-rgba", "frames", _build(frames=lambda env: torch.cat([env.frames, env.frames[..., :1]], -1))),
    Case("memory-build-frames-grey", "frames", _build(frames=lambda env: env.frames[..., :1])),
    Case("memory-build-frames-3d", "frames", _build(frames=lambda env: env.frames[0])),
    Case("memory-build-frames-uint8", "frames", _build(frames=lambda env: (env.frames * 255).to(torch.uint8))),
    Case("memory-build-frames-empty", "frames", _build(frames=lambda env: env.frames[:0])),
    Case("memory-build-frames-not-image", "frames", _build(frames="frames.png")),
    # Build: metric depth
    Case("memory-build-depth-nan", "metric_depth", _build(metric_depth=_depth(_set((2, 1, 1), NAN)))),
    Case("memory-build-depth-inf", "metric_depth", _build(metric_depth=_depth(_set((0, 0, 0), INF)))),
    Case("memory-build-depth-negative", "metric_depth", _build(metric_depth=_depth(lambda t: t.neg_()))),
    Case("memory-build-depth-all-zero", "metric_depth", _build(metric_depth=_depth(lambda t: t.zero_()))),
    Case("memory-build-depth-size", "metric_depth",
         _build(metric_depth=lambda env: _depth_maps(env, env.metric_depth.metres[:, :32, :32]))),
    Case("memory-build-depth-count", "metric_depth", _build(metric_depth=lambda env: _depth_maps(env, env.metric_depth.metres[:5]))),
    Case("memory-build-depth-not-depth", "metric_depth", _build(metric_depth=lambda env: env.frames)),
    # Build: camera path and widgets
    Case("memory-build-path-count", "camera_path", _build(camera_path=lambda env: env.path.slice(0, 5))),
    Case("memory-build-path-size", "camera_path", _build(camera_path=lambda env: _path(env, height=128, width=128))),
    Case("memory-build-path-not-path", "camera_path", _build(camera_path=lambda env: env.frames)),
    Case("memory-build-patch-size-not-dividing", "patch_size", _build(patch_size=6)),
    Case("memory-build-patch-size-zero", "patch_size", _build(patch_size=0)),
    Case("memory-build-patch-size-huge", "patch_size", _build(patch_size=10**9)),
    Case("memory-build-patch-size-fraction", "patch_size", _build(patch_size=7.5)),
    Case("memory-build-voxel-nan", "voxel_size", _build(voxel_size=NAN)),
    Case("memory-build-voxel-zero", "voxel_size", _build(voxel_size=0.0)),
    Case("memory-build-voxel-inf", "voxel_size", _build(voxel_size=INF)),
    Case("memory-build-first-frame-past-end", "first_frame", _build(first_frame=500)),
    Case("memory-build-first-frame-negative", "first_frame", _build(first_frame=-3)),
    Case("memory-build-last-before-first", "last_frame", _build(first_frame=10, last_frame=5)),
    Case("memory-build-last-past-end", "last_frame", _build(last_frame=128)),
    Case("memory-build-stride-zero", "frame_stride", _build(frame_stride=0)),
    Case("memory-build-stride-negative", "frame_stride", _build(frame_stride=-1)),
    Case("memory-build-stride-nan", "frame_stride", _build(frame_stride=NAN)),
    Case("memory-build-base-memory-damaged", "base_memory",
         _build(base_memory=lambda env: _damaged(env, "centres", _set((0, 0), NAN)))),
    # Render Patch Memory
    Case("memory-render-memory-empty", "memory", _node("CoMERenderPatchMemory", memory=_empty)),
    Case("memory-render-memory-damaged", "memory",
         _node("CoMERenderPatchMemory", memory=lambda env: _damaged(env, "depth", _set((0, 0, 0), NAN)))),
    Case("memory-render-memory-not-memory", "memory", _node("CoMERenderPatchMemory", memory="memory.safetensors")),
    Case("memory-render-path-empty", "camera_path", _node("CoMERenderPatchMemory", camera_path=lambda env: env.path.slice(0, 0))),
    Case("memory-render-path-too-many-pixels", "camera_path",
         _node("CoMERenderPatchMemory", camera_path=lambda env: _path(env, 90_000, 64, 64))),
    Case("memory-render-path-not-path", "camera_path", _node("CoMERenderPatchMemory", camera_path="forward 1")),
    Case("memory-render-max-patches-zero", "max_patches", _node("CoMERenderPatchMemory", max_patches=0)),
    Case("memory-render-max-patches-absurd", "max_patches", _node("CoMERenderPatchMemory", max_patches=10**12)),
    Case("memory-render-max-patches-nan", "max_patches", _node("CoMERenderPatchMemory", max_patches=NAN)),
    Case("memory-render-max-distance-nan", "max_distance", _node("CoMERenderPatchMemory", max_distance=NAN)),
    Case("memory-render-max-distance-negative", "max_distance", _node("CoMERenderPatchMemory", max_distance=-1.0)),
    # Merge Patch Memories
    Case("memory-merge-a-damaged", "memory_a",
         _node("CoMEMergePatchMemories", memory_a=lambda env: _damaged(env, "radii", _set(0, -1.0)))),
    Case("memory-merge-b-damaged", "memory_b",
         _node("CoMEMergePatchMemories", memory_b=lambda env: _damaged(env, "c2w", _scale_rotation))),
    Case("memory-merge-b-not-memory", "memory_b", _node("CoMEMergePatchMemories", memory_b=torch.zeros(3))),
    Case("memory-merge-b-patch-size", "memory_b",
         _node("CoMEMergePatchMemories", memory_b=lambda env: _small_memory(env, 4))),
    Case("memory-merge-translate-nan", "translate_x", _node("CoMEMergePatchMemories", translate_x=NAN)),
    Case("memory-merge-rotate-inf", "rotate_z_deg", _node("CoMEMergePatchMemories", rotate_z_deg=INF)),
    Case("memory-merge-translate-absurd", "translate_y", _node("CoMEMergePatchMemories", translate_y=1e300)),
    # Edit Patch Memory
    Case("memory-edit-memory-damaged", "memory",
         _edit(memory=lambda env: _damaged(env, "intrinsics", _set((0, 0), -1.0)))),
    Case("memory-edit-center-nan", "center_x", _edit(center_x=NAN)),
    Case("memory-edit-center-absurd", "center_z", _edit(center_z=1e300)),
    Case("memory-edit-size-negative", "size_y", _edit(size_y=-1.0)),
    Case("memory-edit-size-nan", "size_z", _edit(size_z=NAN)),
    Case("memory-edit-radius-nan", "radius", _edit(selection="sphere", radius=NAN)),
    Case("memory-edit-radius-negative", "radius", _edit(selection="sphere", radius=-2.0)),
    Case("memory-edit-radius-inf", "radius", _edit(selection="sphere", radius=INF)),
    Case("memory-edit-frames-reversed", "last_frame", _edit(selection="frames", first_frame=5, last_frame=2)),
    Case("memory-edit-first-frame-fraction", "first_frame", _edit(selection="frames", first_frame=1.5)),
    Case("memory-edit-mask-missing", "mask", _edit(selection="mask", mask_camera=lambda env: env.path)),
    Case("memory-edit-mask-camera-missing", "mask_camera", _edit(selection="mask", mask=_mask((1, 64, 64)))),
    Case("memory-edit-mask-camera-empty", "mask_camera",
         _edit(selection="mask", mask=_mask((1, 64, 64)), mask_camera=lambda env: env.path.slice(0, 0))),
    Case("memory-edit-mask-camera-not-path", "mask_camera", _edit(selection="mask", mask=_mask((1, 64, 64)), mask_camera=3)),
    Case("memory-edit-mask-4d", "mask", _edit(mask=_mask((1, 1, 64, 64)), **MASKED)),
    Case("memory-edit-mask-1d", "mask", _edit(mask=_mask((64,)), **MASKED)),
    Case("memory-edit-mask-nan", "mask", _edit(mask=_mask((1, 64, 64), NAN), **MASKED)),
    Case("memory-edit-mask-unscaled", "mask", _edit(mask=_mask((1, 64, 64), 255.0), **MASKED)),
    Case("memory-edit-mask-aspect", "mask", _edit(mask=_mask((1, 64, 128)), **MASKED)),
    Case("memory-edit-mask-batch", "mask", _edit(mask=_mask((3, 64, 64)), **MASKED)),
    Case("memory-edit-mask-frame-past-end", "mask_frame", _edit(mask=_mask((1, 64, 64)), mask_frame=500, **MASKED)),
    Case("memory-edit-mask-frame-negative", "mask_frame", _edit(mask=_mask((1, 64, 64)), mask_frame=-1, **MASKED)),
    Case("memory-edit-translate-nan", "translate_x", _edit(operation="duplicate", selection="all", translate_x=NAN)),
    Case("memory-edit-rotate-absurd", "rotate_x_deg", _edit(operation="move", selection="all", rotate_x_deg=1e300)),
    # Save Patch Memory: a damaged memory is not written
    Case("memory-save-memory-damaged", "memory",
         _node("CoMESavePatchMemory", memory=lambda env: _damaged(env, "depth", _set((0, 1, 1), -2.0)))),
    Case("memory-save-memory-not-memory", "memory", _node("CoMESavePatchMemory", memory={"rgb": 1})),
    # Load Patch Memory: damaged files
    *[_load_case(label, field=field, change=change) for label, field, change in DAMAGED_MEMORIES],
    _load_case("patches-metadata-wrong", metadata={"patches": "5"}),
    _load_case("patch-size-metadata-wrong", metadata={"patch_size": "4"}),
    _load_case("patch-size-metadata-text", metadata={"patch_size": "eight"}),
    _load_case("patch-size-metadata-zero", metadata={"patch_size": "0"}),
    _load_case("patch-size-metadata-missing", metadata={"patch_size": None}),
    _load_case("integer-depth", tensors=lambda d: dict(d, depth=d["depth"].to(torch.int16))),
    _load_case("double-centres", tensors=lambda d: dict(d, centres=d["centres"].double())),
    _load_case("missing-radii", tensors=lambda d: {k: v for k, v in d.items() if k != "radii"}),
    _load_case("extra-tensor", tensors=lambda d: dict(d, weights=torch.zeros(3))),
    _load_case("count-mismatch", tensors=lambda d: dict(d, radii=d["radii"][:-1])),
    _load_case("episode-format", metadata={"format": "come-episode/1"}),
    _load_case("truncated", truncate=1000),
    _load_case("empty-file", raw=lambda env: b""),
    _load_case("not-safetensors", raw=lambda env: b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all"),
    # Patch Memory to 3D File
    Case("memory-3d-memory-empty", "memory", _node("CoMEPatchMemoryTo3D", memory=_empty)),
    Case("memory-3d-memory-no-valid-depth", "memory",
         _node("CoMEPatchMemoryTo3D", memory=lambda env: _damaged(env, "depth", lambda t: t.zero_()))),
    Case("memory-3d-memory-damaged", "memory",
         _node("CoMEPatchMemoryTo3D", memory=lambda env: _damaged(env, "centres", _set((1, 1), INF)))),
    Case("memory-3d-max-points-zero", "max_points", _node("CoMEPatchMemoryTo3D", max_points=0)),
    Case("memory-3d-max-points-absurd", "max_points", _node("CoMEPatchMemoryTo3D", max_points=10**15)),
    Case("memory-3d-max-points-nan", "max_points", _node("CoMEPatchMemoryTo3D", max_points=NAN)),
    # Patch Memory Map
    Case("memory-map-size-zero", "size", _node("CoMEPatchMemoryMap", size=0)),
    Case("memory-map-size-absurd", "size", _node("CoMEPatchMemoryMap", size=10**9)),
    Case("memory-map-size-nan", "size", _node("CoMEPatchMemoryMap", size=NAN)),
    Case("memory-map-memory-damaged", "memory",
         _node("CoMEPatchMemoryMap", memory=lambda env: _damaged(env, "origins", _set((0, 0), -1)))),
    Case("memory-map-path-not-path", "camera_path_2", _node("CoMEPatchMemoryMap", camera_path_2="orbit")),
]
