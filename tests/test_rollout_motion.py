"""A 64-frame rollout of the embedded default model follows its camera path: turns turn, forward moves forward."""
from __future__ import annotations

import pytest
import torch

from memory.geometry.camera import CameraPath
from memory.data.episode import SAMPLE_EPISODE, read_episode
from memory.geometry.projection import backward_warp
from memory.metrics import depth_absrel, psnr
from memory.geometry.paths import parse_moves
from memory.world.rollout import navigate
from memory.world.world_model import DEFAULT_MODEL, load_world_model

MOVES = "turn_left 90; forward 1; turn_right 90; forward 1; turn_right 75"


@pytest.fixture(scope="module")
def model():
    """The embedded default world model, loaded once for the module."""
    return load_world_model(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def rollout(model):
    """64 frames generated from the sample episode's last frame along MOVES."""
    episode = read_episode(SAMPLE_EPISODE)
    path = parse_moves(MOVES, start_c2w=episode.c2w[-1], K=episode.K, height=64, width=64, step_m=0.1, step_deg=6.0)
    assert len(path) == 64
    torch.manual_seed(0)
    chunks = list(navigate(model, episode.rgb[-1:].float() / 255, episode.depth[-1:], path))
    return torch.cat([c.rgb for c in chunks]), torch.cat([c.depth for c in chunks]), path


def pair_error(rgb, depth, path, t, motion):
    """Mean colour error between frame t+1 and frame t warped by ``motion`` (true, none or reversed camera motion)."""
    src, dst = path.c2w[t], path.c2w[t + 1]
    relative = torch.linalg.inv(src) @ dst
    target = {"true": dst, "none": src, "reversed": src @ torch.linalg.inv(relative)}[motion]
    warped, valid = backward_warp(rgb[t], depth[t], src, depth[t + 1], target, path.K)
    if int(valid.sum()) < 100:
        return None
    return float((warped[valid] - rgb[t + 1][valid]).abs().mean())


def test_rollout_has_one_frame_per_camera_with_depth(rollout):
    rgb, depth, path = rollout
    assert rgb.shape == (64, 64, 64, 3) and depth.shape == (64, 64, 64)
    assert float((depth > 0).float().mean()) > 0.5
    assert float(rgb[1:].std()) > 0.05  # not a blank video


@pytest.mark.parametrize("segment, frames", [("turn", range(0, 15)), ("forward", range(15, 25)),
                                             ("turn_back", range(25, 40))])
def test_generated_motion_matches_the_camera_motion(rollout, segment, frames):
    rgb, depth, path = rollout
    errors = {m: [e for t in frames if (e := pair_error(rgb, depth, path, t, m)) is not None]
              for m in ("true", "none", "reversed")}
    mean = {m: sum(v) / len(v) for m, v in errors.items() if v}
    assert mean["true"] < mean["none"], (segment, mean)
    assert mean["true"] < mean["reversed"], (segment, mean)


@pytest.mark.parametrize("start", [0, 40])
def test_rollout_finds_the_initial_view_again_when_the_camera_returns(model, start):
    """Out 7 frames along the sample episode's cameras and back: the last frame, at the initial camera, is the initial frame.

    Without the initial frame in every chunk's mosaic (only the latest generated frame warped) this
    scored 17.5 and 20.6 dB; with it 35.2 and 27.8 dB (embedded model, step 20000).
    """
    episode = read_episode(SAMPLE_EPISODE)
    cameras = list(range(start, start + 8)) + list(range(start + 6, start - 1, -1))
    path = CameraPath(episode.c2w[cameras], episode.K, episode.height, episode.width)
    first = episode.rgb[start:start + 1].float() / 255
    chunks = list(navigate(model, first, episode.depth[start:start + 1], path))
    rgb, depth = torch.cat([c.rgb for c in chunks]), torch.cat([c.depth for c in chunks])
    assert len(rgb) == len(path)
    assert float(psnr(rgb[-1:], first)) > 25.0
    assert float(depth_absrel(depth[-1:], episode.depth[start:start + 1])) < 0.1
