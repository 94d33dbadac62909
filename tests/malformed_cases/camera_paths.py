"""Malformed inputs of the camera-path nodes (moves, keyframes, orbit, JSON in and out) and of the engine behind them."""
from __future__ import annotations

import copy
import json
from collections.abc import Callable

import torch
from malformed_support import Case, Env

from memory.geometry.camera import CameraPath
from memory.limits import MAX_COMMANDS, MAX_JSON_CHARS, MAX_PATH_FRAMES, MAX_TEXT_CHARS
from memory.geometry.paths import parse_moves, resample

TEXT = "CoMECameraPathText"
KEYS = "CoMECameraPathKeyframes"
ORBIT = "CoMECameraPathOrbit"
FROM_JSON = "CoMECameraPathFromJSON"
TO_JSON = "CoMECameraPathToJSON"
Call = Callable[[Env], object]
EYE = [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]]
K64 = [[50.0, 0.0, 32.0], [0.0, 50.0, 32.0], [0.0, 0.0, 1.0]]
SKEWED = [[50.0, 3.0, 32.0], [0.0, 50.0, 32.0], [0.0, 0.0, 1.0]]


def moves(text: str, **overrides: object) -> Call:
    """A call of the moves node with ``text`` as its program."""
    return lambda env: env.call(TEXT, moves=text, **overrides)


def keys(text: str, **overrides: object) -> Call:
    """A call of the keyframes node with ``text`` as its keyframes."""
    return lambda env: env.call(KEYS, keyframes=text, **overrides)


def orbit(**overrides: object) -> Call:
    """A call of the orbit node with ``overrides``."""
    return lambda env: env.call(ORBIT, **overrides)


def valid_document(env: Env) -> dict:
    """The sample path as Camera Path to JSON writes it, parsed (a fresh copy per call)."""
    if "camera_path_json" not in env.cache:
        env.cache["camera_path_json"] = json.loads(env.call(TO_JSON, camera_path=env.path).args[0])
    return copy.deepcopy(env.cache["camera_path_json"])


def document(change: Callable[[dict], object]) -> Call:
    """A call of the JSON reader on the sample path's document after ``change(data)`` edited it in place."""
    def call(env: Env) -> object:
        data = valid_document(env)
        change(data)
        return env.call(FROM_JSON, json=json.dumps(data))
    return call


def set_k(row: int, column: int, value: object) -> Callable[[dict], None]:
    """An edit of the document setting K[row][column] to ``value``."""
    return lambda data: data["K"][row].__setitem__(column, value)


def set_c2w(row: int, column: int, value: object) -> Callable[[dict], None]:
    """An edit of the document setting c2w[0][row][column] to ``value``."""
    return lambda data: data["c2w"][0][row].__setitem__(column, value)


def empty_path(env: Env) -> object:
    """The sample path cut to no camera at all (a value a slice can make)."""
    return env.path.slice(0, 0)


CASES: list[Case] = [
    # Camera Path from Moves: work is counted before any frame is made.
    Case("camera-moves-forward-1e6", "moves", moves("forward 1e6")),
    Case("camera-moves-wait-1e7", "moves", moves("wait 1e7")),
    Case("camera-moves-turn-1e300", "moves", moves("turn_left 1e300")),
    Case("camera-moves-just-over-frame-limit", "moves", moves(f"forward {MAX_PATH_FRAMES}", step_m=1.0)),
    Case("camera-moves-200k-noops", "moves", moves("forward 0\n" * 200_000)),
    Case("camera-moves-too-many-commands", "moves", moves("up 0;" * (MAX_COMMANDS + 1))),
    Case("camera-moves-text-too-long", "moves", moves("# " + "x" * MAX_TEXT_CHARS)),
    Case("camera-moves-beyond-coordinate-limit", "moves", moves("forward 1e9", step_m=99_999.0)),
    # The numeric grammar: plain ASCII decimals only.
    Case("camera-moves-underscore-number", "moves", moves("forward 1_0")),
    Case("camera-moves-arabic-indic-digit", "moves", moves("forward \u0661")),
    Case("camera-moves-fullwidth-digit", "moves", moves("forward \uff11")),
    Case("camera-moves-inf", "moves", moves("forward inf")),
    Case("camera-moves-nan", "moves", moves("turn_left nan")),
    Case("camera-moves-hex", "moves", moves("forward 0x10")),
    Case("camera-moves-overflowing-exponent", "moves", moves("forward 1e999")),
    Case("camera-moves-negative", "moves", moves("forward -1")),
    Case("camera-moves-fractional-wait", "moves", moves("wait 2.5")),
    Case("camera-moves-unknown-verb", "moves", moves("fly 2")),
    Case("camera-moves-two-amounts", "moves", moves("forward 1 2")),
    Case("camera-moves-tilt-past-vertical", "moves", moves("look_up 60; look_up 40")),
    Case("camera-moves-empty", "moves", moves("# nothing\n")),
    Case("camera-moves-not-text", "moves", moves(123)),
    # Its other widgets and the optional reference.
    Case("camera-moves-step-m-zero", "step_m", moves("forward 1", step_m=0.0)),
    Case("camera-moves-step-m-nan", "step_m", moves("forward 1", step_m=float("nan"))),
    Case("camera-moves-step-deg-negative", "step_deg", moves("turn_left 90", step_deg=-5.0)),
    Case("camera-moves-step-deg-inf", "step_deg", moves("turn_left 90", step_deg=float("inf"))),
    Case("camera-moves-width-1e9", "width", moves("forward 1", width=10**9)),
    Case("camera-moves-height-zero", "height", moves("forward 1", height=0)),
    Case("camera-moves-width-fraction", "width", moves("forward 1", width=64.5)),
    Case("camera-moves-width-boolean", "width", moves("forward 1", width=True)),
    Case("camera-moves-fov-zero", "fov_deg", moves("forward 1", fov_deg=0.0)),
    Case("camera-moves-fov-180", "fov_deg", moves("forward 1", fov_deg=180.0)),
    Case("camera-moves-fov-nan", "fov_deg", moves("forward 1", fov_deg=float("nan"))),
    Case("camera-moves-empty-reference", "reference", lambda env: env.call(TEXT, reference=empty_path(env))),
    Case("camera-moves-reference-not-a-path", "reference", lambda env: env.call(TEXT, reference="forward 1")),
    # Camera Path from Keyframes.
    Case("camera-keys-frames-between-1e9", "frames_between", keys("0 0 1 0\n1 0 1 45", frames_between=10**9)),
    Case("camera-keys-too-many-frames", "frames_between", keys("0 0 1 0\n1 0 1 0\n" * 100, frames_between=1000)),
    Case("camera-keys-frames-between-negative", "frames_between", keys("0 0 1 0\n1 0 1 45", frames_between=-1)),
    Case("camera-keys-frames-between-fraction", "frames_between", keys("0 0 1 0\n1 0 1 45", frames_between=2.5)),
    Case("camera-keys-empty", "keyframes", keys("# x y z yaw\n")),
    Case("camera-keys-missing-number", "keyframes", keys("0 0 1 0\n1 0 1")),
    Case("camera-keys-six-numbers", "keyframes", keys("0 0 1 0 0 0")),
    Case("camera-keys-position-1e300", "keyframes", keys("1e300 0 1 0\n1 0 1 45")),
    Case("camera-keys-yaw-1e300", "keyframes", keys("0 0 1 1e300\n1 0 1 45")),
    Case("camera-keys-pitch-95", "keyframes", keys("0 0 1 0 95\n1 0 1 45")),
    Case("camera-keys-half-turn", "keyframes", keys("0 0 1 0\n1 0 1 180")),
    Case("camera-keys-underscore-number", "keyframes", keys("0 0 1_0 0\n1 0 1 45")),
    Case("camera-keys-arabic-indic-digit", "keyframes", keys("0 0 \u0661 0\n1 0 1 45")),
    Case("camera-keys-nan", "keyframes", keys("nan 0 1 0\n1 0 1 45")),
    Case("camera-keys-text-too-long", "keyframes", keys("# " + "x" * MAX_TEXT_CHARS)),
    Case("camera-keys-too-many-keyframes", "keyframes", keys("0 0 1 0;" * (MAX_COMMANDS + 1), frames_between=0)),
    Case("camera-keys-spline-leaves-limit", "keyframes", keys("0 0 0 0\n100000 0 0 0\n100000 100000 0 0")),
    Case("camera-keys-not-text", "keyframes", keys(["0 0 1 0"])),
    Case("camera-keys-empty-reference", "reference", lambda env: env.call(KEYS, reference=empty_path(env))),
    Case("camera-keys-fov-zero", "fov_deg", keys("0 0 1 0\n1 0 1 45", fov_deg=0.0)),
    Case("camera-keys-width-5000", "width", keys("0 0 1 0\n1 0 1 45", width=5000)),
    # Camera Path Orbit.
    Case("camera-orbit-frames-1e9", "frames", orbit(frames=10**9)),
    Case("camera-orbit-frames-zero", "frames", orbit(frames=0)),
    Case("camera-orbit-frames-fraction", "frames", orbit(frames=2.5)),
    Case("camera-orbit-radius-zero", "radius", orbit(radius=0.0)),
    Case("camera-orbit-radius-nan", "radius", orbit(radius=float("nan"))),
    Case("camera-orbit-radius-1e9", "radius", orbit(radius=1e9)),
    Case("camera-orbit-radius-boolean", "radius", orbit(radius=True)),
    Case("camera-orbit-center-x-nan", "center_x", orbit(center_x=float("nan"))),
    Case("camera-orbit-center-y-inf", "center_y", orbit(center_y=float("inf"))),
    Case("camera-orbit-center-z-1e9", "center_z", orbit(center_z=1e9)),
    Case("camera-orbit-center-x-text", "center_x", orbit(center_x="0")),
    Case("camera-orbit-camera-height-nan", "camera_height", orbit(camera_height=float("nan"))),
    Case("camera-orbit-camera-height-1e9", "camera_height", orbit(camera_height=1e9)),
    Case("camera-orbit-height-above-limit", "camera_height", orbit(center_z=99_999.0, camera_height=99_999.0)),
    Case("camera-orbit-start-nan", "start_deg", orbit(start_deg=float("nan"))),
    Case("camera-orbit-start-1e300", "start_deg", orbit(start_deg=1e300)),
    Case("camera-orbit-sweep-inf", "sweep_deg", orbit(sweep_deg=float("inf"))),
    Case("camera-orbit-fov-zero", "fov_deg", orbit(fov_deg=0.0)),
    Case("camera-orbit-height-1e9", "height", orbit(height=10**9)),
    Case("camera-orbit-empty-reference", "reference", lambda env: env.call(ORBIT, reference=empty_path(env))),
    # Camera Path from JSON: scanned before parsing, every value checked as it enters.
    Case("camera-json-empty", "json", lambda env: env.call(FROM_JSON, json="")),
    Case("camera-json-not-text", "json", lambda env: env.call(FROM_JSON, json=123)),
    Case("camera-json-deeply-nested", "json", lambda env: env.call(FROM_JSON, json="[" * 100_000 + "]" * 100_000)),
    Case("camera-json-too-long", "json", lambda env: env.call(FROM_JSON, json=" " * (MAX_JSON_CHARS + 1))),
    Case("camera-json-unterminated-escaped-string", "json",
         lambda env: env.call(FROM_JSON, json='"' + '\\"' * 1_000_000)),
    Case("camera-json-array", "json", lambda env: env.call(FROM_JSON, json="[1, 2]")),
    Case("camera-json-wrong-format", "json", document(lambda data: data.update(format="come-camera-path/9"))),
    Case("camera-json-missing-K", "json", document(lambda data: data.pop("K"))),
    Case("camera-json-height-float", "json", document(lambda data: data.update(height=64.0))),
    Case("camera-json-height-boolean", "json", document(lambda data: data.update(height=True))),
    Case("camera-json-width-1e9", "json", document(lambda data: data.update(width=10**9))),
    Case("camera-json-K-boolean", "json", document(set_k(0, 0, True))),
    Case("camera-json-K-nan", "json", document(set_k(0, 0, float("nan")))),
    Case("camera-json-K-text", "json", document(set_k(1, 1, "50"))),
    Case("camera-json-K-skew", "json", document(set_k(0, 1, 2.0))),
    Case("camera-json-K-last-row", "json", document(set_k(2, 2, 2.0))),
    Case("camera-json-K-negative-focal", "json", document(set_k(1, 1, -50.0))),
    Case("camera-json-K-principal-point-outside", "json", document(set_k(0, 2, 1000.0))),
    Case("camera-json-K-overflows-float32", "json", document(set_k(0, 0, 1e39))),
    Case("camera-json-c2w-overflows-float32", "json", document(set_c2w(0, 3, 1e39))),
    Case("camera-json-c2w-infinity", "json", document(set_c2w(1, 3, float("inf")))),
    Case("camera-json-c2w-boolean", "json", document(set_c2w(3, 3, True))),
    Case("camera-json-c2w-far-away", "json", document(set_c2w(0, 3, 1e9))),
    Case("camera-json-c2w-not-orthonormal", "json", document(set_c2w(0, 0, 2.0))),
    Case("camera-json-c2w-bottom-row", "json", document(set_c2w(3, 0, 1.0))),
    Case("camera-json-c2w-empty", "json", document(lambda data: data.update(c2w=[]))),
    Case("camera-json-c2w-too-many-cameras", "json", document(lambda data: data.update(c2w=[EYE] * (MAX_PATH_FRAMES + 1)))),
    # Camera Path to JSON: its one socket.
    Case("camera-to-json-text", "camera_path", lambda env: env.call(TO_JSON, camera_path="forward 1")),
    Case("camera-to-json-none", "camera_path", lambda env: env.call(TO_JSON, camera_path=None)),
    Case("camera-to-json-empty-path", "camera_path", lambda env: env.call(TO_JSON, camera_path=empty_path(env))),
    # The engine: the CameraPath value refuses what no builder may make, and resample is bounded.
    Case("camera-value-skewed-K", "CameraPath",
         lambda env: CameraPath(torch.eye(4)[None], torch.tensor(SKEWED), 64, 64)),
    Case("camera-value-size-1e9", "CameraPath",
         lambda env: CameraPath(torch.eye(4)[None], torch.tensor(K64), 10**9, 64)),
    Case("camera-value-too-many-cameras", "CameraPath",
         lambda env: CameraPath(torch.eye(4).expand(MAX_PATH_FRAMES + 1, 4, 4), torch.tensor(K64), 64, 64)),
    Case("camera-resample-frames-1e9", "frames", lambda env: resample(parse_moves("forward 1"), 10**9)),
]
