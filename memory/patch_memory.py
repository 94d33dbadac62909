"""MosaicMem's spatial memory: the public API of the 3D patch memory and its file format.

``PatchMemory`` (the value) lives in :mod:`.patches`, building in :mod:`.insertion`, retrieval and
rendering in :mod:`.retrieval`, editing in :mod:`.edits`. Files are ``.safetensors`` with metadata
``format`` = ``come-patch-memory/1`` and ``patch_size``; tensors are the fields of ``PatchMemory``.
"""
from __future__ import annotations

import os
from pathlib import Path

from .files import atomic_save_safetensors, read_safetensors
from .insertion import dedupe, frames_to_patches, insert_frames
from .patches import FIELD_SPECS, PatchMemory
from .retrieval import iter_render, render, render_path, retrieve, stack_renderings

MEMORY_FORMAT = "come-patch-memory/1"

__all__ = [
    "MEMORY_FORMAT", "PatchMemory", "dedupe", "frames_to_patches", "insert_frames", "iter_render", "load_memory",
    "render", "render_path", "retrieve", "save_memory", "stack_renderings",
]


def save_memory(memory: PatchMemory, path: str | os.PathLike) -> Path:
    """Write ``memory`` atomically to ``path`` as a ``come-patch-memory/1`` safetensors file."""
    metadata = {"format": MEMORY_FORMAT, "patch_size": str(memory.patch_size), "patches": str(len(memory))}
    return atomic_save_safetensors(memory.tensors(), path, metadata)


def load_memory(path: str | os.PathLike) -> PatchMemory:
    """Read a memory written by :func:`save_memory`; ValueError on missing, corrupted or foreign files."""
    tensors, metadata = read_safetensors(path, MEMORY_FORMAT, "memory_file")
    try:
        patch_size = int(metadata.get("patch_size", ""))
    except ValueError:
        raise ValueError(f"memory_file: {path} has no valid 'patch_size' metadata; the file is damaged.") from None
    missing = sorted(set(FIELD_SPECS) - set(tensors))
    unknown = sorted(set(tensors) - set(FIELD_SPECS))
    if missing or unknown:
        raise ValueError(f"memory_file: {path} has missing tensors {missing} / unexpected tensors {unknown}; "
                         "it was not written by this pack's save_memory.")
    try:
        return PatchMemory(**tensors, patch_size=patch_size)
    except ValueError as err:
        raise ValueError(f"memory_file: {path} holds inconsistent tensors ({err}); the file is damaged.") from err
