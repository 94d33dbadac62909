"""Build camera paths: a text of moves, keyframes, an orbit, or JSON."""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from comfy_api.latest import io

from ..memory.geometry.camera import CameraPath, require_path
from ..memory.geometry.paths import JSON_NAME, keyframes_from_text, orbit, parse_moves, path_from_json, path_to_json
from .types import CATEGORY, CameraPathType

SUBCATEGORY = f"{CATEGORY}/camera"
DEFAULT_MOVES = "forward 1\nturn_left 90\nforward 1\nturn_right 180\nforward 2"
DEFAULT_KEYFRAMES = "# x y z yaw_deg [pitch_deg]\n0 0 1 0\n1 0 1 45\n2 1 1 90"


def view_inputs() -> list[io.Input]:
    """Image size and field of view, used when no reference camera path is connected."""
    return [
        io.Int.Input("width", default=64, min=8, max=4096, step=8, tooltip="Image width in pixels (multiple of 8)."),
        io.Int.Input("height", default=64, min=8, max=4096, step=8, tooltip="Image height in pixels (multiple of 8)."),
        io.Float.Input("fov_deg", default=80.0, min=10.0, max=150.0, step=1.0,
                       tooltip="Vertical field of view in degrees (Memory Maze uses 80, MiniWorld 60)."),
    ]


def reference_input() -> io.Input:
    """Optional path whose intrinsics and size the new path inherits (and, for moves, whose last pose it starts from)."""
    return CameraPathType.Input(
        "reference", optional=True,
        tooltip="Optional camera path: the new path uses its intrinsics and image size "
        "(overriding width/height/fov), and a text path starts from its last camera.",
    )


# Engine errors start with the name of the parameter at fault; these differ from the widget a user edits.
VIEW_NAMES = {"fovy_deg": "fov_deg"}
ORBIT_NAMES = {**VIEW_NAMES, "center": "center_x/center_y/center_z", "altitude": "camera_height"}


@contextmanager
def named_inputs(names: Mapping[str, str]) -> Iterator[None]:
    """Re-raise a ValueError whose message starts with an engine parameter of ``names`` as naming its node input."""
    try:
        yield
    except ValueError as err:
        message = str(err)
        for engine, widget in names.items():
            # The name must end there ('center: ...', 'camera path JSON (height): ...'), not go on ('center_z').
            if message.startswith(engine) and message[len(engine):len(engine) + 1] in (":", " "):
                raise ValueError(widget + message[len(engine):]) from None
        raise


def view_of(reference: CameraPath | None, width: int, height: int, fov_deg: float) -> dict:
    """Keyword arguments of the view for a path builder: the reference path's K and size if given, else the widgets'."""
    if reference is not None:
        path = require_path(reference, "reference")
        return {"K": path.K, "height": path.height, "width": path.width}
    return {"height": height, "width": width, "fovy_deg": fov_deg}


def built(build: Callable[..., object], names: Mapping[str, str], *args: object, **kwargs: object) -> io.NodeOutput:
    """The node output of an engine call, its errors naming the node's inputs."""
    with named_inputs(names):
        return io.NodeOutput(build(*args, **kwargs))


class CameraPathText(io.ComfyNode):
    """A camera path written as moves: forward/back/strafe metres, turn/look degrees, wait frames."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CoMECameraPathText",
            display_name="Camera Path from Moves (CoME)",
            category=SUBCATEGORY,
            description="One move per line: forward/back/strafe_left/strafe_right/up/down METRES, "
            "turn_left/turn_right/look_up/look_down DEGREES, wait FRAMES; '#' starts a comment.",
            inputs=[
                io.String.Input("moves", multiline=True, default=DEFAULT_MOVES,
                                tooltip="Moves, one per line (or separated by ';'); see the node description."),
                io.Float.Input("step_m", default=0.1, min=0.001, max=10.0, step=0.01,
                               tooltip="Metres travelled per frame by translations."),
                io.Float.Input("step_deg", default=5.0, min=0.1, max=90.0, step=0.5,
                               tooltip="Degrees turned per frame by rotations."),
                *view_inputs(),
                reference_input(),
            ],
            outputs=[CameraPathType.Output("camera_path", display_name="camera_path", tooltip="The camera path.")],
        )

    @classmethod
    def execute(cls, moves: str, step_m: float, step_deg: float, width: int, height: int, fov_deg: float,
                reference: CameraPath | None = None) -> io.NodeOutput:
        view = view_of(reference, width, height, fov_deg)
        start = None if reference is None else reference.c2w[-1]
        return built(parse_moves, VIEW_NAMES, moves, start_c2w=start, step_m=step_m, step_deg=step_deg, **view)


class CameraPathKeyframes(io.ComfyNode):
    """A smooth camera path through keyframes (positions eased, rotations slerped)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CoMECameraPathKeyframes",
            display_name="Camera Path from Keyframes (CoME)",
            category=SUBCATEGORY,
            description="Interpolates keyframes smoothly: one keyframe per line 'x y z yaw_deg [pitch_deg]' "
            "(metres, world z up, yaw 0 looks along +x).",
            inputs=[
                io.String.Input("keyframes", multiline=True, default=DEFAULT_KEYFRAMES,
                                tooltip="One keyframe per line: x y z yaw_deg [pitch_deg]."),
                io.Int.Input("frames_between", default=8, min=1, max=1000,
                             tooltip="Frames generated between consecutive keyframes."),
                *view_inputs(),
                reference_input(),
            ],
            outputs=[CameraPathType.Output("camera_path", display_name="camera_path", tooltip="The camera path.")],
        )

    @classmethod
    def execute(cls, keyframes: str, frames_between: int, width: int, height: int, fov_deg: float,
                reference: CameraPath | None = None) -> io.NodeOutput:
        view = view_of(reference, width, height, fov_deg)
        return built(keyframes_from_text, VIEW_NAMES, keyframes, frames_between, **view)


class CameraPathOrbit(io.ComfyNode):
    """Cameras on a circle around a point, looking at it."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CoMECameraPathOrbit",
            display_name="Camera Path Orbit (CoME)",
            category=SUBCATEGORY,
            description="Cameras on a horizontal circle around a centre point, all looking at it.",
            inputs=[
                io.Float.Input("center_x", default=0.0, min=-1000.0, max=1000.0, step=0.1, tooltip="Orbit centre x (metres)."),
                io.Float.Input("center_y", default=0.0, min=-1000.0, max=1000.0, step=0.1, tooltip="Orbit centre y (metres)."),
                io.Float.Input("center_z", default=0.5, min=-1000.0, max=1000.0, step=0.1, tooltip="Orbit centre z (metres, up)."),
                io.Float.Input("radius", default=1.5, min=0.01, max=1000.0, step=0.1, tooltip="Orbit radius (metres)."),
                io.Float.Input("camera_height", default=0.5, min=-1000.0, max=1000.0, step=0.1,
                               tooltip="Camera height above the centre (metres)."),
                io.Int.Input("frames", default=32, min=1, max=4096, tooltip="Number of cameras."),
                io.Float.Input("start_deg", default=0.0, min=-360.0, max=360.0, step=1.0,
                               tooltip="Angle of the first camera around the centre (0 = on the +x side)."),
                io.Float.Input("sweep_deg", default=360.0, min=-3600.0, max=3600.0, step=1.0,
                               tooltip="Total angle swept (negative = clockwise)."),
                *view_inputs(),
                reference_input(),
            ],
            outputs=[CameraPathType.Output("camera_path", display_name="camera_path", tooltip="The camera path.")],
        )

    @classmethod
    def execute(cls, center_x: float, center_y: float, center_z: float, radius: float, camera_height: float,
                frames: int, start_deg: float, sweep_deg: float, width: int, height: int, fov_deg: float,
                reference: CameraPath | None = None) -> io.NodeOutput:
        view = view_of(reference, width, height, fov_deg)
        return built(orbit, ORBIT_NAMES, (center_x, center_y, center_z), radius, camera_height, frames,
                     start_deg=start_deg, sweep_deg=sweep_deg, **view)


class CameraPathFromJSON(io.ComfyNode):
    """Import a camera path from its JSON form."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CoMECameraPathFromJSON",
            display_name="Camera Path from JSON (CoME)",
            category=SUBCATEGORY,
            description="Reads a 'come-camera-path/1' JSON document (as written by Camera Path to JSON).",
            inputs=[io.String.Input("json", multiline=True, default="",
                                    tooltip="The JSON text of a camera path (format come-camera-path/1).")],
            outputs=[CameraPathType.Output("camera_path", display_name="camera_path", tooltip="The camera path.")],
        )

    @classmethod
    def execute(cls, json: str) -> io.NodeOutput:
        return built(path_from_json, {JSON_NAME: "json"}, json)


class CameraPathToJSON(io.ComfyNode):
    """Export a camera path as JSON text."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CoMECameraPathToJSON",
            display_name="Camera Path to JSON (CoME)",
            category=SUBCATEGORY,
            description="Writes a camera path as 'come-camera-path/1' JSON text, e.g. to save or share it.",
            inputs=[CameraPathType.Input("camera_path", tooltip="The camera path to export.")],
            outputs=[io.String.Output("json", display_name="json", tooltip="The JSON text.")],
        )

    @classmethod
    def execute(cls, camera_path: CameraPath) -> io.NodeOutput:
        return built(path_to_json, {"path": "camera_path"}, camera_path)
