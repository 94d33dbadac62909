"""Smoke tests of benchmarks/revisit.py and benchmarks/rollout_cost.py on a tiny untrained model and short runs."""
from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from memory.data.episode import SAMPLE_EPISODE, read_episode, revisit_frames, write_episode

# the untrained-model fixture and the in-process script runner of the other benchmarks' smoke tests
from test_world_model_benchmarks import run_script, untrained_model  # noqa: F401

import revisit  # noqa: E402  (benchmarks/ is on sys.path once test_world_model_benchmarks is imported)
import rollout_cost  # noqa: E402

GENERATED = 8


@pytest.fixture(scope="module")
def episodes(tmp_path_factory):
    """Two short episodes with revisits among their first generated frames: the sample and a slice of it."""
    folder = tmp_path_factory.mktemp("episodes")
    sample = read_episode(SAMPLE_EPISODE)
    frames = slice(24, 100)
    part = dataclasses.replace(sample, rgb=sample.rgb[frames], depth=sample.depth[frames], c2w=sample.c2w[frames],
                               actions=sample.actions[frames], context_frames=40)
    for name, episode in (("sample", sample), ("part", part)):
        assert any(t < episode.context_frames + GENERATED for t in revisit_frames(episode)), name
        write_episode(episode, folder / "sim" / f"{name}.safetensors")
    return folder


def finite(value) -> bool:
    """A finite float (JSON numbers only)."""
    return isinstance(value, (int, float)) and math.isfinite(value)


def test_revisit_scores_all_nine_methods(untrained_model, episodes, tmp_path, monkeypatch):  # noqa: F811
    out = tmp_path / "revisit.json"
    run_script(monkeypatch, "revisit.py", "--episodes", str(episodes), "--json", str(out), "--model",
               str(untrained_model), "--max-frames", str(GENERATED), "--lora-steps", "2", "--lora-rank", "2")
    result = json.loads(out.read_text())
    assert list(result["methods"]) == list(revisit.METHODS)
    for name, row in result["methods"].items():
        for key in ("psnr_all", "psnr_revisit", "ssim_all", "ssim_revisit", "seconds"):
            assert finite(row[key]), (name, key)
    assert result["frames"] == 2 * GENERATED and 0 < result["revisit_frames"] <= result["frames"]
    assert [len(e["methods"]) for e in result["episodes"]] == [9, 9]
    # pooled means are the frame-weighted means of the episodes'
    rows = [e["methods"]["come"] for e in result["episodes"]]
    assert result["methods"]["come"]["psnr_all"] == pytest.approx(sum(r["psnr_all"] for r in rows) / 2, rel=1e-5)
    settings = result["settings"]
    assert settings["methods"]["base"] == {"experts": ["base"], "mode": "single", "alpha": 1.0}
    assert settings["methods"]["come"]["experts"] == ["stm", "spatial", "ltm"] and settings["lora_steps"] == 2
    # one LoRA and one patch memory per episode, trained and built once
    assert all(finite(e["shared"]["lora_training_seconds"]) and e["shared"]["patches"] > 0 for e in result["episodes"])
    assert result["machine"]["threads"] == 1 and finite(result["wall_seconds"])
    assert out.with_suffix(".png").stat().st_size > 1000


def test_revisit_refuses_unknown_methods_and_empty_folders(tmp_path, monkeypatch, capsys):
    for args, message in ((["--methods", "base,cfg"], "--methods: give distinct names"),
                          ([], "--episodes: no .safetensors episode files")):
        with pytest.raises(SystemExit) as exit_:
            run_script(monkeypatch, "revisit.py", "--episodes", str(tmp_path), "--json", str(tmp_path / "o.json"),
                       "--model", str(tmp_path), *args)
        assert exit_.value.code == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


@pytest.mark.parametrize("script, inputs", [("revisit.py", ["--episodes", "."]), ("rollout_cost.py", [])])
def test_expert_benchmarks_refuse_a_short_term_window_out_of_range_before_any_work(script, inputs, tmp_path,
                                                                                    monkeypatch, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_script(monkeypatch, script, *inputs, "--json", str(tmp_path / "o.json"), "--stm-frames", "40")
    assert exit_.value.code == 2
    assert "--stm-frames: frames: 40 is outside the allowed range 1..32" in capsys.readouterr().err
    assert not (tmp_path / "o.json").exists()


def test_rollout_cost_on_a_short_walk(untrained_model, tmp_path, monkeypatch):  # noqa: F811
    out = tmp_path / "cost.json"
    frames = 24
    run_script(monkeypatch, "rollout_cost.py", "--json", str(out), "--model", str(untrained_model), "--frames",
               str(frames), "--lora-steps", "1")
    result = json.loads(out.read_text())
    for key in ("frame1000_over_frame100", "poce3_step_in_evals", "lora_stream_overhead", "lora_stream_over_base",
                "ltm_stream_over_base", "evaluation_seconds", "poce3_chunk_overhead_in_evals",
                "poce3_step_in_mean_only_evals", "evaluation_seconds_mean_only"):
        assert finite(result[key]) and result[key] > 0, key
    # base, short-term, spatial and one shared null: 4 evaluations a step, not 6
    assert result["poce3_evaluations_per_step"] == 4
    # in one forward: the default short-term window is the model's context, so all four batch together
    assert result["poce3_forwards_per_step"] == 1
    assert result["evaluations_per_chunk"] == {"poce3": 4 * rollout_cost.PROBE_STEPS, "walk": 4, "full_stream": 4,
                                               "full": 4, "ltm_stream": 2, "base": 1}
    assert result["late_frame"] == frames and len(result["walk_per_chunk"]["seconds"]) == frames // 4
    assert result["walk_per_chunk"]["patches"][-1] > result["walk_per_chunk"]["patches"][0] > 0
    # the baseline's longest history leaves a whole chunk of the path (initial frames + walk) after it
    longest = min(frames, result["settings"]["initial_frames"] + frames - result["settings"]["chunk"])
    assert list(result["full_context_baseline"]["seconds_per_frame_at_history"]) == [str(longest)]
    assert out.with_suffix(".png").stat().st_size > 1000


def test_long_walk_comes_back_to_its_start_every_loop():
    episode = read_episode(SAMPLE_EPISODE)
    path = rollout_cost.long_path(episode, 4, 400)
    assert len(path) == 404
    assert torch.equal(path.c2w[:4], episode.c2w[episode.context_frames - 4:episode.context_frames])
    loop = len(rollout_cost.parse_moves(rollout_cost.LOOP)) - 1
    start = path.positions[3]
    assert torch.allclose(path.positions[3 + loop], start, atol=1e-4)
    assert float((path.positions - start).norm(dim=-1).max()) > 2.0
