"""The pack's own ComfyUI socket types and small helpers shared by its nodes."""
from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import TypeVar

import comfy.model_management
import comfy.utils
import folder_paths
from comfy_api.latest import io

from ..memory.files import check_prefix
from ..memory.world.backbones.wan import WanWorldModel
from ..memory.world.world_model import WorldModel

CameraPathType = io.Custom("COME_CAMERA_PATH")
PatchMemoryType = io.Custom("COME_PATCH_MEMORY")
DepthType = io.Custom("COME_DEPTH")
WorldModelType = io.Custom("COME_WORLD_MODEL")
ExpertType = io.Custom("COME_EXPERT")
CompositionType = io.Custom("COME_COMPOSITION")
EpisodicLoRAType = io.Custom("COME_EPISODIC_LORA")
GuiderExpertsType = io.Custom("COME_GUIDER_EXPERTS")

CATEGORY = "CoME"
T = TypeVar("T")


class Progress:
    """ComfyUI's progress bar over ``total`` steps; every step is also an interrupt point."""

    def __init__(self, total: int):
        self.bar = comfy.utils.ProgressBar(total)
        self.done = 0

    def step(self, *_: object) -> None:
        """Count one finished step; raises ComfyUI's interrupt first if the user cancelled."""
        comfy.model_management.throw_exception_if_processing_interrupted()
        self.done += 1
        self.bar.update(1)


def until_interrupted(items: Iterable[T], total: int, what: str, progress: Progress | None = None) -> list[T]:
    """Consume ``items`` with ComfyUI's progress bar; on cancel, stop and return what is finished.

    Without ``progress`` each item is one step. With it, producing the items steps it (e.g. once per
    denoising step through a callback), so a cancel inside a long item stops there. Finished frames
    are results worth keeping (the save node downstream still writes them), so the interrupt is
    consumed here; with nothing finished it propagates as usual.
    """
    counter = progress if progress is not None else Progress(total)
    done: list[T] = []
    try:
        for item in items:
            if progress is None:
                counter.step()
            done.append(item)
    except comfy.model_management.InterruptProcessingException:
        if not done:
            raise
        comfy.model_management.interrupt_current_processing(False)
        logging.warning("CoME: %s interrupted after %d of %d steps; returning the finished frames.",
                        what, counter.done, total)
    return done


def check_options(node: type[io.ComfyNode], **values: str) -> None:
    """ValueError naming the combo input whose value is not one of the node's current options.

    This ComfyUI version does not check combo values of V3 nodes, so an API prompt or an edited
    workflow could otherwise reach a node with a value it never offered.
    """
    offered = {spec.id: spec.options for spec in node.define_schema().inputs if isinstance(spec, io.Combo.Input)}
    for name, value in values.items():
        options = offered[name]
        if not isinstance(value, str) or value not in options:
            shown = ", ".join(repr(o) for o in options[:8]) + (", ..." if len(options) > 8 else "")
            raise ValueError(f"{name}: {value!r} is not one of the offered options ({shown or 'none'}); "
                             "pick a value from the list (refresh the node if a file was added).")


def check_widgets(node: type[io.ComfyNode], **values: object) -> None:
    """ValueError naming the number input whose value is not a finite number within its widget's min..max.

    ComfyUI checks the range of prompts but lets NaN through (every comparison with it is false), and
    direct calls check nothing; a node's own widget range is its documented contract.
    """
    specs = {spec.id: spec for spec in node.define_schema().inputs}
    for name, value in values.items():
        spec = specs[name]
        whole = isinstance(spec, io.Int.Input)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or whole and not float(value).is_integer():
            raise ValueError(f"{name}: expected a finite {'whole ' if whole else ''}number, got {value!r}.")
        low, high = spec.min, spec.max
        if low is not None and value < low or high is not None and value > high:
            raise ValueError(f"{name}: {value!r} is outside the allowed range {low}..{high}; choose a value in that range.")


def frame_range(total: int, first_frame: int, last_frame: int) -> slice:
    """Frames ``first_frame .. last_frame`` (-1 = the last) of ``total``, else a ValueError naming the widget."""
    if first_frame >= total:
        raise ValueError(f"first_frame: {first_frame} is past the last of the {total} frames; pick 0..{total - 1}.")
    stop = total if last_frame < 0 else last_frame + 1
    if not first_frame < stop <= total:
        raise ValueError(f"last_frame: {last_frame} must be -1 (the end) or between first_frame ({first_frame}) "
                         f"and {total - 1}, the last of the {total} frames.")
    return slice(first_frame, stop)


def require_world_model(value: object) -> WorldModel | WanWorldModel:
    """``value`` if it is a loaded world model (MosaicDiT or Wan), else a ValueError naming the ``world_model`` input."""
    if not isinstance(value, (WorldModel, WanWorldModel)):
        raise ValueError(f"world_model: expected the output of Load World Model, got {type(value).__name__}.")
    return value


def output_file(filename_prefix: str, extension: str, root: str | None = None) -> tuple[Path, str]:
    """A new file ``prefix_00001_.ext`` in ``root`` (ComfyUI's output folder by default), numbered by ComfyUI's own counter.

    Returns the path and its name relative to ``root``. The counter is the one ComfyUI's save nodes
    use; a name that exists anyway (another extension's file, a concurrent save) is skipped, so no
    save ever replaces an earlier file.
    """
    root = root or folder_paths.get_output_directory()
    check_prefix(filename_prefix, root)
    folder, stem, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, root)
    name = f"{stem}_{counter:05d}_.{extension}"
    while (Path(folder) / name).exists():
        counter += 1
        name = f"{stem}_{counter:05d}_.{extension}"
    return Path(folder) / name, Path(subfolder, name).as_posix()
