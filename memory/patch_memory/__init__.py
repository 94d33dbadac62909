"""MosaicMem's spatial memory: the public API of the 3D patch memory and its file format.

``PatchMemory`` (the value) lives in :mod:`.patches`, building in :mod:`.insertion`, retrieval and
rendering in :mod:`.retrieval`, editing in :mod:`.edits`. Files are ``.safetensors`` with metadata
``format`` = ``come-patch-memory/1`` and ``patch_size``; tensors are the fields of ``PatchMemory``.
"""
from __future__ import annotations

import os
from pathlib import Path

from safetensors import SafetensorError, safe_open

from ..files import atomic_save_safetensors, read_safetensors
from .insertion import dedupe, frames_to_patches, insert_frames
from .patches import FIELD_SPECS, PatchMemory, check_memory, check_patch_budget
from .retrieval import iter_render, render, render_path, retrieve, stack_renderings

MEMORY_FORMAT = "come-patch-memory/1"

__all__ = [
    "MEMORY_FORMAT", "PatchMemory", "check_memory", "check_patch_budget", "dedupe", "frames_to_patches",
    "insert_frames", "iter_render", "load_memory", "render", "render_path", "retrieve", "save_memory", "stack_renderings",
]


def save_memory(memory: PatchMemory, path: str | os.PathLike) -> Path:
    """Write ``memory`` atomically to ``path`` as a ``come-patch-memory/1`` safetensors file."""
    check_memory(memory, "memory")
    metadata = {"format": MEMORY_FORMAT, "patch_size": str(memory.patch_size), "patches": str(len(memory))}
    return atomic_save_safetensors(memory.tensors(), path, metadata)


def load_memory(path: str | os.PathLike) -> PatchMemory:
    """Read a memory written by :func:`save_memory`; ValueError naming ``memory_file`` on missing, corrupted, foreign or damaged files."""
    name = f"memory_file: {path}"
    stored = _stored_patches(path)
    if stored is not None:
        check_patch_budget(stored, name, "split the scene into several memories")
    tensors, metadata = read_safetensors(path, MEMORY_FORMAT, "memory_file")
    try:
        patch_size = int(metadata.get("patch_size", ""))
    except ValueError:
        raise ValueError(f"{name} has no valid 'patch_size' metadata; the file is damaged.") from None
    missing = sorted(set(FIELD_SPECS) - set(tensors))
    unknown = sorted(set(tensors) - set(FIELD_SPECS))
    if missing or unknown:
        raise ValueError(f"{name} has missing tensors {missing} / unexpected tensors {unknown}; "
                         "it was not written by this pack's save_memory.")
    count = metadata.get("patches")
    if count is not None and count != str(len(tensors["rgb"])):
        raise ValueError(f"{name}: its metadata says {count!r} patches but it holds {len(tensors['rgb'])}; "
                         "the file is damaged or was edited: save the memory again.")
    try:
        memory = PatchMemory(**tensors, patch_size=patch_size)
    except ValueError as err:
        raise ValueError(f"{name} holds inconsistent tensors ({err}; metadata patch_size = {patch_size}); "
                         "the file is damaged: save the memory again.") from err
    return check_memory(memory, name)


def _stored_patches(path: str | os.PathLike) -> int | None:
    """The patch count in the header of the file at ``path`` without loading it, or None if unreadable (the full read reports why)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            if "rgb" not in f.keys():
                return None
            shape = f.get_slice("rgb").get_shape()
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return None  # the full read below reports why the file is unreadable
    return int(shape[0]) if shape else None
