"""Load a recorded camera episode (frames, depth, cameras)."""
from __future__ import annotations

from pathlib import Path

import folder_paths
from comfy_api.latest import io

from ..memory.geometry.depth import DepthMaps, depth_to_image
from ..memory.data.episode import SAMPLE_EPISODE, read_episode
from ..memory.files import confined_path
from .types import CATEGORY, CameraPathType, DepthType, check_options

EPISODE_FOLDER = "episodes"


def episode_choices() -> list[str]:
    """The embedded sample episode, then every ``.safetensors`` under ComfyUI's ``input/episodes/``."""
    folder = Path(folder_paths.get_input_directory()) / EPISODE_FOLDER
    found = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.safetensors")) if folder.is_dir() else []
    return [SAMPLE_EPISODE.name] + [f"{EPISODE_FOLDER}/{name}" for name in found]


def resolve_episode(name: str) -> Path:
    """The file behind a choice of :func:`episode_choices`, confined to ComfyUI's input folder."""
    if name == SAMPLE_EPISODE.name:
        return SAMPLE_EPISODE
    return confined_path(folder_paths.get_input_directory(), name, "episode")


class LoadEpisode(io.ComfyNode):
    """Load a ``come-episode/1`` file: frames, depth and the recorded cameras."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CoMELoadEpisode",
            display_name="Load Episode (CoME)",
            category=f"{CATEGORY}/episode",
            description="Loads a recorded camera episode (frames + metric depth + exact cameras). "
            "Put your own files in ComfyUI's input/episodes/ folder.",
            inputs=[
                io.Combo.Input("episode", options=episode_choices(),
                               tooltip="Episode file: the embedded Memory Maze sample, or a come-episode/1 "
                               ".safetensors file from input/episodes/."),
            ],
            outputs=[
                io.Image.Output("frames", display_name="frames", tooltip="All frames of the episode as an IMAGE batch."),
                io.Image.Output("depth", display_name="depth", tooltip="Depth for display (inverse depth, white = near)."),
                CameraPathType.Output("camera_path", display_name="camera_path", tooltip="The recorded cameras (poses, intrinsics, size)."),
                DepthType.Output("metric_depth", display_name="metric_depth", tooltip="Metric z-depth in metres, for building a patch memory."),
                io.Int.Output("context_frames", display_name="context_frames", tooltip="How many leading frames are observed history."),
            ],
        )

    @classmethod
    def execute(cls, episode: str) -> io.NodeOutput:
        check_options(cls, episode=episode)
        ep = read_episode(resolve_episode(episode))
        frames = ep.rgb.float() / 255.0
        return io.NodeOutput(frames, depth_to_image(ep.depth), ep.cameras, DepthMaps(ep.depth), ep.context_frames)
