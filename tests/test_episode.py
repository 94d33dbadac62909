"""come-episode/1: round trip, validation of bad input, revisit detection, and the committed sample."""
from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from memory.geometry.camera import intrinsics_from_fov, look_rotation, pose_matrix
from memory.data.episode import (
    Episode, read_episode, reprojection_overlap, reprojection_psnr, revisit_frames, revisit_pairs, write_episode,
)
from memory.data.sim.trajectories import OccupancyGrid, explore_and_revisit

SAMPLE = Path(__file__).resolve().parent.parent / "memory" / "data" / "sample_episode.safetensors"


def make_episode(t: int = 6, h: int = 8, w: int = 10, context: int = 3) -> Episode:
    """A small synthetic episode: a camera walking along +x, looking along +x."""
    gen = torch.Generator().manual_seed(0)
    yaw = torch.zeros(t)
    pos = torch.stack([torch.arange(t, dtype=torch.float32) * 0.5, torch.zeros(t), torch.full((t,), 1.2)], -1)
    return Episode(
        rgb=torch.randint(0, 256, (t, h, w, 3), dtype=torch.uint8, generator=gen),
        depth=torch.rand(t, h, w, generator=gen) * 5 + 0.5,
        c2w=pose_matrix(look_rotation(yaw), pos),
        K=intrinsics_from_fov(h, w, 60.0),
        actions=torch.arange(t, dtype=torch.int64) % 6,
        source="synthetic",
        seed=7,
        context_frames=context,
        description="test episode",
    )


def test_round_trip_keeps_every_field(tmp_path: Path) -> None:
    episode = make_episode()
    path = write_episode(episode, tmp_path / "ep.safetensors")
    back = read_episode(path)
    assert torch.equal(back.rgb, episode.rgb)
    assert torch.equal(back.c2w, episode.c2w) and torch.equal(back.K, episode.K)
    assert torch.equal(back.actions, episode.actions)
    # depth is stored as float16: relative error below 2^-11.
    assert back.depth.dtype == torch.float32
    assert torch.allclose(back.depth, episode.depth, rtol=1e-3, atol=0)
    assert (back.source, back.seed, back.context_frames, back.description) == ("synthetic", 7, 3, "test episode")
    assert back.cameras.height == 8 and back.cameras.width == 10 and len(back.cameras) == 6


def test_file_layout_matches_the_format(tmp_path: Path) -> None:
    from safetensors import safe_open

    path = write_episode(dataclasses.replace(make_episode(), actions=None), tmp_path / "ep.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert set(f.keys()) == {"rgb", "depth", "c2w", "K"}
        assert f.get_tensor("depth").dtype == torch.float16
        assert f.metadata() == {"format": "come-episode/1", "source": "synthetic", "seed": "7", "context_frames": "3",
                                "description": "test episode"}
    assert read_episode(path).actions is None


def replaced(**changes: object) -> dict[str, object]:
    return {f.name: getattr(make_episode(), f.name) for f in dataclasses.fields(Episode)} | changes


def with_depth(fn) -> torch.Tensor:
    depth = make_episode().depth.clone()
    fn(depth)
    return depth


def bad_rotation() -> torch.Tensor:
    c2w = make_episode().c2w.clone()
    c2w[2, :3, :3] *= 1.1
    return c2w


def bad_k(i: int, j: int, value: float) -> torch.Tensor:
    K = make_episode().K.clone()
    K[i, j] = value
    return K


BAD_CASES = {
    "frame count": (dict(depth=make_episode().depth[:5]), "frame counts disagree"),
    "camera count": (dict(c2w=make_episode().c2w[:4]), "frame counts disagree"),
    "frame size": (dict(depth=torch.ones(6, 8, 9)), "resize depth"),
    "nan depth": (dict(depth=with_depth(lambda d: d[2, 1, 1].fill_(math.nan))), "frame 2 contains NaN"),
    "inf depth": (dict(depth=with_depth(lambda d: d[4, 0, 0].fill_(math.inf))), "frame 4 contains NaN or inf"),
    "negative depth": (dict(depth=with_depth(lambda d: d[1, 3, 3].fill_(-1.0))), "frame 1 is negative"),
    "all-zero depth": (dict(depth=with_depth(lambda d: d[3].zero_())), "frame 3 is all zero"),
    "rotation": (dict(c2w=bad_rotation()), "rotation of camera 2 is not orthonormal"),
    "focal": (dict(K=bad_k(0, 0, -5.0)), "focal lengths must be positive"),
    "principal point": (dict(K=bad_k(0, 2, 50.0)), "principal point"),
    "K last row": (dict(K=bad_k(2, 0, 1.0)), "K must be"),
    "context zero": (dict(context_frames=0), "context_frames = 0 is outside [1, 6)"),
    "context all": (dict(context_frames=6), "context_frames = 6 is outside [1, 6)"),
    "rgb dtype": (dict(rgb=make_episode().rgb.float()), "rgb must be torch.uint8"),
    "depth dtype": (dict(depth=make_episode().depth.double()), "depth must be torch.float32"),
    "c2w dtype": (dict(c2w=make_episode().c2w.double()), "c2w must be torch.float32"),
    "actions dtype": (dict(actions=torch.zeros(6, dtype=torch.int32)), "actions must be torch.int64"),
    "actions count": (dict(actions=torch.zeros(5, dtype=torch.int64)), "actions has 5 entries"),
    "rgb channels": (dict(rgb=torch.zeros(6, 8, 10, 4, dtype=torch.uint8)), "rgb must be [T,H,W,3]"),
    "seed type": (dict(seed="7"), "seed must be int"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_invalid_episode_is_rejected_with_a_clear_error(case: str) -> None:
    changes, message = BAD_CASES[case]
    with pytest.raises(ValueError, match=re.escape(message)):
        Episode(**replaced(**changes))


def test_writer_revalidates_and_writes_nothing_when_invalid(tmp_path: Path) -> None:
    episode = make_episode()
    episode.depth[0, 0, 0] = math.nan  # tensors are mutable even in a frozen dataclass
    target = tmp_path / "ep.safetensors"
    with pytest.raises(ValueError, match=f"{re.escape(str(target))}.*NaN"):
        write_episode(episode, target)
    assert list(tmp_path.iterdir()) == []


def test_writer_rejects_depth_beyond_float16(tmp_path: Path) -> None:
    depth = make_episode().depth.clone()
    depth[0, 0, 0] = 1e6
    with pytest.raises(ValueError, match="float16 range"):
        write_episode(Episode(**replaced(depth=depth)), tmp_path / "ep.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_reader_names_the_file_for_bad_content(tmp_path: Path) -> None:
    episode = make_episode()
    path = tmp_path / "neg.safetensors"
    save_file({"rgb": episode.rgb, "depth": (-episode.depth).half(), "c2w": episode.c2w, "K": episode.K}, str(path),
              metadata={"format": "come-episode/1", "source": "x", "seed": "0", "context_frames": "3", "description": ""})
    with pytest.raises(ValueError, match=re.escape(f"{path}: depth of frame 0 is negative")):
        read_episode(path)


@pytest.mark.parametrize(
    "tensors, metadata, message",
    [
        ("float32 depth", {"context_frames": "3"}, "stores float16"),
        ("ok", {"context_frames": "three"}, "context_frames = 'three' is not an integer"),
        ("ok", {"format": "come-memory/1"}, "expected 'come-episode/1'"),
        ("ok", {"seed": None}, "missing seed"),
        ("no depth", {}, "missing depth"),
    ],
)
def test_reader_rejects_malformed_files(tmp_path: Path, tensors: str, metadata: dict, message: str) -> None:
    episode = make_episode()
    data = {"rgb": episode.rgb, "depth": episode.depth.half(), "c2w": episode.c2w, "K": episode.K}
    if tensors == "float32 depth":
        data["depth"] = episode.depth
    if tensors == "no depth":
        del data["depth"]
    meta = {"format": "come-episode/1", "source": "x", "seed": "0", "context_frames": "3", "description": ""} | metadata
    path = tmp_path / "bad.safetensors"
    save_file(data, str(path), metadata={k: v for k, v in meta.items() if v is not None})
    with pytest.raises(ValueError, match=message):
        read_episode(path)


def test_reader_rejects_missing_and_corrupted_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        read_episode(tmp_path / "nope.safetensors")
    path = write_episode(make_episode(), tmp_path / "ep.safetensors")
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="corrupted"):
        read_episode(path)


def test_revisit_frames_follow_the_definition() -> None:
    # Context: frames 0-2 at x = 0, 1, 2 looking along +x. Predicted frames probe the 1.0 m / 30 deg limits.
    pos = torch.tensor([[0, 0, 1], [1, 0, 1], [2, 0, 1], [2.9, 0, 1], [3.1, 0, 1], [1, 0.5, 1], [1, 0, 1], [1, 0, 1]],
                       dtype=torch.float32)
    yaw = torch.tensor([0, 0, 0, 0, 0, 0, math.radians(29), math.radians(31)])
    episode = Episode(**replaced(
        rgb=torch.zeros(8, 8, 10, 3, dtype=torch.uint8), depth=torch.ones(8, 8, 10),
        c2w=pose_matrix(look_rotation(yaw), pos), actions=None,
    ))
    assert revisit_frames(episode) == [3, 5, 6]
    assert revisit_pairs(episode) == [(2, 3), (1, 5), (1, 6)]


def test_reprojection_of_a_flat_wall_is_exact() -> None:
    # A fronto-parallel textured wall seen from two cameras: warping must reproduce the shared pixels.
    h = w = 32
    K = intrinsics_from_fov(h, w, 60.0)
    pos = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.2, 1.0]])
    c2w = pose_matrix(look_rotation(torch.zeros(2)), pos)
    # Wall at x = 4: every camera sees z-depth 4; colour is a smooth function of the wall's y, z.
    from memory.geometry.projection import lift_frame

    rgb = []
    for i in range(2):
        pts, _ = lift_frame(torch.full((h, w), 4.0), K, c2w[i])
        rgb.append(torch.stack([(torch.sin(pts[..., 1] * 3) + 1) / 2, (torch.cos(pts[..., 2] * 3) + 1) / 2,
                                torch.full((h, w), 0.5)], -1))
    episode = Episode(**replaced(
        rgb=(torch.stack(rgb) * 255).round().to(torch.uint8), depth=torch.full((2, h, w), 4.0), c2w=c2w, K=K,
        actions=None, context_frames=1,
    ))
    assert reprojection_overlap(episode, 0, 1) > 0.8
    assert reprojection_psnr(episode, 0, 1) > 35.0
    # The same pair with camera 1's sideways offset mirrored (a sign-convention error) must fail the check.
    wrong = c2w.clone()
    wrong[1, 1, 3] = -wrong[1, 1, 3]
    assert reprojection_psnr(dataclasses.replace(episode, c2w=wrong), 0, 1) < reprojection_psnr(episode, 0, 1) - 10


def test_sample_episode_is_a_good_explore_then_revisit_episode() -> None:
    assert SAMPLE.stat().st_size <= 3 * 1024 * 1024
    episode = read_episode(SAMPLE)
    assert (episode.height, episode.width) == (64, 64) and 100 <= len(episode) <= 140
    assert episode.source.startswith("memory-maze") and episode.actions is not None
    revisits = revisit_frames(episode)
    assert len(revisits) >= 20
    # Same geometric self-check as tests/test_sim_episodes.py (threshold and measurements there).
    pairs = [(s, t) for s, t in revisit_pairs(episode, min_overlap=0.25) if not torch.allclose(episode.c2w[s], episode.c2w[t], atol=1e-4)]
    assert len(pairs) >= 20
    psnr = [reprojection_psnr(episode, s, t) for s, t in pairs]
    assert sum(psnr) / len(psnr) > 30.0


def test_trajectories_are_deterministic_smooth_and_collision_free() -> None:
    free = torch.ones(12, 12, dtype=torch.bool)
    free[0, :] = free[-1, :] = free[:, 0] = free[:, -1] = False
    free[3:9, 6] = False  # a wall in the middle of the room
    grid = OccupancyGrid(free.numpy(), 0.5, (0.0, 0.0))
    a = explore_and_revisit(grid, 80, 40, seed=3)
    b = explore_and_revisit(grid, 80, 40, seed=3)
    c = explore_and_revisit(grid, 80, 40, seed=4)
    assert len(a) == 80 and (a.xy == b.xy).all() and (a.yaw == b.yaw).all() and (a.actions == b.actions).all()
    assert not ((a.xy[:40] == c.xy[:40]).all() and (a.yaw[:40] == c.yaw[:40]).all())
    assert all(grid.is_free_xy(p) for p in a.xy)
    step = torch.from_numpy(a.xy[1:] - a.xy[:-1]).norm(dim=-1)
    turn = torch.from_numpy((a.yaw[1:] - a.yaw[:-1] + math.pi) % (2 * math.pi) - math.pi).abs()
    assert step.max() <= 0.3 + 1e-6 and turn.max() <= math.radians(22.5) + 1e-6
    assert step.sum() > 5.0


@pytest.mark.parametrize("tensors, metadata, message", [
    ("ok", {"context_frames": "\u0663"}, "context_frames = '\u0663' is not an integer"),
    ("ok", {"seed": "1_0"}, "seed = '1_0' is not an integer"),
    ("ok", {"seed": "-1"}, "seed = -1 is outside"),
    ("extra", {}, r"unexpected tensors \['extra'\]"),
])
def test_reader_refuses_what_int_and_extra_tensors_would_let_through(tmp_path: Path, tensors: str, metadata: dict,
                                                                     message: str) -> None:
    episode = make_episode()
    data = {"rgb": episode.rgb, "depth": episode.depth.half(), "c2w": episode.c2w, "K": episode.K}
    if tensors == "extra":
        data["extra"] = torch.zeros(2)
    meta = {"format": "come-episode/1", "source": "x", "seed": "0", "context_frames": "3", "description": ""} | metadata
    path = tmp_path / "bad.safetensors"
    save_file(data, str(path), metadata=meta)
    with pytest.raises(ValueError, match=f"^episode: {re.escape(str(path))}: .*{message}"):
        read_episode(path)
