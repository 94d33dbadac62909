"""Smoke test of benchmarks/drift.py on a tiny untrained model, and unit tests of its metrics in memory.metrics."""
from __future__ import annotations

import dataclasses
import json
import math
import statistics

import kornia
import pytest
import torch

from memory.data.episode import SAMPLE_EPISODE, read_episode, write_episode
from memory.metrics import colour_histogram, histogram_intersection, sharpness, sharpness_ratio

# the untrained-model fixture and the in-process script runner of the other benchmarks' smoke tests
from test_world_model_benchmarks import run_script, untrained_model  # noqa: F401

import drift  # noqa: E402  (benchmarks/ is on sys.path once test_world_model_benchmarks is imported)

MINIWORLD = "miniworld==2.1.0 Maze(num_rows=6, num_cols=6, room_size=3)"
GENERATED = 29
BIN = 10


@pytest.fixture(scope="module")
def episodes(tmp_path_factory):
    """Two episodes of two environments: 30 frames of the sample (Memory Maze 9x9), 40 of it relabelled MiniWorld 6x6."""
    folder = tmp_path_factory.mktemp("episodes")
    sample = read_episode(SAMPLE_EPISODE)

    def cut(frames: slice, **changes):
        return dataclasses.replace(sample, rgb=sample.rgb[frames], depth=sample.depth[frames], c2w=sample.c2w[frames],
                                   actions=sample.actions[frames], context_frames=8, **changes)

    write_episode(cut(slice(0, 30)), folder / "memory_maze" / "maze.safetensors")
    # 40 frames, so --max-frames caps it to the first one's 29 generated frames
    write_episode(cut(slice(60, 100), source=MINIWORLD), folder / "miniworld" / "world.safetensors")
    return folder


def test_drift_bins_two_environments(untrained_model, episodes, tmp_path, monkeypatch):  # noqa: F811
    out = tmp_path / "drift.json"
    run_script(monkeypatch, "drift.py", "--episodes", str(episodes), "--json", str(out), "--model", str(untrained_model),
               "--max-frames", str(GENERATED), "--bin", str(BIN), "--threads", "1")
    result = json.loads(out.read_text())
    rows = [r for e in result["episodes"] for r in e["bins"]]
    assert [e["environment"] for e in result["episodes"]] == ["memory_maze 9x9", "miniworld maze 6x6"]
    assert [e["frames"] for e in result["episodes"]] == [GENERATED, GENERATED]
    # frame 0 is given: bin 0 holds frames 1..9, then 10..19 and 20..29
    assert [(b["start"], b["stop"], b["episodes"]) for b in result["bins"]] == [(1, 10, 2), (10, 20, 2), (20, 30, 2)]
    for r in rows:
        assert 0 <= r["histogram_intersection"] <= 1 and 0 < r["true_histogram_intersection"] <= 1
        assert 0 < r["sharpness_ratio"] < 10 and -1 <= r["ssim"] <= 1 and 0 < r["psnr"] < 100
    assert result["histogram_intersection_mean"] == pytest.approx(statistics.fmean(r["histogram_intersection"] for r in rows))
    assert result["sharpness_ratio_median"] == pytest.approx(statistics.median(r["sharpness_ratio"] for r in rows))
    assert list(result["by_simulator"]) == ["memory_maze 9x9", "miniworld maze 6x6"]
    for name, episode in zip(result["by_simulator"], result["episodes"]):
        row = result["by_simulator"][name]
        assert row["sources"] == [episode["source"]] and row["episodes"] == 1
        for key in ("psnr", "ssim", "histogram_intersection", "true_histogram_intersection",
                    "warp_only_histogram_intersection", "warp_only_psnr"):
            assert row[f"{key}_mean"] == pytest.approx(statistics.fmean(b[key] for b in episode["bins"])), (name, key)
        assert [b["sharpness_ratio"] for b in row["bins"]] == pytest.approx([b["sharpness_ratio"] for b in episode["bins"]])
    # the reference is the bin's true frames against all of the episode's (here the 30-frame one's frames 10..19)
    maze = read_episode(episodes / "memory_maze" / "maze.safetensors")
    true = maze.rgb.float() / 255
    assert result["episodes"][0]["bins"][1]["true_histogram_intersection"] == pytest.approx(
        histogram_intersection(true[10:20], true))
    # warp-only: frame 0 splatted into each camera; where the camera has not moved it is frame 0 itself
    warped = drift.warp_first_frame(maze, 30)
    assert warped.shape == (29, *true.shape[1:])
    assert result["episodes"][0]["bins"][1]["warp_only_histogram_intersection"] == pytest.approx(
        histogram_intersection(warped[9:19], true))
    assert result["warp_only_histogram_intersection_mean"] == pytest.approx(
        statistics.fmean(r["warp_only_histogram_intersection"] for r in rows))
    # the true first frame warped is nearer the next frames than an untrained network's output
    assert result["bins"][0]["warp_only_psnr"] > result["bins"][0]["psnr"]
    against = result["against_targets"]
    assert against["histogram_intersection_mean"] == (result["histogram_intersection_mean"] >= 0.65)
    assert against["sharpness_ratio_median"] == (0.8 <= result["sharpness_ratio_median"] <= 1.25)
    assert set(against["by_simulator"]) == set(result["by_simulator"])
    assert result["targets"] == {"histogram_intersection_mean_min": 0.65, "sharpness_ratio_range": [0.8, 1.25]}
    assert result["settings"]["bin"] == BIN and result["settings"]["max_frames"] == GENERATED
    assert result["machine"]["threads"] == 1 and result["wall_seconds"] > 0
    assert out.with_suffix(".png").stat().st_size > 1000


@pytest.mark.parametrize("args, message", [(["--bin", "0"], "--bin must be at least 1"),
                                           (["--max-frames", "-3"], "--max-frames must be at least 1"),
                                           ([], "--episodes: no .safetensors episode files"),
                                           (["--json", "plot.png"], "--json: plot.png ends in .png")])
def test_drift_refuses_bad_options(tmp_path, monkeypatch, capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        run_script(monkeypatch, "drift.py", "--episodes", str(tmp_path), "--json", str(tmp_path / "o.json"),
                   "--model", str(tmp_path), *args)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


def test_episode_bins_count_frames_from_the_episode_start():
    sample = read_episode(SAMPLE_EPISODE)
    generated = sample.rgb[1:8].float() / 255  # the true frames 1..7 as if generated
    repeated = (sample.rgb[:1].float() / 255).expand(7, -1, -1, -1)  # frame 0 as the warp-only frames
    bins = drift.episode_bins(generated, repeated, sample, 3)
    assert [(b["start"], b["stop"]) for b in bins] == [(1, 3), (3, 6), (6, 8)]
    assert all(b["sharpness_ratio"] == pytest.approx(1.0) and b["psnr"] == pytest.approx(100.0) for b in bins)
    assert all(b["histogram_intersection"] == pytest.approx(b["true_histogram_intersection"]) for b in bins)
    truth = sample.rgb.float() / 255
    assert [b["warp_only_histogram_intersection"] for b in bins] == pytest.approx(
        [histogram_intersection(truth[:1], truth)] * 3)
    assert all(b["warp_only_psnr"] < 100.0 for b in bins)
    # one-frame bins: bin 0 holds only the given frame and is left out
    assert [b["start"] for b in drift.episode_bins(generated, repeated, sample, 1)] == list(range(1, 8))


def test_colour_histogram_bins_each_channel_in_eighths():
    frames = torch.tensor([[[[0.0, 0.124, 1.0], [0.126, 0.5, 0.999]]]])  # [1,1,2,3]
    histogram = colour_histogram(frames)
    assert histogram.shape == (8, 8, 8) and float(histogram.sum()) == pytest.approx(1.0)
    assert float(histogram[0, 0, 7]) == 0.5 and float(histogram[1, 4, 7]) == 0.5
    with pytest.raises(ValueError, match=r"colour_histogram: frames must be \[N,H,W,3\]"):
        colour_histogram(torch.zeros(4, 4, 3))


def test_histogram_intersection_identical_disjoint_and_partial():
    torch.manual_seed(0)
    frames = torch.rand(2, 16, 16, 3)
    assert histogram_intersection(frames, frames) == pytest.approx(1.0)
    # normalised: the same colours in the same proportions over more frames
    assert histogram_intersection(frames, torch.cat([frames, frames])) == pytest.approx(1.0)
    red, blue = torch.zeros(1, 8, 8, 3), torch.zeros(1, 8, 8, 3)
    red[..., 0], blue[..., 2] = 1.0, 1.0
    assert histogram_intersection(red, blue) == 0.0
    half, quarter = torch.zeros(1, 4, 4, 3), torch.zeros(1, 4, 4, 3)
    half[:, :2], quarter[:, :1] = 1.0, 1.0
    # half white vs a quarter white: min(1/2, 1/4) white + min(1/2, 3/4) black
    assert histogram_intersection(half, quarter) == pytest.approx(0.75)


def test_sharpness_of_a_ramp_and_of_a_flat_frame():
    width = 16
    ramp = torch.linspace(0, 1, width).view(1, 1, width, 1).expand(1, 8, width, 3)
    # a step of 1/(width-1) a column, halved at the replicated borders, zero vertically: averaged over x and y
    assert sharpness(ramp).tolist() == pytest.approx([1 / (2 * width)])
    assert sharpness(torch.full((2, 8, 8, 3), 0.3)).tolist() == [0.0, 0.0]


def test_sharpness_ratio_of_blurred_copies():
    torch.manual_seed(0)
    frames = torch.rand(3, 32, 32, 3)
    blurred = kornia.filters.gaussian_blur2d(frames.movedim(-1, 1), (5, 5), (1.5, 1.5)).movedim(1, -1)
    assert sharpness_ratio(frames, frames) == 1.0
    assert sharpness_ratio(blurred, frames) < 0.5
    assert sharpness_ratio(frames, blurred) > 2.0
    assert math.isnan(sharpness_ratio(frames, torch.full_like(frames, 0.5)))
    # a flat frame stays flat under float rounding (an 8-bit grey through a colour conversion): no ratio either
    rounded = torch.full_like(frames, 128 / 255) + 1e-8 * torch.randn_like(frames)
    assert math.isnan(sharpness_ratio(frames, rounded))
    # while one 8-bit step across a frame is content
    step = torch.zeros(1, 64, 64, 3)
    step[:, :, 32:, 0] = 1 / 255
    assert math.isfinite(sharpness_ratio(step, step))
