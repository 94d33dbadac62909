"""Camera-path builders: move grammar, keyframes, orbits, look_at, resampling and JSON files."""
from __future__ import annotations

import json
import math
import time

import pytest
import torch

from memory.geometry.camera import CameraPath, intrinsics_from_fov, pitch_of, yaw_of
from memory.geometry.projection import project
from memory.limits import MAX_COMMANDS, MAX_JSON_CHARS, MAX_PATH_FRAMES, MAX_TEXT_CHARS
from memory.geometry.paths import keyframes, keyframes_from_text, look_at, orbit, parse_moves, path_from_json, path_to_json, resample


def degrees(values: torch.Tensor) -> torch.Tensor:
    return torch.rad2deg(values).double()


def test_forward_gives_uniform_steps_along_heading():
    path = parse_moves("forward 1", step_m=0.1)
    assert len(path) == 11
    expected = torch.zeros(11, 3)
    expected[:, 0] = torch.linspace(0, 1, 11)
    assert torch.allclose(path.positions, expected, atol=1e-6)
    assert torch.allclose(yaw_of(path.c2w), torch.zeros(11), atol=1e-6)


def test_cameras_look_where_the_path_says():
    """A point straight ahead on the heading projects to the image centre in every frame (OpenCV axes)."""
    path = parse_moves("turn_left 30; forward 1", height=48, width=64)
    ahead = path.positions[-1] + 5 * torch.tensor([math.cos(math.radians(30)), math.sin(math.radians(30)), 0.0])
    for pose in path.c2w[-11:]:
        uv, z = project(ahead[None], path.K, pose)
        assert z[0] > 0
        assert torch.allclose(uv[0], torch.tensor([32.0, 24.0]), atol=1e-3)


def test_partial_step_splits_into_equal_steps():
    path = parse_moves("forward 0.25", step_m=0.1)
    steps = path.positions[1:, 0] - path.positions[:-1, 0]
    assert len(path) == 4
    assert torch.allclose(steps, torch.full((3,), 0.25 / 3), atol=1e-6)
    assert float(path.positions[-1, 0]) == pytest.approx(0.25, abs=1e-6)


def test_turns_end_at_the_requested_yaw():
    left = parse_moves("turn_left 90", step_deg=5)
    assert len(left) == 19
    assert float(degrees(yaw_of(left.c2w))[-1]) == pytest.approx(90.0, abs=1e-4)
    assert torch.allclose(left.positions, torch.zeros(19, 3))
    right = parse_moves("turn_right 45")
    assert float(degrees(yaw_of(right.c2w))[-1]) == pytest.approx(-45.0, abs=1e-4)


def test_moves_follow_the_heading_after_a_turn():
    path = parse_moves("turn_left 90\nforward 2\nback 0.5")
    assert torch.allclose(path.positions[-1], torch.tensor([0.0, 1.5, 0.0]), atol=1e-5)


def test_strafes_move_along_the_camera_right_axis():
    path = parse_moves("turn_left 30; strafe_right 1")
    right_axis = path.c2w[-1, :3, 0]
    moved = path.positions[-1] - path.positions[0]
    assert float(moved @ right_axis) == pytest.approx(1.0, abs=1e-5)
    assert float(moved.norm()) == pytest.approx(1.0, abs=1e-5)
    back = parse_moves("turn_left 30; strafe_left 1")
    assert torch.allclose(back.positions[-1], -moved, atol=1e-5)


def test_up_down_and_look_keep_walking_level():
    path = parse_moves("up 0.5; look_up 10; forward 1; look_down 30; down 0.2")
    assert float(degrees(pitch_of(path.c2w))[-1]) == pytest.approx(-20.0, abs=1e-4)
    pitched = parse_moves("up 0.5; look_up 10; forward 1")
    assert float(degrees(pitch_of(pitched.c2w))[-1]) == pytest.approx(10.0, abs=1e-4)
    assert torch.allclose(pitched.positions[-1], torch.tensor([1.0, 0.0, 0.5]), atol=1e-5)
    assert float(path.positions[-1, 2]) == pytest.approx(0.3, abs=1e-5)


def test_wait_holds_the_pose():
    path = parse_moves("forward 0.1; wait 5")
    assert len(path) == 7
    assert torch.equal(path.c2w[-1], path.c2w[1])
    assert torch.equal(path.c2w[2:].unique(dim=0), path.c2w[1:2])


def test_separators_comments_and_case_are_equivalent():
    lines = parse_moves("forward 1\nturn_left 90\nforward 0.5\nwait 2")
    mixed = parse_moves("# header comment\nFORWARD 1; Turn_Left 90, forward 0.5   # trailing\n\n  wait 2\n")
    assert torch.equal(lines.c2w, mixed.c2w)


def test_start_pose_and_intrinsics():
    start = look_at(torch.tensor([1.0, 2.0, 0.5]), torch.tensor([1.0, 5.0, 0.5]))[0]
    path = parse_moves("forward 1", start_c2w=start, height=32, width=48, fovy_deg=60.0)
    assert torch.allclose(path.c2w[0], start, atol=1e-6)
    assert torch.allclose(path.positions[-1], torch.tensor([1.0, 3.0, 0.5]), atol=1e-5)
    assert torch.equal(path.K, intrinsics_from_fov(32, 48, 60.0))
    K = torch.tensor([[40.0, 0, 24], [0, 40.0, 16], [0, 0, 1]])
    assert torch.equal(parse_moves("wait 1", K=K, height=32, width=48).K, K)


def test_rolled_start_pose_keeps_its_roll():
    level = look_at(torch.zeros(3), torch.tensor([1.0, 0.0, 0.0]))[0]
    about_optical_axis = torch.eye(4)
    about_optical_axis[:2, :2] = torch.tensor([[math.cos(0.5), -math.sin(0.5)], [math.sin(0.5), math.cos(0.5)]])
    rolled = level @ about_optical_axis
    path = parse_moves("forward 1; turn_left 90; forward 1", start_c2w=rolled)
    assert torch.allclose(path.c2w[0], rolled, atol=1e-6)
    assert torch.allclose(path.c2w[:, 2, 0], torch.full((len(path),), float(rolled[2, 0])), atol=1e-5)
    assert torch.allclose(path.positions[-1], torch.tensor([1.0, 1.0, 0.0]), atol=1e-5)
    assert float(degrees(yaw_of(path.c2w))[-1]) == pytest.approx(90.0, abs=1e-4)


def test_start_pose_looking_straight_down_walks_towards_image_up():
    down = look_at(torch.tensor([0.0, 0.0, 2.0]), torch.tensor([0.0, 0.0, 0.0]))[0]
    path = parse_moves("forward 1", start_c2w=down)
    up_in_image = -down[:3, 1]
    assert torch.allclose(path.positions[-1] - path.positions[0], up_in_image, atol=1e-5)
    with pytest.raises(ValueError, match="start_c2w: expected a \\[4,4\\]"):
        parse_moves("forward 1", start_c2w=torch.eye(3))


@pytest.mark.parametrize("program, line, text", [
    ("forward 1\njump 2", 2, "unknown verb 'jump'"),
    ("forward 1\n\nturn_left", 3, "missing its amount"),
    ("forward -1", 1, "must be >= 0"),
    ("forward 1; back two", 1, "'two' is not a number"),
    ("wait 2.5", 1, "whole number of frames"),
    ("forward 1 2", 1, "more than one amount"),
    ("forward inf", 1, "finite number"),
    ("look_up 60\nlook_up 40", 2, "keep the pitch within"),
])
def test_bad_programs_name_the_line(program, line, text):
    with pytest.raises(ValueError, match=f"moves line {line}: .*{text}"):
        parse_moves(program)


def test_unknown_verb_lists_the_valid_verbs():
    with pytest.raises(ValueError, match="valid verbs: forward, back, strafe_left, strafe_right, up, down"):
        parse_moves("fly 2")


@pytest.mark.parametrize("program", ["", "   \n", "# only a comment\n;,"])
def test_empty_programs_are_rejected(program):
    with pytest.raises(ValueError, match="no commands"):
        parse_moves(program)


def test_keyframes_land_on_their_frames():
    keys = torch.tensor([[0.0, 0, 0], [1, 0, 0.5], [1, 2, 0.5]])
    path = keyframes(keys, [0, 90, 120], [0, 10, -20], frames_between=4)
    assert len(path) == 3 + 2 * 4
    assert torch.allclose(path.positions[[0, 5, 10]], keys, atol=1e-5)
    assert torch.allclose(degrees(yaw_of(path.c2w))[[0, 5, 10]], torch.tensor([0.0, 90, 120]).double(), atol=1e-3)
    assert torch.allclose(degrees(pitch_of(path.c2w))[[0, 5, 10]], torch.tensor([0.0, 10, -20]).double(), atol=1e-3)


def test_slerp_midpoints_are_intermediate():
    path = keyframes(torch.zeros(2, 3), [0, 90], [0, 20], frames_between=1)
    assert float(degrees(yaw_of(path.c2w))[1]) == pytest.approx(45.0, abs=1.0)
    assert 5.0 < float(degrees(pitch_of(path.c2w))[1]) < 15.0
    yaws = degrees(yaw_of(keyframes(torch.zeros(2, 3), [0, 90], frames_between=8).c2w))
    assert (yaws[1:] > yaws[:-1]).all()


def test_slerp_takes_the_short_way_round():
    path = keyframes(torch.zeros(2, 3), [350, 10], frames_between=1)
    assert float(degrees(yaw_of(path.c2w))[1]) == pytest.approx(0.0, abs=1e-3)


def test_straight_even_keyframes_give_uniform_motion():
    keys = torch.tensor([[0.0, 0, 0], [1, 1, 0], [2, 2, 0], [3, 3, 0]])
    path = keyframes(keys, [45] * 4, frames_between=3)
    steps = (path.positions[1:] - path.positions[:-1]).norm(dim=-1)
    assert torch.allclose(steps, torch.full_like(steps, math.sqrt(2) / 4), atol=1e-5)


def test_catmull_rom_is_smooth_through_a_corner():
    """The heading change per frame at a corner keyframe shrinks with finer sampling: no kink, unlike a polyline."""
    keys = torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 1, 0]])

    def sharpest_turn(frames_between: int) -> float:
        path = keyframes(keys, [0, 45, 90], frames_between=frames_between)
        steps = torch.nn.functional.normalize(path.positions[1:] - path.positions[:-1], dim=-1)
        return float(torch.rad2deg(torch.arccos((steps[1:] * steps[:-1]).sum(-1).clamp(-1, 1))).max())

    coarse, fine = sharpest_turn(9), sharpest_turn(19)
    assert fine < 15.0
    assert fine < 0.6 * coarse
    path = keyframes(keys, [0, 45, 90], frames_between=9)
    assert float(path.positions[5, 1]) < 0  # the curve swings outside the chord instead of cutting the corner


@pytest.mark.parametrize("kwargs, text", [
    (dict(positions=torch.zeros(3, 3), yaws_deg=[0, 1]), "yaws_deg: expected 3 angles"),
    (dict(positions=torch.zeros(2, 2), yaws_deg=[0, 1]), "positions: expected shape"),
    (dict(positions=torch.zeros(2, 3), yaws_deg=[0, 180]), "keyframes 0 and 1 differ by a 180.0 deg turn"),
    (dict(positions=torch.zeros(2, 3), yaws_deg=[0, 1], pitches_deg=[0, 95]), "pitches_deg: every pitch"),
    (dict(positions=torch.zeros(2, 3), yaws_deg=[0, 1], frames_between=-1), "frames_between"),
    (dict(positions=torch.full((2, 3), float("nan")), yaws_deg=[0, 1]), "positions: contains NaN"),
])
def test_bad_keyframes_raise(kwargs, text):
    with pytest.raises(ValueError, match=text):
        keyframes(**kwargs)


def test_single_keyframe_is_one_camera():
    path = keyframes([[1.0, 2.0, 3.0]], [30])
    assert len(path) == 1
    assert float(degrees(yaw_of(path.c2w))[0]) == pytest.approx(30.0, abs=1e-4)


def test_keyframes_from_text_matches_the_tensor_form():
    text = "# x y z yaw [pitch]\n0 0 1 0\n\n1, 0, 1, 90, 10 ; 2 1 1 120  # last\n"
    from_text = keyframes_from_text(text, frames_between=3, height=32, width=32)
    direct = keyframes([[0, 0, 1], [1, 0, 1], [2, 1, 1]], [0, 90, 120], [0, 10, 0], frames_between=3, height=32, width=32)
    assert torch.equal(from_text.c2w, direct.c2w)
    assert len(keyframes_from_text("0 0 1 0\n1 0 1 90", 3)) == 5


@pytest.mark.parametrize("text, message", [
    ("0 0 1 0\n1 0 1", "keyframes line 2: '1 0 1' is not a keyframe"),
    ("0 0 1 0\n# fine\n1 0 one 90", "keyframes line 3"),
    ("0 0 1 0 0 0", "keyframes line 1"),
    ("# nothing\n", "no keyframes"),
])
def test_bad_keyframe_text_names_the_line(text, message):
    with pytest.raises(ValueError, match=message):
        keyframes_from_text(text)


def test_orbit_cameras_look_at_the_centre():
    center = torch.tensor([1.0, -2.0, 0.5])
    path = orbit(center, radius=3.0, altitude=1.5, frames=13, start_deg=20, sweep_deg=300, height=48, width=64)
    for pose in path.c2w:
        uv, z = project(center[None], path.K, pose)
        assert float(z[0]) == pytest.approx(math.hypot(3.0, 1.5), abs=1e-4)
        assert torch.allclose(uv[0], torch.tensor([32.0, 24.0]), atol=1e-3)
    offsets = path.positions - center
    angles = degrees(torch.atan2(offsets[:, 1], offsets[:, 0]))
    assert float(angles[0]) == pytest.approx(20.0, abs=1e-3)
    assert float(angles[-1]) == pytest.approx(-40.0, abs=1e-3)  # 20 + 300 = 320 = -40
    assert float(angles[1]) > 20.0  # counter-clockwise seen from above
    assert torch.allclose(offsets[:, 2], torch.full((13,), 1.5), atol=1e-5)


def test_orbit_can_look_along_the_direction_of_travel():
    path = orbit([0, 0, 0], 2.0, 0.0, 8, sweep_deg=-90, look_at_center=False, pitch_deg=-10)
    forward = path.c2w[:, :3, 2]
    travel = path.positions[1:] - path.positions[:-1]
    assert torch.allclose((forward * path.positions).sum(-1), torch.zeros(8), atol=1e-5)
    assert (torch.einsum("ij,ij->i", forward[:-1, :2], travel[:, :2]) > 0).all()
    assert torch.allclose(degrees(pitch_of(path.c2w)), torch.full((8,), -10.0).double(), atol=1e-3)


def test_orbit_input_errors():
    with pytest.raises(ValueError, match="radius"):
        orbit([0, 0, 0], 0.0, 1.0, 10)
    with pytest.raises(ValueError, match="frames"):
        orbit([0, 0, 0], 1.0, 1.0, 0)
    assert len(orbit([0, 0, 0], 1.0, 1.0, 1)) == 1


def test_look_at_points_the_optical_axis_at_the_target():
    eye = torch.tensor([[0.0, 0, 1], [3, 1, 2], [0, 0, 5]])
    target = torch.tensor([[2.0, 2, 0], [3, 1, 0], [0.5, -1, 5]])
    c2w = look_at(eye, target)
    K = intrinsics_from_fov(32, 32, 70.0)
    for i in range(3):
        uv, z = project(target[i : i + 1], K, c2w[i])
        assert torch.allclose(uv[0], torch.tensor([16.0, 16.0]), atol=1e-3)
        assert float(z[0]) == pytest.approx(float((target[i] - eye[i]).norm()), abs=1e-4)
    assert abs(float(c2w[0, 2, 0])) < 1e-6  # level: the x axis stays horizontal
    CameraPath(c2w, K, 32, 32)
    with pytest.raises(ValueError, match="eye and target coincide"):
        look_at([1.0, 1.0, 1.0], [1.0, 1.0, 1.0])


def test_resample_keeps_ends_and_retimes():
    path = parse_moves("forward 1; turn_left 90")
    shorter = resample(path, 5)
    assert len(shorter) == 5
    assert torch.allclose(shorter.c2w[[0, -1]], path.c2w[[0, -1]], atol=1e-5)
    longer = resample(parse_moves("forward 1"), 21)
    assert torch.allclose(longer.positions[:, 0], torch.linspace(0, 1, 21), atol=1e-5)


def test_json_round_trip_is_exact():
    path = keyframes(torch.tensor([[0.1, 0.2, 0.3], [1.7, -0.4, 0.9]]), [13, 77], [3, -7], frames_between=5,
                     height=36, width=52, fovy_deg=71.3)
    text = path_to_json(path)
    data = json.loads(text)
    assert data["format"] == "come-camera-path/1"
    assert (data["height"], data["width"]) == (36, 52)
    back = path_from_json(text)
    assert torch.equal(back.c2w, path.c2w)
    assert torch.equal(back.K, path.K)
    assert (back.height, back.width) == (36, 52)


def _json_with(**changes) -> str:
    data = json.loads(path_to_json(parse_moves("forward 0.2")))
    data.update(changes)
    return json.dumps({k: v for k, v in data.items() if v is not None})


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected an object"),
    (_json_with(format="come-camera-path/9"), "'format' must be 'come-camera-path/1'"),
    (_json_with(K=None), r"missing key\(s\) \['K'\]"),
    (_json_with(height=0), "'height' must be a positive whole number"),
    (_json_with(width=1.5), "'width' must be a positive whole number"),
    (_json_with(c2w=[[1, 0, 0, 0]]), r"'c2w' must have shape \[T,4,4\]"),
    (_json_with(c2w=[]), r"'c2w' must have shape \[T,4,4\]"),
    (_json_with(K=[["a", 0, 0], [0, 1, 0], [0, 0, 1]]), "'K' must be a nested list of numbers"),
    (_json_with(c2w=[[[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]]), "not orthonormal"),
])
def test_bad_json_raises_clear_errors(text, message):
    with pytest.raises(ValueError, match=f"camera path JSON: .*{message}"):
        path_from_json(text)


@pytest.mark.parametrize("amount, metres", [("1", 1.0), ("1.", 1.0), (".5", 0.5), ("0.25", 0.25), ("1e0", 1.0),
                                            ("2.5E-1", 0.25), ("+1", 1.0), ("05", 5.0)])
def test_amounts_are_plain_decimal_numbers(amount, metres):
    path = parse_moves(f"forward {amount}")
    assert float(path.positions[-1, 0]) == pytest.approx(metres, abs=1e-6)


@pytest.mark.parametrize("amount", ["1_0", "\u0661", "\uff11", "\u00b2", "inf", "nan", "Infinity", "0x10", "1e", "e1",
                                    "1.2.3", "+-1", "\u22121"])
def test_amounts_outside_the_grammar_are_not_numbers(amount):
    with pytest.raises(ValueError, match=r"moves line 1: .*is not a number; write a plain finite number"):
        parse_moves(f"forward {amount}")


def test_keyframe_numbers_follow_the_same_grammar():
    path = keyframes_from_text("-1.5e0 +0 .5 -90\n0 0 .5 -45 -1E1", frames_between=0)
    assert torch.allclose(path.positions[0], torch.tensor([-1.5, 0.0, 0.5]))
    assert float(degrees(pitch_of(path.c2w))[1]) == pytest.approx(-10.0, abs=1e-4)
    for bad in ("1_0", "\u0661", "inf", "nan", "0x10"):
        with pytest.raises(ValueError, match="keyframes line 2: .* is not a keyframe"):
            keyframes_from_text(f"0 0 1 0\n0 0 {bad} 0")


@pytest.mark.parametrize("program", [
    "forward 1e6", "wait 1e7", "turn_left 1e300", "look_up 0; forward 1; turn_left 90; back 9999.95",
])
def test_programs_over_the_frame_limit_are_refused_before_any_frame(program, monkeypatch):
    def no_frame_work(*args, **kwargs):
        raise AssertionError("a frame was built before the frame limit was checked")

    monkeypatch.setattr("memory.geometry.paths.axis_angle_to_rotation_matrix", no_frame_work)
    with pytest.raises(ValueError, match=f"moves line 1: .*more than the limit of {MAX_PATH_FRAMES}"):
        parse_moves(program)


def test_the_frame_limit_is_exact():
    assert len(parse_moves(f"forward {(MAX_PATH_FRAMES - 1) / 10}")) == MAX_PATH_FRAMES
    with pytest.raises(ValueError, match="limit of 100000"):
        parse_moves(f"wait {MAX_PATH_FRAMES}")


@pytest.mark.parametrize("text, message", [
    ("forward 0\n" * 200_000, "more than the limit of 1000000"),
    ("up 0;" * (MAX_COMMANDS + 1), f"more than the limit of {MAX_COMMANDS} commands"),
    ("# " + "x" * MAX_TEXT_CHARS, "characters is more than the limit"),
])
def test_long_programs_are_refused(text, message):
    with pytest.raises(ValueError, match=f"moves.*{message}"):
        parse_moves(text)


@pytest.mark.parametrize("kwargs, message", [
    (dict(step_m=0.0), "step_m: 0.0 is outside"),
    (dict(step_m=float("nan")), "step_m: must be a finite number"),
    (dict(step_deg=True), "step_deg: must be a finite number"),
    (dict(step_deg=float("inf")), "step_deg: must be a finite number"),
    (dict(height=10**9), r"image size \(height\): 1000000000 is outside the allowed range 1..4096"),
    (dict(width=64.0), r"image size \(width\): must be a whole number"),
    (dict(fovy_deg=0.0), "fovy_deg: 0.0 is outside"),
    (dict(fovy_deg=180.0), "fovy_deg: 180.0 is outside"),
    (dict(K=torch.tensor([[50.0, 1.0, 32.0], [0.0, 50.0, 32.0], [0.0, 0.0, 1.0]])), "K: K must be a pinhole matrix"),
    (dict(step_m=99_999.0, text="forward 1e9"), "moves: camera .* beyond the limit of 100000 m"),
])
def test_move_settings_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        parse_moves(**{"text": "forward 1", **kwargs})


@pytest.mark.parametrize("text, frames_between, message", [
    ("0 0 1 0\n1 0 1 0\n" * 100, 1000, "frames_between: 200 keyframes with 1000 frames between each make 199200"),
    ("0 0 1 0\n1 0 1 45", 10**9, "frames_between: 1000000000 is outside the allowed range 0..99999"),
    ("0 0 1 0;" * (MAX_COMMANDS + 1), 0, f"keyframes line 1: more than the limit of {MAX_COMMANDS} keyframes"),
    ("1e300 0 1 0", 1, r"keyframes line 1 \(x\): 1e\+300 is outside"),
    ("0 0 1 1e300", 1, r"keyframes line 1 \(yaw_deg\): 1e\+300 is outside"),
    ("0 0 1 0 95", 1, r"keyframes line 1 \(pitch_deg\): 95.0 is outside"),
    ("0 0 0 0\n100000 0 0 0\n100000 100000 0 0", 8, "keyframes: camera .* beyond the limit of 100000 m"),
    (["0 0 1 0"], 1, "keyframes: expected text, got list"),
])
def test_keyframe_limits(text, frames_between, message):
    with pytest.raises(ValueError, match=message):
        keyframes_from_text(text, frames_between)


def test_keyframe_tensors_are_bounded_too():
    with pytest.raises(ValueError, match="positions: no keyframes"):
        keyframes(torch.zeros(0, 3), [])
    with pytest.raises(ValueError, match="yaws_deg: angles must lie within"):
        keyframes(torch.zeros(2, 3), [0, 1e300])
    with pytest.raises(ValueError, match="positions: camera 1 would be 1e\\+06 m"):
        keyframes([[0, 0, 0], [1e6, 0, 0]], [0, 0])


@pytest.mark.parametrize("kwargs, message", [
    (dict(frames=MAX_PATH_FRAMES + 1), "frames: 100001 is outside the allowed range 1..100000"),
    (dict(frames=2.5), "frames: must be a whole number"),
    (dict(radius=float("nan")), "radius: must be a finite number"),
    (dict(radius=1e-9), "radius: 1e-09 is outside"),
    (dict(center=[0.0, 0.0, 1e9]), "center_z: 1000000000.0 is outside"),
    (dict(center=[[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]), r"center: expected one point \[x, y, z\]"),
    (dict(altitude=float("inf")), "altitude: must be a finite number"),
    (dict(center=[0.0, 0.0, 99_999.0], altitude=99_999.0), "altitude: the cameras would be at z = 199998 m"),
    (dict(center=[99_999.0, 0.0, 0.0], radius=10.0), "radius: an orbit of 10 m around"),
    (dict(start_deg=float("nan")), "start_deg: must be a finite number"),
    (dict(sweep_deg=1e300), "sweep_deg: 1e\\+300 is outside"),
    (dict(fovy_deg=float("nan")), "fovy_deg: must be a finite number"),
])
def test_orbit_limits(kwargs, message):
    with pytest.raises(ValueError, match=message):
        orbit(**{"center": [0.0, 0.0, 0.0], "radius": 1.0, "altitude": 0.5, "frames": 8, **kwargs})


def test_resample_and_json_export_refuse_what_they_cannot_make():
    with pytest.raises(ValueError, match="frames: 1000000000 is outside"):
        resample(parse_moves("forward 1"), 10**9)
    empty = parse_moves("forward 1").slice(0, 0)
    with pytest.raises(ValueError, match="path: the camera path has no cameras"):
        resample(empty, 4)
    with pytest.raises(ValueError, match="path: the camera path has no cameras"):
        path_to_json(empty)
    with pytest.raises(ValueError, match="path: expected a camera path, got str"):
        path_to_json("forward 1")


K64 = [[50.0, 0.0, 32.0], [0.0, 50.0, 32.0], [0.0, 0.0, 1.0]]


@pytest.mark.parametrize("K, height, width, c2w, message", [
    ([[50.0, 2.0, 32.0], [0.0, 50.0, 32.0], [0.0, 0.0, 1.0]], 64, 64, None, "K must be a pinhole matrix"),
    ([[50.0, 0.0, 32.0], [0.0, 50.0, 32.0], [0.0, 0.1, 1.0]], 64, 64, None, "K must be a pinhole matrix"),
    ([[50.0, 0.0, 32.0], [0.0, 50.0, 32.0], [0.0, 0.0, 2.0]], 64, 64, None, "K must be a pinhole matrix"),
    ([[50.0, 0.0, 70.0], [0.0, 50.0, 32.0], [0.0, 0.0, 1.0]], 64, 64, None, r"principal point \(70.0, 32.0\) lies outside"),
    ([[-50.0, 0.0, 32.0], [0.0, 50.0, 32.0], [0.0, 0.0, 1.0]], 64, 64, None, "focal lengths must be positive"),
    ([[float("nan"), 0.0, 32.0], [0.0, 50.0, 32.0], [0.0, 0.0, 1.0]], 64, 64, None, "K contains NaN"),
    (K64, 64.0, 64, None, r"\(height\): must be a whole number of pixels"),
    (K64, 64, True, None, r"\(width\): must be a whole number of pixels"),
    (K64, 64, 10**9, None, r"\(width\): 1000000000 is outside"),
    (K64, 64, 64, torch.eye(4).expand(MAX_PATH_FRAMES + 1, 4, 4), r"\(cameras\): 100001 is outside"),
    (K64, 64, 64, torch.tensor([[[1.0, 0, 0, 2e5], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]]),
     "beyond the limit of 100000 m"),
])
def test_camera_path_refuses_what_no_builder_makes(K, height, width, c2w, message):
    c2w = torch.eye(4)[None] if c2w is None else c2w
    with pytest.raises(ValueError, match=f"CameraPath.*{message}"):
        CameraPath(c2w, torch.tensor(K), height, width)


def test_an_empty_camera_path_is_still_a_value():
    """Slicing past the end gives a path of no camera (as Python slices do); nodes refuse it as an input."""
    assert len(parse_moves("forward 1").slice(20, 30)) == 0


@pytest.mark.parametrize("text, message", [
    ("[" * 100_000 + "]" * 100_000, "brackets nest more than 8 levels deep"),
    (" " * (MAX_JSON_CHARS + 1), f"characters is more than the limit of {MAX_JSON_CHARS}"),
    (_json_with(height=True), "'true' is not a number"),
    (_json_with(height=64.0), "'height' must be a positive whole number"),
    (_json_with(width=10**9), r"\(width\): 1000000000 is outside"),
    (_json_with(K=[[float("nan"), 0, 32], [0, 50, 32], [0, 0, 1]]), "'NaN' is not a number"),
    (_json_with(K=[[1e39, 0, 32], [0, 50, 32], [0, 0, 1]]), "'K' has a value beyond the float32 range"),
    (_json_with(K=[[50, 0, 32], [0, 50, 32], [0, 0, 2]]), "K must be a pinhole matrix"),
    (_json_with(c2w=[[[1, 0, 0, float("-inf")], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]]), "'Infinity' is not a number"),
    (_json_with(c2w=[[[1, 0, 0, 1e6], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]]), "beyond the limit of 100000 m"),
    (_json_with(c2w=[[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]] * (MAX_PATH_FRAMES + 1)),
     f"'c2w' has {MAX_PATH_FRAMES + 1} cameras, more than the limit"),
    (None, "expected text, got NoneType"),
])
def test_json_limits_and_values(text, message):
    with pytest.raises(ValueError, match=f"camera path JSON.*{message}"):
        path_from_json(text)


def test_json_prescan_counts_only_brackets_outside_strings():
    nested_in_a_string = _json_with(format="[[[[[[[[[[[[{{{{{{{{{{")
    with pytest.raises(ValueError, match="'format' must be"):
        path_from_json(nested_in_a_string)
    literal_in_a_string = _json_with(format="true NaN")
    with pytest.raises(ValueError, match="'format' must be"):
        path_from_json(literal_in_a_string)


def test_json_prescan_is_linear_in_the_text():
    """An unterminated string of escaped quotes makes a whole-string regex rescan from every quote (minutes here)."""
    start = time.perf_counter()
    with pytest.raises(ValueError, match="not valid JSON"):
        path_from_json('"' + '\\"' * 1_000_000)
    assert time.perf_counter() - start < 5.0
