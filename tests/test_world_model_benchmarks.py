"""Smoke tests of benchmarks/next_chunk.py and benchmarks/rollout_speed.py, and unit tests of memory.metrics."""
from __future__ import annotations

import dataclasses
import json
import math
import runpy
import sys
from pathlib import Path

import kornia
import pytest
import torch

from memory.world.backbones.mosaic_dit import MosaicDiT
from memory.data.episode import SAMPLE_EPISODE, read_episode, write_episode
from memory.metrics import depth_absrel, frame_grid, machine_info, masked_psnr, psnr, ssim
from memory.world.world_model import load_world_model, save_world_model

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ROOT / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from next_chunk import (CONTEXT, PREDICT, TARGETS, check_frame_sizes, environment_of, episode_files,  # noqa: E402
                        window_starts)
from plots import check_output  # noqa: E402

MINIWORLD = "miniworld==2.1.0 Maze(num_rows=6, num_cols=6, room_size=3)"


@pytest.fixture(scope="module")
def untrained_model(tmp_path_factory) -> Path:
    """A small untrained MosaicDiT saved as a diffusers folder, so the smoke tests do not need the shipped weights."""
    folder = tmp_path_factory.mktemp("model") / "untrained"
    torch.manual_seed(0)
    save_world_model(MosaicDiT(hidden_size=32, depth=1, num_heads=1), folder)
    return folder


def run_script(monkeypatch, name: str, *args: str) -> None:
    """Run a benchmark script as ``__main__`` in this process (sharing its imports keeps the smoke tests fast)."""
    monkeypatch.setattr(sys, "argv", [name, *args])
    threads = torch.get_num_threads()
    try:
        runpy.run_path(str(BENCHMARKS / name), run_name="__main__")
    finally:
        torch.set_num_threads(threads)


def test_next_chunk_quick_writes_finite_metrics(untrained_model, tmp_path, monkeypatch):
    episodes = tmp_path / "episodes"
    sample = read_episode(SAMPLE_EPISODE)
    # two environments, one window each: part of the sample, and another part relabelled as MiniWorld
    for folder, frames, source in (("sim", slice(56, 80), sample.source), ("sim2", slice(80, 104), MINIWORLD)):
        short = dataclasses.replace(sample, rgb=sample.rgb[frames], depth=sample.depth[frames], c2w=sample.c2w[frames],
                                    actions=sample.actions[frames], context_frames=8, source=source)
        write_episode(short, episodes / folder / "short.safetensors")
    out = tmp_path / "next_chunk.json"
    run_script(monkeypatch, "next_chunk.py", "--episodes", str(episodes), "--json", str(out), "--model",
               str(untrained_model), "--quick", "--threads", "1")
    result = json.loads(out.read_text())
    for key in ("model_psnr", "repeat_last_psnr", "warp_only_psnr", "model_ssim", "depth_absrel"):
        assert math.isfinite(result[key]), key
    assert result["windows"] == 2 and result["steps"] == 2 and result["chunk"] == 4
    assert result["frames"] == 2 * PREDICT
    assert len(result["depth_absrel_by_window"]) == 2
    assert sum(result["depth_absrel_by_window"]) / 2 == pytest.approx(result["depth_absrel"], rel=1e-5)
    simulators = ["memory-maze MemoryMaze-9x9 (target_color_in_image=False)",
                  "miniworld Maze(num_rows=6, num_cols=6, room_size=3)"]
    assert list(result["by_simulator"]) == simulators
    environments = result["by_environment"]
    assert list(environments) == ["memory_maze 9x9", "miniworld maze 6x6"]
    assert result["environment_sources"] == {e: [s] for e, s in zip(environments, simulators)}
    for (name, row), simulator in zip(environments.items(), simulators):
        assert row["frames"] == PREDICT
        for key in ("model_psnr", "warp_only_psnr", "model_ssim", "warp_only_ssim", "depth_absrel"):
            assert row[key] == pytest.approx(result["by_simulator"][simulator][key]), (name, key)
        assert row["model_minus_warp_only_psnr"] == pytest.approx(row["model_psnr"] - row["warp_only_psnr"])
        assert row["model_minus_warp_only_ssim"] == pytest.approx(row["model_ssim"] - row["warp_only_ssim"])
    # one window of 8 frames each: the overall mean is the mean of the two
    assert result["model_psnr"] == pytest.approx(sum(r["model_psnr"] for r in environments.values()) / 2, rel=1e-5)
    gaps = {name: row["model_minus_warp_only_psnr"] for name, row in environments.items()}
    assert result["worst_environment"] == min(gaps, key=gaps.get)
    assert result["worst_environment_psnr_minus_warp"] == min(gaps.values())
    assert result["targets"] == TARGETS and TARGETS["model_minus_warp_only_psnr_min_db"] == 1.0
    against = result["against_targets"]
    assert against["worst_environment_psnr_minus_warp_db"] == result["worst_environment_psnr_minus_warp"]
    assert against["met"]["worst_environment_psnr_minus_warp_db"] == (min(gaps.values()) >= -0.3)
    assert against["met"]["model_minus_warp_only_ssim"] == (result["model_ssim"] >= result["warp_only_ssim"])
    assert against["met"]["depth_absrel"] == (result["depth_absrel"] <= 0.10)
    assert against["all_met"] == all(against["met"].values())
    # A stepping walker's warp of the last frame beats repeating it. Geometry first: an untrained network
    # (zero-initialised correction) returns its mosaic, the latest frame warped with holes repeated,
    # which is exactly the warp-only baseline on the first predicted frame.
    assert result["warp_only_psnr"] > result["repeat_last_psnr"]
    assert result["model_psnr_by_frames_ahead"][0] == pytest.approx(result["warp_only_psnr_by_frames_ahead"][0], abs=1e-3)
    # on covered pixels warp-only is the warp itself, so it beats repeating the frame there too
    assert 0 < result["covered_share"] <= 1 and result["warp_only_covered_psnr"] > result["repeat_last_covered_psnr"]
    for row in environments.values():
        assert math.isfinite(row["model_minus_warp_only_covered_psnr"])
    assert result["revisit"] is None or result["revisit"]["frames"] <= result["frames"]
    assert out.with_suffix(".png").stat().st_size > 1000


def test_next_chunk_rejects_a_folder_without_episodes(tmp_path, monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_script(monkeypatch, "next_chunk.py", "--episodes", str(tmp_path), "--json", str(tmp_path / "o.json"),
                   "--model", str(tmp_path), "--quick")
    assert exit_.value.code == 2
    assert "--episodes: no .safetensors episode files" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


def test_default_model_error_tells_to_pass_model(tmp_path, monkeypatch):
    import next_chunk

    monkeypatch.setattr(next_chunk.world_model, "DEFAULT_MODEL", tmp_path / "absent")
    with pytest.raises(ValueError, match="pass --model FOLDER"):
        next_chunk.resolve_model(None)
    assert next_chunk.resolve_model(tmp_path) == tmp_path


def test_rollout_speed_times_64_frames(untrained_model, tmp_path, monkeypatch):
    out = tmp_path / "speed.json"
    run_script(monkeypatch, "rollout_speed.py", "--json", str(out), "--model", str(untrained_model), "--steps", "1",
               "--chunk", "16", "--threads", "1")
    result = json.loads(out.read_text())
    assert math.isfinite(result["seconds_64_frames"]) and result["seconds_64_frames"] > 0
    assert result["frames"] == 64 and result["steps"] == 1 and result["chunk"] == 16
    assert len(result["per_chunk_seconds"]) == 4
    assert out.with_suffix(".png").stat().st_size > 1000


@pytest.mark.parametrize("source, environment", [
    ("memory-maze==1.0.3 MemoryMaze-13x13 (target_color_in_image=False)", "memory_maze 13x13"),
    (MINIWORLD, "miniworld maze 6x6"),
    ("miniworld==2.1.0 FourRooms()", "miniworld fourrooms"),
    ("miniworld==2.1.0 MiniWorld-FourRooms-v0", "miniworld fourrooms"),
    ("miniworld==2.1.0 MiniWorld-WallGap-v0", "miniworld wallgap"),
    ("custom-sim==0.1 Room-5x7", "custom_sim room 5x7"),
    # no versioned package: the source without versions, as simulator_of names it
    ("synthetic corridor, seed 3", "synthetic corridor, seed 3"),
])
def test_environment_of_names_simulator_environment_and_size(source, environment):
    episode = dataclasses.replace(read_episode(SAMPLE_EPISODE), source=source)
    assert environment_of(episode) == environment


def test_window_starts_spread_over_episodes_and_skip_short_ones():
    starts = window_starts([100, 5, 40], 5)
    assert [i for i, _ in starts] == [0, 0, 0, 2, 2]
    for i, start in starts:
        assert 0 <= start <= [100, 5, 40][i] - CONTEXT - PREDICT
    assert len({s for i, s in starts if i == 0}) == 3
    with pytest.raises(ValueError, match="--episodes"):
        window_starts([11], 1)


def test_window_starts_never_measure_a_window_twice():
    # a 12-frame episode holds one window, a 14-frame one three: asking for more gives those, once each
    assert window_starts([CONTEXT + PREDICT], 40) == [(0, 0)]
    starts = window_starts([CONTEXT + PREDICT + 2, 100], 10)
    assert len(starts) == len(set(starts)) == 10
    assert sorted(s for i, s in starts if i == 0) == [0, 1, 2]
    assert len(window_starts([CONTEXT + PREDICT + 2], 1000)) == 3


def test_episode_files_follow_linked_folders_once_and_skip_folders(tmp_path):
    root = tmp_path / "episodes"
    (root / "a").mkdir(parents=True)
    (root / "a" / "x.safetensors").write_bytes(b"")
    (root / "b.safetensors").mkdir()  # a folder with an episode's suffix is not an episode
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "y.safetensors").write_bytes(b"")
    (root / "linked").symlink_to(outside, target_is_directory=True)
    (root / "again").symlink_to(root / "a", target_is_directory=True)
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)
    assert episode_files(root) == [root / "a" / "x.safetensors", root / "linked" / "y.safetensors"]


def test_check_output_refuses_paths_that_cannot_take_the_results(tmp_path):
    check_output(tmp_path / "new" / "result.json")
    with pytest.raises(ValueError, match="--json: .*plot.png ends in .png"):
        check_output(tmp_path / "plot.png")
    with pytest.raises(ValueError, match="--json: .* is a folder"):
        check_output(tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="--json: .*file is a file"):
        check_output(tmp_path / "file" / "result.json")


def test_check_frame_sizes_names_the_episode_and_the_patch_size(untrained_model):
    model = load_world_model(untrained_model)
    sample = read_episode(SAMPLE_EPISODE)
    check_frame_sizes([Path("ok.safetensors")], [sample], model)
    cropped = dataclasses.replace(sample, rgb=sample.rgb[:, :60, :60], depth=sample.depth[:, :60, :60])
    with pytest.raises(ValueError, match=r"--episodes: odd.safetensors has 60x60 frames; .* multiples of 8"):
        check_frame_sizes([Path("ok.safetensors"), Path("odd.safetensors")], [sample, cropped], model)


def test_next_chunk_leaves_out_short_episodes_and_caps_windows(untrained_model, tmp_path, monkeypatch, capsys):
    sample = read_episode(SAMPLE_EPISODE)
    episodes = tmp_path / "episodes"
    for name, frames in (("long", slice(56, 70)), ("short", slice(0, 10))):
        cut = dataclasses.replace(sample, rgb=sample.rgb[frames], depth=sample.depth[frames], c2w=sample.c2w[frames],
                                  actions=sample.actions[frames], context_frames=4)
        write_episode(cut, episodes / f"{name}.safetensors")
    out = tmp_path / "next_chunk.json"
    run_script(monkeypatch, "next_chunk.py", "--episodes", str(episodes), "--json", str(out), "--model",
               str(untrained_model), "--windows", "40", "--steps", "1", "--threads", "1")
    result = json.loads(out.read_text())
    # 14 frames hold windows starting at 0, 1 and 2; the 10-frame episode holds none
    assert result["windows"] == 3 and result["windows_requested"] == 40
    assert sorted(s for _, s in result["window_starts"]) == [0, 1, 2]
    assert result["episodes"] == [str(episodes / "long.safetensors")]
    assert result["skipped_episodes"] == [str(episodes / "short.safetensors")]
    err = capsys.readouterr().err
    assert "left out 1 episode(s) shorter than the 12 frames" in err and "3 distinct windows" in err


@pytest.mark.parametrize("option", ["--windows", "--steps"])
def test_next_chunk_refuses_zero_windows_or_steps(tmp_path, monkeypatch, capsys, option):
    with pytest.raises(SystemExit) as exit_:
        run_script(monkeypatch, "next_chunk.py", "--episodes", str(tmp_path), "--json", str(tmp_path / "o.json"),
                   option, "0")
    assert exit_.value.code == 2
    assert f"{option} must be at least 1, got 0" in capsys.readouterr().err


def test_psnr_matches_kornia_and_caps_identical_frames():
    torch.manual_seed(0)
    a, b = torch.rand(3, 16, 16, 3), torch.rand(3, 16, 16, 3)
    values = psnr(a, b)
    assert values.shape == (3,)
    assert torch.allclose(values[1], kornia.metrics.psnr(a[1], b[1], 1.0), atol=1e-4)
    assert psnr(a, a).tolist() == pytest.approx([100.0] * 3)


def test_masked_psnr_counts_only_masked_pixels():
    torch.manual_seed(0)
    a = torch.rand(2, 8, 8, 3)
    b = a.clone()
    b[:, :, 4:] = 0.5  # wrong only outside the mask
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[:, :, :4] = True
    assert masked_psnr(b, a, mask).tolist() == pytest.approx([100.0] * 2)
    assert torch.allclose(masked_psnr(b, a, ~mask), psnr(b[:, :, 4:], a[:, :, 4:]))
    assert masked_psnr(b, a, torch.zeros_like(mask)).isnan().all()
    with pytest.raises(ValueError, match="masked_psnr"):
        masked_psnr(a, b, mask[:, :4])


def test_ssim_is_one_for_identical_frames_and_lower_for_noise():
    torch.manual_seed(0)
    a = torch.rand(2, 32, 32, 3)
    assert ssim(a, a).tolist() == pytest.approx([1.0, 1.0], abs=1e-4)
    assert (ssim(a, (a + 0.3 * torch.randn_like(a)).clamp(0, 1)) < 0.9).all()


def test_depth_absrel_of_scaled_depth_ignores_invalid_pixels():
    target = torch.rand(2, 8, 8) * 5 + 1
    pred = target * 1.1
    target[:, :2] = 0
    pred[:, :2] = 123.0
    assert depth_absrel(pred, target).tolist() == pytest.approx([0.1, 0.1], abs=1e-5)
    assert math.isnan(float(depth_absrel(pred[:1], torch.zeros(1, 8, 8))[0]))


def test_metrics_reject_mismatched_shapes():
    with pytest.raises(ValueError, match="psnr: prediction"):
        psnr(torch.zeros(1, 8, 8, 3), torch.zeros(1, 8, 9, 3))
    with pytest.raises(ValueError, match="depth_absrel"):
        depth_absrel(torch.zeros(1, 8, 8, 3), torch.zeros(1, 8, 8, 3))


def test_frame_grid_places_frames_row_major():
    frames = torch.stack([torch.full((4, 5, 3), v) for v in (0.0, 0.5, 1.0)])
    grid = frame_grid(frames, columns=2, gap=1)
    assert grid.shape == (2 * 5, 2 * 6, 3) and grid.dtype == torch.uint8
    assert int(grid[0, 0, 0]) == 0 and int(grid[0, 6, 0]) == 128 and int(grid[5, 0, 0]) == 255
    assert int(grid[4, 0, 0]) == 255  # gap row


def test_machine_info_names_cpus_and_threads():
    info = machine_info()
    assert info["cpus"] >= 1 and info["threads"] >= 1 and info["torch"] == torch.__version__


@pytest.mark.parametrize("script, args, message", [
    ("next_chunk.py", ["--steps", "5000"], "--steps must be at most 1000, got 5000"),
    ("next_chunk.py", ["--seed", "-1"], "--seed must be at least 0, got -1"),
    ("drift.py", ["--bin", "1000000"], "--bin must be at most 100000, got 1000000"),
    ("drift.py", ["--threads", "100000"], "--threads must be at most 1024, got 100000"),
])
def test_sweeps_refuse_options_beyond_their_limits(tmp_path, monkeypatch, capsys, script, args, message):
    with pytest.raises(SystemExit) as exit_:
        run_script(monkeypatch, script, "--episodes", str(tmp_path), "--json", str(tmp_path / "o.json"), *args)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("script", ["rollout_speed.py", "rollout_cost.py", "patch_memory.py", "revisit.py"])
def test_every_benchmark_refuses_a_json_path_its_plot_would_replace(tmp_path, monkeypatch, capsys, script):
    args = ["--episodes", str(tmp_path)] if script == "revisit.py" else []
    with pytest.raises(SystemExit) as exit_:
        run_script(monkeypatch, script, *args, "--json", str(tmp_path / "result.png"))
    assert exit_.value.code == 2
    assert "argument --json: " in capsys.readouterr().err
    assert not (tmp_path / "result.png").exists()
