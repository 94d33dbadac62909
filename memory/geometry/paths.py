"""Camera-path builders: a text grammar of moves, smooth keyframes, orbits, JSON files.

Every builder returns a :class:`~memory.geometry.camera.CameraPath` (z-up world in metres, OpenCV camera axes).
Unless ``K`` is given, intrinsics come from ``height``, ``width`` and ``fovy_deg``.

Move grammar (``parse_moves``)
------------------------------
A program is a list of commands ``VERB AMOUNT``, one per line or separated by ``;`` or ``,``.
``#`` starts a comment that runs to the end of the line; blank lines are ignored; verbs are
case-insensitive; amounts are non-negative plain decimal numbers in ASCII digits, with an optional
exponent (``2``, ``0.5``, ``.5``, ``1e3``; not ``1_0``, ``inf``, ``nan``, ``0x10`` or non-ASCII digits)::

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
A program is refused before any frame is made if it is longer than ``MAX_TEXT_CHARS`` characters,
has more than ``MAX_COMMANDS`` commands or would make more than ``MAX_PATH_FRAMES`` frames
(``memory/limits.py``).

Keyframe text (``keyframes_from_text``)
---------------------------------------
One keyframe per line (or separated by ``;``): ``x y z yaw_deg [pitch_deg]`` in metres and degrees
(yaw 0 looks along +x, counter-clockwise from above; pitch defaults to 0); ``#`` starts a comment;
numbers follow the move grammar, signs allowed; at most ``MAX_COMMANDS`` keyframes, coordinates within
``MAX_COORDINATE_M`` and yaws within ``MAX_ANGLE_DEG``::

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

Sizes are JSON integers, every K and c2w entry a JSON number (not ``true``, ``NaN`` or ``Infinity``)
that fits float32; the document's length and nesting are checked before it is parsed.
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

from .camera import (
    CameraPath, check_number, check_path, check_pinhole, check_positions, check_size, intrinsics_from_fov,
    look_rotation, pitch_of, pose_matrix, require_path, validate_cameras,
)
from ..limits import MAX_ANGLE_DEG, MAX_COMMANDS, MAX_COORDINATE_M, MAX_PATH_FRAMES, MAX_TEXT_CHARS, check_count, parse_json

PATH_FORMAT = "come-camera-path/1"
JSON_NAME = "camera path JSON"  # how errors about a JSON document name it; nodes put their input's name instead
# Consecutive keyframes a half turn apart have two equally short slerp arcs; refuse them well before.
MAX_KEYFRAME_TURN_DEG = 179.0
_KEYFRAME_FIELDS = ("x", "y", "z", "yaw_deg", "pitch_deg")
_KEYFRAME_LIMITS = (MAX_COORDINATE_M, MAX_COORDINATE_M, MAX_COORDINATE_M, MAX_ANGLE_DEG, 90.0)
# Plain ASCII decimals only: float() also takes '1_0', 'inf', 'nan' and non-ASCII digits, none of which a path needs.
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


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
    """The given pinhole ``K`` as float32, or a centred pinhole of the vertical field of view; size checked first."""
    check_size(height, width, "image size")
    if K is not None:
        K = torch.as_tensor(K, dtype=torch.float32)
        check_pinhole(K, height, width, "K")
        return K
    check_number(fovy_deg, "fovy_deg", 0.0, 180.0, open_interval=True)
    return intrinsics_from_fov(height, width, fovy_deg)


def _text(text: str | None, name: str) -> str:
    """``text`` (None counts as empty) if it is a string of at most ``MAX_TEXT_CHARS``, else a ValueError."""
    if text is None:
        return ""
    if not isinstance(text, str):
        raise ValueError(f"{name}: expected text, got {type(text).__name__}.")
    if len(text) > MAX_TEXT_CHARS:
        raise ValueError(f"{name}: {len(text)} characters is more than the limit of {MAX_TEXT_CHARS}; "
                         "write a shorter text.")
    return text


def _number(token: str) -> float | None:
    """``token`` as a float if it is a plain ASCII decimal number (optional sign and exponent), else None."""
    return float(token) if _NUMBER.fullmatch(token) else None


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
    """(line number, command text) pairs of a move program, comments and blanks removed, at most ``MAX_COMMANDS``."""
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        for part in re.split(r"[;,]", line.split("#", 1)[0]):
            if part.strip():
                if len(found) == MAX_COMMANDS:
                    raise ValueError(f"moves line {number}: more than the limit of {MAX_COMMANDS} commands; "
                                     "merge repeated moves (e.g. 'forward 2' for 'forward 1; forward 1').")
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
    amount = _number(tokens[1])
    if amount is None:
        raise ValueError(f"{where}: '{tokens[1]}' is not a number; write a plain finite number in ASCII digits, "
                         f"e.g. '{name} 1', '{name} 0.5' or '{name} 1e3'.")
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


def _plan(commands: list[tuple[int, str]], tilt: float, step_m: float, step_deg: float) -> list[tuple[_Verb, float, int]]:
    """Verb, amount and frame count of every command, with the pitch range and the frame limit checked before any frame."""
    plan, frames = [], 1
    for number, command in commands:
        verb, amount = _parse_command(number, command)
        exact = amount if verb.kind == "wait" else amount / (step_m if verb.kind == "move" else step_deg)
        # frames is a whole number, so frames + exact <= the limit also bounds frames + ceil(exact) below.
        if frames + exact > MAX_PATH_FRAMES:
            raise ValueError(
                f"moves line {number}: '{command}' would make the path about {frames + exact:.3g} frames long, more than "
                f"the limit of {MAX_PATH_FRAMES}; use shorter moves or a larger step_m or step_deg."
            )
        steps = int(amount) if verb.kind == "wait" else math.ceil(exact - 1e-9) if amount > 0 else 0
        frames += steps
        if verb.kind == "look":
            tilt += verb.sign * amount
            if abs(tilt) > 90.0 + 1e-6:
                raise ValueError(
                    f"moves line {number}: '{command}' would tilt the camera to {tilt:.1f} deg; "
                    "keep the pitch within [-90, 90]."
                )
        plan.append((verb, amount, steps))
    return plan


def parse_moves(
    text: str, start_c2w: torch.Tensor | None = None, K: torch.Tensor | None = None,
    height: int = 64, width: int = 64, fovy_deg: float = 80.0, step_m: float = 0.1, step_deg: float = 5.0,
) -> CameraPath:
    """Camera path of a move program (grammar in the module docstring) at a uniform speed per frame."""
    check_number(step_m, "step_m", 0.0, MAX_COORDINATE_M, open_interval=True)
    check_number(step_deg, "step_deg", 0.0, 360.0, open_interval=True)  # a full turn per frame shows no motion
    commands = _commands(_text(text, "moves"))
    if not commands:
        raise ValueError(f"moves: the program has no commands; write at least one, e.g. 'forward 1'; {_VERB_HELP}.")
    position, rotation = _start_pose(start_c2w)
    plan = _plan(commands, math.degrees(float(pitch_of(rotation[None])[0])), step_m, step_deg)
    K = _intrinsics(K, height, width, fovy_deg)
    positions, rotations = [position], [rotation]
    for verb, amount, steps in plan:
        if not steps:
            continue  # an amount of 0 adds no frame and changes nothing
        delta = verb.sign * amount / steps
        hx, hy = _heading(rotation)
        offset = delta * torch.tensor(
            {"heading": (hx, hy, 0.0), "right": (hy, -hx, 0.0), "z": (0.0, 0.0, 1.0), "": (0.0, 0.0, 0.0)}[verb.axis],
            dtype=torch.float64,
        )
        # Turns spin about world +z (left product) and looks tilt about the camera's own x axis (right product),
        # which keeps any roll of the start pose and, for a level start, equals look_rotation(yaw, pitch).
        if verb.kind in ("turn", "look"):
            axis = torch.tensor([[0.0, 0.0, 1.0] if verb.kind == "turn" else [1.0, 0.0, 0.0]], dtype=torch.float64)
            spin = axis_angle_to_rotation_matrix(axis * math.radians(delta))[0]
        for _ in range(steps):
            position = position + offset
            rotation = spin @ rotation if verb.kind == "turn" else rotation @ spin if verb.kind == "look" else rotation
            positions.append(position)
            rotations.append(rotation)
    check_positions(torch.stack(positions), "moves")
    c2w = pose_matrix(torch.stack(rotations).float(), torch.stack(positions).float())
    return CameraPath(c2w, K, height, width)


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
    if (t.abs() > MAX_ANGLE_DEG).any():
        raise ValueError(f"{name}: angles must lie within ±{MAX_ANGLE_DEG:g} degrees, got {float(t.abs().max()):.4g}.")
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
    if n == 0:
        raise ValueError("positions: no keyframes; give at least one position [x, y, z].")
    check_positions(keys, "positions")
    yaws = _angles(yaws_deg, n, "yaws_deg")
    pitches = torch.zeros_like(yaws) if pitches_deg is None else _angles(pitches_deg, n, "pitches_deg")
    if (pitches.abs() > 90).any():
        raise ValueError(f"pitches_deg: every pitch must be within [-90, 90] degrees, got {pitches.tolist()}.")
    frames_between = check_count(frames_between, "frames_between", 0, MAX_PATH_FRAMES - 1, "frames")
    per_gap = frames_between + 1
    if (n - 1) * per_gap + 1 > MAX_PATH_FRAMES:
        raise ValueError(
            f"frames_between: {n} keyframes with {frames_between} frames between each make {(n - 1) * per_gap + 1} "
            f"frames, more than the limit of {MAX_PATH_FRAMES}; lower frames_between or use fewer keyframes."
        )
    K = _intrinsics(K, height, width, fovy_deg)
    rotations = look_rotation(torch.deg2rad(yaws), torch.deg2rad(pitches))
    if n == 1:
        return CameraPath(pose_matrix(rotations, keys.float()), K, height, width)
    relative = rotations[:-1].transpose(1, 2).double() @ rotations[1:].double()
    turn = torch.rad2deg(torch.arccos(((relative.diagonal(dim1=1, dim2=2).sum(-1) - 1) / 2).clamp(-1, 1)))
    if (turn > MAX_KEYFRAME_TURN_DEG).any():
        gap = int(torch.nonzero(turn > MAX_KEYFRAME_TURN_DEG)[0])
        raise ValueError(
            f"keyframes {gap} and {gap + 1} differ by a {float(turn[gap]):.1f} deg turn, an ambiguous direction; "
            "insert an intermediate keyframe so each turn is below 179 deg."
        )
    frame = torch.arange((n - 1) * per_gap + 1)
    segment = (frame // per_gap).clamp(max=n - 2)
    t = (frame - segment * per_gap).double() / per_gap
    curve = _catmull_rom(keys, segment, t)
    check_positions(curve, "keyframes")  # the spline may swing past keyframes near the limit
    return CameraPath(pose_matrix(_slerp(rotations, segment, t), curve.float()), K, height, width)


def keyframes_from_text(
    text: str, frames_between: int = 10, K: torch.Tensor | None = None,
    height: int = 64, width: int = 64, fovy_deg: float = 80.0,
) -> CameraPath:
    """:func:`keyframes` from text: one keyframe ``x y z yaw_deg [pitch_deg]`` per line (or per ';'), '#' comments."""
    rows = []
    for number, line in enumerate(_text(text, "keyframes").splitlines(), start=1):
        for part in line.split("#", 1)[0].split(";"):
            tokens = part.replace(",", " ").split()
            if not tokens:
                continue
            values = [_number(token) for token in tokens]
            if len(values) not in (4, 5) or None in values:
                raise ValueError(
                    f"keyframes line {number}: '{part.strip()}' is not a keyframe; write 4 or 5 plain numbers "
                    "'x y z yaw_deg [pitch_deg]' (metres, degrees), e.g. '0 0 1 90'."
                )
            if len(rows) == MAX_COMMANDS:
                raise ValueError(f"keyframes line {number}: more than the limit of {MAX_COMMANDS} keyframes; "
                                 "use fewer keyframes and more frames_between.")
            for label, value, limit in zip(_KEYFRAME_FIELDS, values, _KEYFRAME_LIMITS):
                check_number(value, f"keyframes line {number} ({label})", -limit, limit)
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
    middle = _as_points(center, "center")
    if tuple(middle.shape) != (3,):
        raise ValueError(f"center: expected one point [x, y, z], got shape {list(middle.shape)}.")
    for axis, value in zip("xyz", middle.tolist()):
        check_number(value, f"center_{axis}", -MAX_COORDINATE_M, MAX_COORDINATE_M)
    # A micrometre keeps every camera off the centre it looks at, far below any scene's scale.
    radius = check_number(radius, "radius", 1e-6, MAX_COORDINATE_M)
    altitude = check_number(altitude, "altitude", -MAX_COORDINATE_M, MAX_COORDINATE_M)
    frames = check_count(frames, "frames", 1, MAX_PATH_FRAMES, "cameras")
    start_deg = check_number(start_deg, "start_deg", -MAX_ANGLE_DEG, MAX_ANGLE_DEG)
    sweep_deg = check_number(sweep_deg, "sweep_deg", -MAX_ANGLE_DEG, MAX_ANGLE_DEG)
    pitch_deg = check_number(pitch_deg, "pitch_deg", -90.0, 90.0)
    if float(middle[:2].abs().max()) + radius > MAX_COORDINATE_M:
        raise ValueError(f"radius: an orbit of {radius:g} m around ({float(middle[0]):g}, {float(middle[1]):g}) leaves "
                         f"the limit of {MAX_COORDINATE_M:g} m from the origin; use a smaller radius or move the centre.")
    if abs(float(middle[2]) + altitude) > MAX_COORDINATE_M:
        raise ValueError(f"altitude: the cameras would be at z = {float(middle[2]) + altitude:g} m, beyond the limit of "
                         f"{MAX_COORDINATE_M:g} m from the origin; lower the altitude or the centre.")
    K = _intrinsics(K, height, width, fovy_deg)
    fraction = torch.linspace(0.0, 1.0, frames, dtype=torch.float64) if frames > 1 else torch.zeros(1, dtype=torch.float64)
    angle = torch.deg2rad(start_deg + sweep_deg * fraction)
    eye = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle), torch.full_like(angle, altitude)], -1)
    eye = eye + middle
    if look_at_center:
        c2w = look_at(eye, middle)
    else:
        heading = angle + math.copysign(math.pi / 2, sweep_deg)
        rotation = look_rotation(heading, torch.full_like(heading, math.radians(pitch_deg)))
        c2w = pose_matrix(rotation, eye.float())
    return CameraPath(c2w, K, height, width)


def resample(path: CameraPath, frames: int) -> CameraPath:
    """``path`` re-timed to ``frames`` cameras evenly spaced in time (linear positions, slerped rotations)."""
    require_path(path, "path")
    frames = check_count(frames, "frames", 1, MAX_PATH_FRAMES, "cameras")
    if len(path) == 1 or frames == 1:
        return CameraPath(path.c2w[:1].expand(frames, 4, 4).clone(), path.K, path.height, path.width)
    time = torch.linspace(0.0, len(path) - 1, frames, dtype=torch.float64)
    segment = time.floor().long().clamp(max=len(path) - 2)
    t = time - segment
    start, stop = path.positions[segment].double(), path.positions[segment + 1].double()
    position = start + (stop - start) * t[:, None]
    return CameraPath(pose_matrix(_slerp(path.c2w[:, :3, :3], segment, t), position.float()), path.K, path.height, path.width)


def path_to_json(path: CameraPath) -> str:
    """The path as ``come-camera-path/1`` JSON text (float32 values round-trip exactly)."""
    require_path(path, "path")
    return json.dumps({
        "format": PATH_FORMAT, "height": path.height, "width": path.width,
        "K": path.K.float().tolist(), "c2w": path.c2w.float().tolist(),
    })


def _json_tensor(data: dict, key: str, shape: str) -> torch.Tensor:
    """Field ``key`` as a float32 tensor, or a ValueError saying the expected ``shape``."""
    try:
        values = torch.tensor(data[key], dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError, OverflowError):
        raise ValueError(f"{JSON_NAME}: '{key}' must be a nested list of numbers of shape {shape}.") from None
    if not torch.isfinite(values.float()).all():
        raise ValueError(f"{JSON_NAME}: '{key}' has a value beyond the float32 range (about ±3.4e38); "
                         "give float32 numbers.")
    return values.float()


def path_from_json(text: str) -> CameraPath:
    """A CameraPath from ``come-camera-path/1`` JSON text, with clear errors on bad input."""
    data = parse_json(text, JSON_NAME, literals=False)
    if not isinstance(data, dict):
        raise ValueError(f"{JSON_NAME}: expected an object {{...}}, got {type(data).__name__}.")
    if data.get("format") != PATH_FORMAT:
        raise ValueError(
            f"{JSON_NAME}: 'format' must be '{PATH_FORMAT}', got {data.get('format')!r}; "
            "write the file with memory.geometry.paths.path_to_json."
        )
    missing = [key for key in ("height", "width", "K", "c2w") if key not in data]
    if missing:
        raise ValueError(f"{JSON_NAME}: missing key(s) {missing}; expected format, height, width, K and c2w.")
    for key in ("height", "width"):
        if isinstance(data[key], bool) or not isinstance(data[key], int) or data[key] <= 0:
            raise ValueError(f"{JSON_NAME}: '{key}' must be a positive whole number of pixels, got {data[key]!r}.")
    if isinstance(data["c2w"], list) and len(data["c2w"]) > MAX_PATH_FRAMES:
        raise ValueError(f"{JSON_NAME}: 'c2w' has {len(data['c2w'])} cameras, more than the limit of {MAX_PATH_FRAMES}.")
    K = _json_tensor(data, "K", "[3,3]")
    c2w = _json_tensor(data, "c2w", "[T,4,4]")
    if c2w.ndim != 3 or c2w.shape[0] == 0 or tuple(c2w.shape[1:]) != (4, 4):
        raise ValueError(f"{JSON_NAME}: 'c2w' must have shape [T,4,4] with T >= 1, got {list(c2w.shape)}.")
    check_path(c2w, K, data["height"], data["width"], JSON_NAME)
    return CameraPath(c2w, K, data["height"], data["width"])
