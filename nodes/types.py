"""The pack's own ComfyUI socket types and small helpers shared by its nodes."""
from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

import comfy.model_management
import comfy.utils
import folder_paths
from comfy_api.latest import io

from ..memory.files import confined_path

CameraPathType = io.Custom("COME_CAMERA_PATH")
PatchMemoryType = io.Custom("COME_PATCH_MEMORY")
DepthType = io.Custom("COME_DEPTH")

CATEGORY = "CoME"
T = TypeVar("T")


def until_interrupted(items: Iterable[T], total: int, what: str) -> list[T]:
    """Consume ``items`` with ComfyUI's progress bar; on cancel, stop and return what is finished.

    Finished frames are results worth keeping (the save node downstream still writes them), so the
    interrupt is consumed here; with nothing finished it propagates as usual.
    """
    bar = comfy.utils.ProgressBar(total)
    done: list[T] = []
    for item in items:
        if comfy.model_management.processing_interrupted() and done:
            comfy.model_management.interrupt_current_processing(False)
            logging.warning("CoME: %s interrupted after %d of %d frames; returning the finished frames.",
                            what, len(done), total)
            break
        comfy.model_management.throw_exception_if_processing_interrupted()
        done.append(item)
        bar.update(1)
    return done


def output_file(filename_prefix: str, extension: str) -> tuple[Path, str]:
    """A new numbered file ``prefix_00001_.ext`` inside ComfyUI's output folder and its path relative to that folder."""
    root = Path(folder_paths.get_output_directory())
    prefix_path = confined_path(root, filename_prefix, "filename_prefix")
    folder, stem = prefix_path.parent, prefix_path.name
    folder.mkdir(parents=True, exist_ok=True)
    counter = 1 + max((_counter_of(p.name, stem) for p in folder.glob(f"{stem}_*_.{extension}")), default=0)
    path = folder / f"{stem}_{counter:05d}_.{extension}"
    return path, path.relative_to(root.resolve()).as_posix()


def _counter_of(name: str, stem: str) -> int:
    digits = name[len(stem) + 1:].split("_", 1)[0]
    return int(digits) if digits.isdigit() else 0
