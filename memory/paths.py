"""Camera-path builders: a text grammar of moves, smooth keyframes, orbits, JSON files.

Every builder returns a :class:`~memory.camera.CameraPath` (z-up world in metres, OpenCV camera axes).
Unless ``K`` is given, intrinsics come from ``height``, ``width`` and ``fovy_deg``.

Move grammar (``parse_moves``)
------------------------------
A program is a list of commands ``VERB AMOUNT``, one per line or separated by ``;`` or ``,``.
``#`` starts a comment that runs to the end of the line; blank lines are ignored; verbs are
case-insensitive; amounts are non-negative decimal numbers::

    forward 2        # metres along the heading, horizontally (pitch does not make the camera fly;
                     # a camera looking straight down walks towards the top of its image)
    back 1.5         # metres, opposite to the heading
    strafe_left 1    # metres to the camera's left, horizontally
    strafe_right 1   # metres to the camera's right, horizontally
    up 0.5           # metres along world +z
    down 0.5         # metres along world -z
    turn_left 90     # degrees of yaw about world +z (counter-clockwise seen from above)
    turn_right 45    # degrees of yaw about world -z
    look_up 10       # degrees of pitch (the pitch stays within [-90, 90])
    look_down 10     # degrees of pitch
    wait 5           # frames holding the current pose (a whole number)

The first frame is the start pose (``start_c2w``, default: at the origin looking along +x, level;
any roll of a given start pose is kept).
Each command appends ``ceil(amount / step)`` frames that split it into equal steps, with
``step = step_m`` for moves and ``step_deg`` for turns and looks, so no frame moves or turns
further than one step and the speed is uniform across commands. ``forward 1`` with
``step_m=0.1`` therefore adds 10 frames (11 with the start). An amount of 0 adds no frame.

Keyframe text (``keyframes_from_text``)
---------------------------------------
One keyframe per line (or separated by ``;``): ``x y z yaw_deg [pitch_deg]`` in metres and degrees
(yaw 0 looks along +x, counter-clockwise from above; pitch defaults to 0); ``#`` starts a comment::

    0 0 1 0
    1 0 1 45
    2 1 1 90 -10

JSON schema (``path_to_json`` / ``path_from_json``)
---------------------------------------------------
::

    {"format": "come-camera-path/1",
     "height": 64, "width": 64,                       # image size in pixels
     "K": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]],       # pixel intrinsics, pixel centres at +0.5
     "c2w": [[[r, r, r, x], [r, r, r, y], [r, r, r, z], [0, 0, 0, 1]], ...]}   # T >= 1 poses
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from kornia.geometry.conversions import axis_angle_to_rotation_matrix
from kornia.geometry.quaternion import Quaternion

from .camera import CameraPath, intrinsics_from_fov, look_rotation, pitch_of, pose_matrix, validate_cameras

PATH_FORMAT = "come-camera-path/1"
# Consecutive keyframes a half turn apart have two equally short slerp arcs; refuse them well before.
MAX_KEYFRAME_TURN_DEG = 179.0


@dataclass(frozen=True)
class _Verb:
    """How one move verb changes the state: ``kind`` is move/turn/look/wait, ``sign`` its direction."""

    kind: str
    sign: float
    axis: str = ""


_VERBS: dict[str, _Verb] = {
    "forward": _Verb("move", 1.0, "heading"),
    "back": _Verb("move", -1.0, "heading"),
    "strafe_left": _Verb("move", -1.0, "right"),
    "strafe_right": _Verb("move", 1.0, "right"),
    "up": _Verb("move", 1.0, "z"),
    "down": _Verb("move", -1.0, "z"),
    "turn_left": _Verb("turn", 1.0),
    "turn_right": _Verb("turn", -1.0),
    "look_up": _Verb("look", 1.0),
    "look_down": _Verb("look", -1.0),
    "wait": _Verb("wait", 1.0),
}
_VERB_HELP = (
    "valid verbs: " + ", ".join(_VERBS) + " (e.g. 'forward 2', 'turn_left 90', 'wait 5'; "
    "one command per line or separated by ';' or ',')"
)


def _intrinsics(K: torch.Tensor | None, height: int, width: int, fovy_deg: float) -> torch.Tensor:
    """The given ``K`` as float32, or a centred pinhole from the vertical field of view."""
    if K is not None:
        return torch.as_tensor(K, dtype=torch.float32)
    if not 0.0 < fovy_deg < 180.0:
        raise ValueError(f"fovy_deg: must be in (0, 180) degrees, got {fovy_deg}; use e.g. 80 (Memory Maze) or 60.")
    return intrinsics_from_fov(height, width, fovy_deg)


def _as_points(value: torch.Tensor | Sequence, name: str) -> torch.Tensor:
    """``value`` as a float64 tensor [...,3] with finite entries, or a ValueError naming ``name``."""
    try:
        t = torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name}: expected numbers of shape [...,3], could not read it ({err}).") from err
    if t.ndim == 0 or t.shape[-1] != 3:
        raise ValueError(f"{name}: expected shape [3] or [N,3], got {list(t.shape)}.")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: contains NaN or inf; give finite coordinates in metres.")
    return t


def look_at(eye: torch.Tensor | Sequence, target: torch.Tensor | Sequence) -> torch.Tensor:
    """Level (roll-free) camera-to-world poses [T,4,4] at ``eye`` [T,3] or [3] looking at ``target`` [T,3] or [3]."""
    eye_t = _as_points(eye, "eye").reshape(-1, 3)
    target_t = _as_points(target, "target").reshape(-1, 3)
    eye_t, target_t = torch.broadcast_tensors(eye_t, target_t)
    d = target_t - eye_t
    if (d.norm(dim=-1) < 1e-9).any():
        raise ValueError("look_at: eye and target coincide for some camera; move the target away from the eye.")
    # Yaw and pitch of the viewing ray reuse the roll-free rotation of camera.py; straight up/down gets yaw 0.
    yaw = torch.atan2(d[:, 1], d[:, 0])
    pitch = torch.atan2(d[:, 2], d[:, :2].norm(dim=-1))
    return pose_matrix(look_rotation(yaw.float(), pitch.float()), eye_t.float())


def _start_pose(start_c2w: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Position [3] and rotation [3,3] (float64) of the start pose; the default is the origin looking along +x, level."""
    if start_c2w is None:
        return torch.zeros(3, dtype=torch.float64), look_rotation(torch.zeros(1))[0].double()
    pose = torch.as_tensor(start_c2w, dtype=torch.float32)
    if pose.shape == (1, 4, 4):
        pose = pose[0]
    if pose.shape != (4, 4):
        raise ValueError(f"start_c2w: expected a [4,4] (or [1,4,4]) camera-to-world matrix, got {list(pose.shape)}.")
    validate_cameras(pose[None], torch.eye(3), "start_c2w")
    return pose[:3, 3].double(), pose[:3, :3].double()


def _heading(rotation: torch.Tensor) -> tuple[float, float]:
    """Unit ground-plane direction (x, y) a camera walks along: its optical axis, or its image-up axis when vertical."""
    forward, up = rotation[:, 2], -rotation[:, 1]
    axis = forward if math.hypot(float(forward[0]), float(forward[1])) > 1e-6 else up
    length = math.hypot(float(axis[0]), float(axis[1]))
    return float(axis[0]) / length, float(axis[1]) / length


def _commands(text: str) -> list[tuple[int, str]]:
    """(line number, command text) pairs of a move program, comments and blanks removed."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        for part in re.split(r"[;,]", line.split("#", 1)[0]):
            if part.strip():
                found.append((number, part.strip()))
    return found


def _parse_command(number: int, command: str) -> tuple[_Verb, float]:
    """The verb and the amount of one command, or a ValueError naming the line."""
    where = f"moves line {number}: '{command}'"
    tokens = command.split()
    name = tokens[0].lower()
    if name not in _VERBS:
        raise ValueError(f"{where}: unknown verb '{tokens[0]}'; {_VERB_HELP}.")
    if len(tokens) != 2:
        problem = "is missing its amount" if len(tokens) == 1 else "has more than one amount"
        raise ValueError(f"{where}: '{name}' {problem}; write one number after the verb, e.g. '{name} 1'; {_VERB_HELP}.")
    try:
        amount = float(tokens[1])
    except ValueError:
        raise ValueError(f"{where}: '{tokens[1]}' is not a number; write e.g. '{name} 1'.") from None
    if not math.isfinite(amount):
        raise ValueError(f"{where}: the amount must be a finite number, got {tokens[1]}; write e.g. '{name} 1'.")
    if amount < 0:
        raise ValueError(
            f"{where}: the amount must be >= 0, got {tokens[1]}; "
            "use the opposite verb to go the other way (e.g. 'back 1' instead of 'forward -1')."
        )
    if _VERBS[name].kind == "wait" and amount != int(amount):
        raise ValueError(f"{where}: 'wait' takes a whole number of frames, got {tokens[1]}.")
    return _VERBS[name], amount


def parse_moves(
    text: str, start_c2w: torch.Tensor | None = None, K: torch.Tensor | None = None,
    height: int = 64, width: int = 64, fovy_deg: float = 80.0, step_m: float = 0.1, step_deg: float = 5.0,
) -> CameraPath:
    """Camera path of a move program (grammar in the module docstring) at a uniform speed per frame."""
    if not (step_m > 0 and step_deg > 0 and math.isfinite(step_m) and math.isfinite(step_deg)):
        raise ValueError(f"step_m and step_deg must be positive, got step_m={step_m}, step_deg={step_deg}.")
    commands = _commands(text or "")
    if not commands:
        raise ValueError(f"moves: the program has no commands; write at least one, e.g. 'forward 1'; {_VERB_HELP}.")
    position, rotation = _start_pose(start_c2w)
    tilt = math.degrees(float(pitch_of(rotation[None])[0]))
    positions, rotations = [position], [rotation]
    for number, command in commands:
        verb, amount = _parse_command(number, command)
        if verb.kind == "wait":
            steps = int(amount)
        else:
            step = step_m if verb.kind == "move" else step_deg
            steps = math.ceil(amount / step - 1e-9) if amount > 0 else 0
        if verb.kind == "look":
            tilt += verb.sign * amount
            if abs(tilt) > 90.0 + 1e-6:
                raise ValueError(
                    f"moves line {number}: '{command}' would tilt the camera to {tilt:.1f} deg; "
                    "keep the pitch within [-90, 90]."
                )
        delta = verb.sign * amount / steps if steps else 0.0
        hx, hy = _heading(rotation)
        offset = delta * torch.tensor(
            {"heading": (hx, hy, 0.0), "right": (hy, -hx, 0.0), "z": (0.0, 0.0, 1.0), "": (0.0, 0.0, 0.0)}[verb.axis],
            dtype=torch.float64,
        )
        # Turns spin about world +z (left product) and looks tilt about the camera's own x axis (right product),
        # which keeps any roll of the start pose and, for a level start, equals look_rotation(yaw, pitch).
        axis = torch.tensor([[0.0, 0.0, 1.0] if verb.kind == "turn" else [1.0, 0.0, 0.0]], dtype=torch.float64)
        spin = axis_angle_to_rotation_matrix(axis * math.radians(delta))[0]
        for _ in range(steps):
            position = position + offset
            rotation = spin @ rotation if verb.kind == "turn" else rotation @ spin if verb.kind == "look" else rotation
            positions.append(position)
            rotations.append(rotation)
    c2w = pose_matrix(torch.stack(rotations).float(), torch.stack(positions).float())
    return CameraPath(c2w, _intrinsics(K, height, width, fovy_deg), height, width)


def _slerp(rotations: torch.Tensor, segment: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Rotations [M,3,3] spherically interpolated between ``rotations[segment]`` and ``rotations[segment+1]`` at ``t`` [M]."""
    q = Quaternion.from_matrix(rotations.float()).data
    q0, q1 = Quaternion(q[segment]), Quaternion(q[segment + 1])
    return q0.slerp(q1, t.float()).matrix()


def _catmull_rom(points: torch.Tensor, segment: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Positions [M,3] on the uniform Catmull-Rom spline through ``points`` [N,3] at (segment, t) pairs."""
    # Reflected end points keep the spline straight at both ends; straight evenly spaced keys give uniform motion.
    padded = torch.cat([2 * points[:1] - points[1:2], points, 2 * points[-1:] - points[-2:-1]])
    p0, p1, p2, p3 = (padded[segment + k] for k in range(4))
    t = t[:, None]
    return 0.5 * (
        2 * p1 + (p2 - p0) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t**2 + (3 * p1 - p0 - 3 * p2 + p3) * t**3
    )


def _angles(value: torch.Tensor | Sequence, count: int, name: str) -> torch.Tensor:
    """Finite angles [count] in degrees as float64, or a ValueError naming ``name``."""
    t = torch.as_tensor(value, dtype=torch.float64).reshape(-1)
    if t.shape[0] != count:
        raise ValueError(f"{name}: expected {count} angles (one per keyframe), got {t.shape[0]}.")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name}: contains NaN or inf; give finite angles in degrees.")
    return t


def keyframes(
    positions: torch.Tensor | Sequence, yaws_deg: torch.Tensor | Sequence,
    pitches_deg: torch.Tensor | Sequence | None = None, frames_between: int = 10,
    K: torch.Tensor | None = None, height: int = 64, width: int = 64, fovy_deg: float = 80.0,
) -> CameraPath:
    """Smooth path through keyframes: Catmull-Rom positions, slerped rotations, ``frames_between`` frames per gap.

    Keyframe i lands on frame ``i * (frames_between + 1)``; the path has ``N + (N-1) * frames_between``
    frames. Rotations take the shorter arc, so consecutive keyframes must differ by less than 179 deg.
    """
    keys = _as_points(positions, "positions").reshape(-1, 3)
    n = keys.shape[0]
    yaws = _angles(yaws_deg, n, "yaws_deg")
    pitches = torch.zeros_like(yaws) if pitches_deg is None else _angles(pitches_deg, n, "pitches_deg")
    if (pitches.abs() > 90).any():
        raise ValueError(f"pitches_deg: every pitch must be within [-90, 90] degrees, got {pitches.tolist()}.")
    if isinstance(frames_between, bool) or int(frames_between) != frames_between or frames_between < 0:
        raise ValueError(f"frames_between: must be a whole number >= 0, got {frames_between}.")
    rotations = look_rotation(torch.deg2rad(yaws), torch.deg2rad(pitches))
    if n == 1:
        return CameraPath(pose_matrix(rotations, keys.float()), _intrinsics(K, height, width, fovy_deg), height, width)
    relative = rotations[:-1].transpose(1, 2).double() @ rotations[1:].double()
    turn = torch.rad2deg(torch.arccos(((relative.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1)))
    if (turn > MAX_KEYFRAME_TURN_DEG).any():
        gap = int(torch.nonzero(turn > MAX_KEYFRAME_TURN_DEG)[0])
        raise ValueError(
            f"keyframes {gap} and {gap + 1} differ by a {float(turn[gap]):.1f} deg turn, an ambiguous direction; "
            "insert an intermediate keyframe so each turn is below 179 deg."
        )
    per_gap = int(frames_between) + 1
    frame = torch.arange((n - 1) * per_gap + 1)
    segment = (frame // per_gap).clamp(max=n - 2)
    t = (frame - segment * per_gap).double() / per_gap
    c2w = pose_matrix(_slerp(rotations, segment, t), _catmull_rom(keys, segment, t).float())
    return CameraPath(c2w, _intrinsics(K, height, width, fovy_deg), height, width)


def keyframes_from_text(
    text: str, frames_between: int = 10, K: torch.Tensor | None = None,
    height: int = 64, width: int = 64, fovy_deg: float = 80.0,
) -> CameraPath:
    """:func:`keyframes` from text: one keyframe ``x y z yaw_deg [pitch_deg]`` per line (or per ';'), '#' comments."""
    rows = []
    for number, line in enumerate((text or "").splitlines(), start=1):
        for part in line.split("#", 1)[0].split(";"):
            tokens = part.replace(",", " ").split()
            if not tokens:
                continue
            try:
                values = [float(token) for token in tokens]
            except ValueError:
                values = []
            if len(values) not in (4, 5):
                raise ValueError(
                    f"keyframes line {number}: '{part.strip()}' is not a keyframe; write 4 or 5 numbers "
                    "'x y z yaw_deg [pitch_deg]' (metres, degrees), e.g. '0 0 1 90'."
                )
            rows.append(values + [0.0] * (5 - len(values)))
    if not rows:
        raise ValueError("keyframes: no keyframes in the text; write one per line as 'x y z yaw_deg [pitch_deg]'.")
    table = torch.tensor(rows, dtype=torch.float64)
    return keyframes(table[:, :3], table[:, 3], table[:, 4], frames_between, K=K, height=height, width=width, fovy_deg=fovy_deg)


def orbit(
    center: torch.Tensor | Sequence, radius: float, altitude: float, frames: int,
    start_deg: float = 0.0, sweep_deg: float = 360.0, look_at_center: bool = True, pitch_deg: float = 0.0,
    K: torch.Tensor | None = None, height: int = 64, width: int = 64, fovy_deg: float = 80.0,
) -> CameraPath:
    """Cameras on a circle of ``radius`` at ``altitude`` metres above ``center``, from ``start_deg`` over ``sweep_deg``.

    The angle is measured counter-clockwise from +x seen from above; the first and last frames sit at
    ``start_deg`` and ``start_deg + sweep_deg`` (a full turn ends where it started, a revisit). Cameras
    look at ``center``, or along the direction of travel tilted by ``pitch_deg`` when ``look_at_center``
    is False.
    """
    middle = _as_points(center, "center").reshape(3)
    if not radius > 0 or not math.isfinite(radius):
        raise ValueError(f"radius: must be a positive number of metres, got {radius}.")
    if isinstance(frames, bool) or int(frames) != frames or frames < 1:
        raise ValueError(f"frames: must be a whole number >= 1, got {frames}.")
    fraction = torch.linspace(0.0, 1.0, int(frames), dtype=torch.float64) if frames > 1 else torch.zeros(1, dtype=torch.float64)
    angle = torch.deg2rad(start_deg + sweep_deg * fraction)
    eye = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle), torch.full_like(angle, altitude)], -1)
    eye = eye + middle
    if look_at_center:
        c2w = look_at(eye, middle)
    else:
        heading = angle + math.copysign(math.pi / 2, sweep_deg)
        rotation = look_rotation(heading, torch.full_like(heading, math.radians(pitch_deg)))
        c2w = pose_matrix(rotation, eye.float())
    return CameraPath(c2w, _intrinsics(K, height, width, fovy_deg), height, width)


def resample(path: CameraPath, frames: int) -> CameraPath:
    """``path`` re-timed to ``frames`` cameras evenly spaced in time (linear positions, slerped rotations)."""
    if isinstance(frames, bool) or int(frames) != frames or frames < 1:
        raise ValueError(f"frames: must be a whole number >= 1, got {frames}.")
    if len(path) == 1 or frames == 1:
        return CameraPath(path.c2w[:1].expand(int(frames), 4, 4).clone(), path.K, path.height, path.width)
    time = torch.linspace(0.0, len(path) - 1, int(frames), dtype=torch.float64)
    segment = time.floor().long().clamp(max=len(path) - 2)
    t = time - segment
    start, stop = path.positions[segment].double(), path.positions[segment + 1].double()
    position = start + (stop - start) * t[:, None]
    return CameraPath(pose_matrix(_slerp(path.c2w[:, :3, :3], segment, t), position.float()), path.K, path.height, path.width)


def path_to_json(path: CameraPath) -> str:
    """The path as ``come-camera-path/1`` JSON text (float32 values round-trip exactly)."""
    return json.dumps({
        "format": PATH_FORMAT, "height": path.height, "width": path.width,
        "K": path.K.float().tolist(), "c2w": path.c2w.float().tolist(),
    })


def _json_tensor(data: dict, key: str, shape: str) -> torch.Tensor:
    """Field ``key`` as a float32 tensor, or a ValueError saying the expected ``shape``."""
    try:
        return torch.tensor(data[key], dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"camera path JSON: '{key}' must be a nested list of numbers of shape {shape}.") from None


def path_from_json(text: str) -> CameraPath:
    """A CameraPath from ``come-camera-path/1`` JSON text, with clear errors on bad input."""
    try:
        data = json.loads(text)
    except (json.JSONDecodeError, TypeError) as err:
        raise ValueError(f"camera path JSON: not valid JSON ({err}); give the text written by path_to_json.") from None
    if not isinstance(data, dict):
        raise ValueError(f"camera path JSON: expected an object {{...}}, got {type(data).__name__}.")
    if data.get("format") != PATH_FORMAT:
        raise ValueError(
            f"camera path JSON: 'format' must be '{PATH_FORMAT}', got {data.get('format')!r}; "
            "write the file with memory.paths.path_to_json."
        )
    missing = [key for key in ("height", "width", "K", "c2w") if key not in data]
    if missing:
        raise ValueError(f"camera path JSON: missing key(s) {missing}; expected format, height, width, K and c2w.")
    for key in ("height", "width"):
        if isinstance(data[key], bool) or not isinstance(data[key], int) or data[key] <= 0:
            raise ValueError(f"camera path JSON: '{key}' must be a positive whole number of pixels, got {data[key]!r}.")
    K = _json_tensor(data, "K", "[3,3]")
    c2w = _json_tensor(data, "c2w", "[T,4,4]")
    if c2w.ndim != 3 or c2w.shape[0] == 0 or tuple(c2w.shape[1:]) != (4, 4):
        raise ValueError(f"camera path JSON: 'c2w' must have shape [T,4,4] with T >= 1, got {list(c2w.shape)}.")
    try:
        return CameraPath(c2w, K, data["height"], data["width"])
    except ValueError as err:
        raise ValueError(f"camera path JSON: {err}") from None
