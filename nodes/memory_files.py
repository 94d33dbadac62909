"""Save and load patch memories, export them as a 3D point cloud, draw them as a map."""
from __future__ import annotations

from pathlib import Path

import folder_paths
from comfy_api.latest import io, ui

from ..memory.geometry.camera import CameraPath
from ..memory.files import confined_path
from ..memory.patch_memory.glb import export_glb
from ..memory.patch_memory import PatchMemory, check_memory, load_memory, save_memory
from ..memory.patch_memory.topdown import MAX_MAP_POINTS, top_down_map
from .patch_memory import SUBCATEGORY
from .types import CameraPathType, PatchMemoryType, check_options, check_widgets, output_file

MEMORY_FOLDER = "patch_memories"


def memory_choices() -> list[str]:
    """Memory files under ``input/patch_memories/`` and ``output/patch_memories/``, annotated with their folder."""
    found = []
    for kind, root in (("input", folder_paths.get_input_directory()), ("output", folder_paths.get_output_directory())):
        folder = Path(root) / MEMORY_FOLDER
        if folder.is_dir():
            found += [f"{MEMORY_FOLDER}/{p.relative_to(folder).as_posix()} [{kind}]" for p in folder.rglob("*.safetensors")]
    return sorted(found)


class SavePatchMemory(io.ComfyNode):
    """Save a patch memory to ComfyUI's output folder as .safetensors."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CoMESavePatchMemory",
            display_name="Save Patch Memory (CoME)",
            category=SUBCATEGORY,
            description="Writes the memory atomically as a versioned .safetensors file under output/.",
            is_output_node=True,
            inputs=[
                PatchMemoryType.Input("memory", tooltip="The memory to save."),
                io.String.Input("filename_prefix", default=f"{MEMORY_FOLDER}/memory",
                                tooltip="Name inside the output folder; a counter is appended. No '..' or absolute paths."),
            ],
            outputs=[io.String.Output("path", display_name="path", tooltip="The saved file, relative to the output folder.")],
        )

    @classmethod
    def execute(cls, memory: PatchMemory, filename_prefix: str) -> io.NodeOutput:
        check_memory(memory, "memory")
        path, relative = output_file(filename_prefix, "safetensors")
        save_memory(memory, path)
        return io.NodeOutput(relative, ui={"text": [f"saved {len(memory)} patches to {relative}"]})


class LoadPatchMemory(io.ComfyNode):
    """Load a saved patch memory."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CoMELoadPatchMemory",
            display_name="Load Patch Memory (CoME)",
            category=SUBCATEGORY,
            description="Loads a patch memory .safetensors file from input/patch_memories/ or output/patch_memories/.",
            inputs=[
                io.Combo.Input("memory_file", options=memory_choices(),
                               tooltip="A file written by Save Patch Memory (output) or copied to input/patch_memories/."),
            ],
            outputs=[PatchMemoryType.Output("memory", display_name="memory", tooltip="The loaded memory.")],
        )

    @classmethod
    def execute(cls, memory_file: str) -> io.NodeOutput:
        check_options(cls, memory_file=memory_file)
        name, _, kind = memory_file.rpartition(" [")
        roots = {"input]": folder_paths.get_input_directory(), "output]": folder_paths.get_output_directory()}
        if kind not in roots:
            raise ValueError(f"memory_file: '{memory_file}' must end in ' [input]' or ' [output]'; pick it from the list.")
        return io.NodeOutput(load_memory(confined_path(roots[kind], name, "memory_file")))


class PatchMemoryTo3D(io.ComfyNode):
    """Export the memory as a coloured point cloud (.glb) for ComfyUI's Preview 3D node."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CoMEPatchMemoryTo3D",
            display_name="Patch Memory to 3D File (CoME)",
            category=SUBCATEGORY,
            description="Writes every stored pixel as a coloured point in a .glb file under output/; "
            "connect model_file to Preview 3D to look at the memory.",
            is_output_node=True,
            inputs=[
                PatchMemoryType.Input("memory", tooltip="The memory to export."),
                io.String.Input("filename_prefix", default=f"{MEMORY_FOLDER}/memory",
                                tooltip="Name inside the output folder; a counter and .glb are appended."),
                io.Int.Input("max_points", default=200000, min=1000, max=10000000,
                             tooltip="Points are subsampled evenly above this count to keep the file light."),
            ],
            outputs=[io.String.Output("model_file", display_name="model_file", tooltip="The .glb file relative to the output folder (for Preview 3D).")],
        )

    @classmethod
    def execute(cls, memory: PatchMemory, filename_prefix: str, max_points: int) -> io.NodeOutput:
        check_widgets(cls, max_points=max_points)
        check_memory(memory, "memory", allow_empty=False)
        points, colors, _ = memory.points(max_points=int(max_points))
        if len(points) == 0:
            # glTF needs at least one point (an accessor's count is >= 1), so there is no valid empty file.
            raise ValueError(f"memory: none of its {len(memory)} patches has a pixel with valid depth, so there is "
                             "nothing to export; build the memory from frames with metric depth.")
        path, relative = output_file(filename_prefix, "glb")
        export_glb(points, colors, path, max_points=max_points)
        return io.NodeOutput(relative, ui={"text": [relative]})


class PatchMemoryMap(io.ComfyNode):
    """A top-down map of the memory with camera paths drawn on it."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CoMEPatchMemoryMap",
            display_name="Patch Memory Map (CoME)",
            category=SUBCATEGORY,
            description="Draws the memory seen from above (x right, y up) with camera paths and a metre scale.",
            is_output_node=True,
            inputs=[
                io.Int.Input("size", default=512, min=64, max=4096, step=64, tooltip="Image size in pixels."),
                PatchMemoryType.Input("memory", optional=True, tooltip="The memory to draw (optional)."),
                CameraPathType.Input("camera_path", optional=True, tooltip="A camera path to draw (optional)."),
                CameraPathType.Input("camera_path_2", optional=True, tooltip="A second camera path, e.g. the new route."),
            ],
            outputs=[io.Image.Output("map", display_name="map", tooltip="The top-down map.")],
        )

    @classmethod
    def execute(cls, size: int, memory: PatchMemory | None = None, camera_path: CameraPath | None = None,
                camera_path_2: CameraPath | None = None) -> io.NodeOutput:
        check_widgets(cls, size=size)
        paths = []
        for name, path in (("camera_path", camera_path), ("camera_path_2", camera_path_2)):
            if path is not None and not isinstance(path, CameraPath):
                raise ValueError(f"{name}: expected a camera path, got {type(path).__name__}; connect a camera path output.")
            paths += [] if path is None else [path]
        if memory is not None:
            check_memory(memory, "memory")
        points, colors = (None, None) if memory is None else memory.points(max_points=MAX_MAP_POINTS)[:2]
        image = top_down_map(paths, points=points, colors=colors, size=int(size))[None]
        return io.NodeOutput(image, ui=ui.PreviewImage(image, cls=cls))
