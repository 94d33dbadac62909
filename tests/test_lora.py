"""The episodic LoRA (memory/world/lora.py) and its nodes in the real ComfyUI."""
from __future__ import annotations

import importlib

import pytest
import torch

from memory.data.episode import SAMPLE_EPISODE, read_episode
from memory.train.windows import make_window
from memory.world.backbones.mosaic_dit import MosaicDiT
from memory.world.conditioning import Conditioning
from memory.world.lora import (
    EpisodicLoRA, load_lora, lora_network, save_lora, stream_update, train_episodic_lora,
)
from memory.world.world_model import WorldModel, load_world_model, predict_clean

FRAMES = 24


@pytest.fixture(scope="module")
def model():
    """The embedded default model."""
    return load_world_model()


@pytest.fixture(scope="module")
def episode():
    """The committed sample episode."""
    return read_episode(SAMPLE_EPISODE)


def frames_of(episode):
    """The first FRAMES frames as the LoRA trainer takes them."""
    return (episode.rgb[:FRAMES].float() / 255, episode.depth[:FRAMES], episode.c2w[:FRAMES], episode.K)


@pytest.fixture(scope="module")
def trained(model, episode):
    """A LoRA trained on the first frames, inside inference mode as in ComfyUI."""
    with torch.inference_mode():
        return train_episodic_lora(model, *frames_of(episode), rank=8, steps=40, seed=1)


def one_step_error(model, episode):
    """Mean squared error of the one-step prediction on windows of the training frames."""
    total = 0.0
    for start in range(0, FRAMES - 6, 3):
        window = make_window(episode, start, [start + 1], 2)
        x = torch.randn(4, 4, 64, 64, generator=torch.Generator().manual_seed(start))
        prediction = predict_clean(model, Conditioning(window.clean[:2], window.mosaic, window.rays), x, 999.0)
        total += float(((prediction - window.clean[2:]) ** 2).mean())
    return total


def test_the_lora_stores_its_episode_and_leaves_the_model_unchanged(model, episode, trained):
    before = {k: v.clone() for k, v in model.network.state_dict().items()}
    lora, losses = trained
    assert len(losses) == 40 and lora.steps == 40 and lora.rank == 8 and len(lora) > 0
    adapted = lora_network(model, lora)
    assert one_step_error(adapted, episode) < 0.97 * one_step_error(model, episode)
    assert all(torch.equal(before[k], v) for k, v in model.network.state_dict().items())


def test_training_is_deterministic_per_seed(model, episode, trained):
    again, losses = train_episodic_lora(model, *frames_of(episode), rank=8, steps=40, seed=1)
    assert losses == trained[1] and all(torch.equal(again.weights[k], v) for k, v in trained[0].weights.items())


def test_streaming_continues_the_lora_for_a_fixed_number_of_steps(model, episode, trained):
    streamed = stream_update(model, trained[0], *frames_of(episode), steps=3, lr=1e-3, seed=2)
    assert streamed.steps == 43 and streamed.rank == 8


def test_a_cancel_keeps_the_finished_steps(model, episode):
    def cancel(step):
        if step == 2:
            raise RuntimeError("cancelled")
    lora, losses = train_episodic_lora(model, *frames_of(episode), rank=4, steps=20, callback=cancel)
    assert len(losses) == 3 and lora.steps == 3


def test_save_and_load_round_trip_bit_exactly(tmp_path, trained):
    path = save_lora(trained[0], tmp_path / "lora.safetensors")
    loaded = load_lora(path)
    assert (loaded.rank, loaded.alpha, loaded.steps, loaded.backbone) == (8, 8.0, 40, trained[0].backbone)
    assert all(torch.equal(loaded.weights[k], v) for k, v in trained[0].weights.items())


def test_a_lora_of_another_backbone_or_damaged_file_is_refused(model, episode, trained, tmp_path):
    other = WorldModel(MosaicDiT(hidden_size=32, depth=1, num_heads=2, rope_dims=(4, 6, 6)), "tiny", model.schedule)
    with pytest.raises(ValueError, match="^lora: .*another backbone"):
        lora_network(other, trained[0])
    bad = EpisodicLoRA({k: v[:1] for k, v in trained[0].weights.items()}, 8, 8.0, trained[0].targets,
                       trained[0].backbone, 1)
    with pytest.raises(ValueError, match="^lora: .*rank 8"):
        lora_network(model, bad)
    damaged = dict(trained[0].weights)
    name = sorted(damaged)[0]
    damaged[name] = torch.full_like(damaged[name], float("nan"))
    path = save_lora(EpisodicLoRA(damaged, 8, 8.0, trained[0].targets, trained[0].backbone, 1), tmp_path / "nan.safetensors")
    with pytest.raises(ValueError, match="^lora_file: .*not finite"):
        load_lora(path)


def test_nodes_train_save_and_load_under_the_models_folder(comfy, tmp_path):
    mappings, _ = comfy
    folder_paths = importlib.import_module("folder_paths")
    folder_paths.add_model_folder_path("episodic_loras", str(tmp_path), is_default=True)
    frames, _, path, depth, _ = mappings["CoMELoadEpisode"].execute(episode="sample_episode.safetensors").args
    model = mappings["CoMELoadWorldModel"].execute(model="come-default (embedded)", dtype="float32", device="cpu").args[0]
    lora, curve = mappings["CoMETrainEpisodicLoRA"].execute(
        world_model=model, frames=frames[:12], metric_depth=type(depth)(depth.metres[:12]), camera_path=path.slice(0, 12),
        rank=4, steps=5, lr=1e-3, seed=0).args
    assert lora.steps == 5 and curve.shape == (1, 256, 512, 3)
    saved = mappings["CoMESaveEpisodicLoRA"].execute(lora=lora, filename_prefix="walk/lora").args[0]
    again = mappings["CoMESaveEpisodicLoRA"].execute(lora=lora, filename_prefix="walk/lora").args[0]
    assert saved != again and (tmp_path / saved).is_file()
    assert saved in mappings["CoMELoadEpisodicLoRA"].GET_SCHEMA().inputs[0].options
    loaded = mappings["CoMELoadEpisodicLoRA"].execute(lora_file=saved).args[0]
    assert all(torch.equal(loaded.weights[k], v) for k, v in lora.weights.items())
