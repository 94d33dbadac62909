"""The episodic LoRA (memory/world/lora.py) and its nodes in the real ComfyUI."""
from __future__ import annotations

import importlib
import json
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from memory.data.episode import SAMPLE_EPISODE, read_episode
from memory.train.windows import make_window
from memory.world.backbones.mosaic_dit import MosaicDiT, training_schedule
from memory.world.conditioning import Conditioning
from memory.world.lora import (
    EpisodicLoRA, _adapted, load_lora, lora_network, lora_training, save_lora, stream_update, train_episodic_lora,
)
from memory.world.world_model import WorldModel, load_world_model, predict_clean, save_world_model

FRAMES = 24
STEPS = 40


@pytest.fixture(scope="module")
def model():
    """The embedded default model, loaded inside inference mode as ComfyUI loads it (its weights are inference tensors)."""
    with torch.inference_mode():
        return load_world_model()


@pytest.fixture(scope="module")
def episode():
    """The committed sample episode."""
    return read_episode(SAMPLE_EPISODE)


def frames_of(episode, count=FRAMES):
    """The first frames as the LoRA trainer takes them: rgb 0..1, depth, c2w, K."""
    return episode.rgb[:count].float() / 255, episode.depth[:count], episode.c2w[:count], episode.K


@pytest.fixture(scope="module")
def trained(model, episode):
    """A LoRA trained on the first frames, inside inference mode as in ComfyUI."""
    with torch.inference_mode():
        return train_episodic_lora(model, *frames_of(episode), rank=8, steps=STEPS, seed=1)


def tiny_model():
    """A small random backbone of other shapes than the embedded one."""
    torch.manual_seed(0)
    return WorldModel(MosaicDiT(hidden_size=32, depth=1, num_heads=2, rope_dims=(4, 6, 6)), "tiny", training_schedule())


def one_step_error(model, episode):
    """Mean squared error of the one-step prediction (from pure noise) on windows of the training frames."""
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
    assert len(losses) == STEPS and lora.steps == STEPS and lora.rank == 8 and lora.alpha == 8.0
    assert len(lora.targets) == 16 and lora.targets[0] == "blocks.0.qkv"
    assert all(v.dtype == torch.float32 and v.device.type == "cpu" for v in lora.weights.values())
    adapted = lora_network(model, lora)
    assert adapted.name == f"{model.name}+lora" and adapted.schedule is model.schedule
    assert one_step_error(adapted, episode) < 0.97 * one_step_error(model, episode)
    assert all(torch.equal(before[k], v) for k, v in model.network.state_dict().items())


def test_the_merged_network_predicts_as_the_peft_adapter_does(model, episode, trained):
    window = make_window(episode, 3, [4], 2)
    conditioning = Conditioning(window.clean[:2], window.mosaic, window.rays)
    x = torch.randn(4, 4, 64, 64, generator=torch.Generator().manual_seed(0))
    peft = WorldModel(_adapted(model, trained[0]).eval(), "peft", model.schedule)
    merged = predict_clean(lora_network(model, trained[0]), conditioning, x, 500.0)
    assert torch.allclose(merged, predict_clean(peft, conditioning, x, 500.0), atol=1e-5)
    assert not torch.allclose(merged, predict_clean(model, conditioning, x, 500.0), atol=1e-4)


def test_training_is_deterministic_per_seed(model, episode, trained):
    with torch.inference_mode():
        again, losses = train_episodic_lora(model, *frames_of(episode), rank=8, steps=STEPS, seed=1)
    assert losses == trained[1] and all(torch.equal(again.weights[k], v) for k, v in trained[0].weights.items())
    other, _ = train_episodic_lora(model, *frames_of(episode), rank=8, steps=2, seed=2)
    assert not torch.equal(other.weights["blocks.0.qkv.lora_A.weight"], trained[0].weights["blocks.0.qkv.lora_A.weight"])


def test_streaming_continues_the_lora_without_changing_it(model, episode, trained):
    before = {k: v.clone() for k, v in trained[0].weights.items()}
    recent = [t[-(2 + 4):] for t in frames_of(episode)[:3]] + [episode.K]
    with torch.inference_mode():
        streamed = stream_update(model, trained[0], *recent, steps=3, lr=1e-3, seed=2)
    assert streamed.steps == STEPS + 3 and streamed.rank == 8 and streamed.targets == trained[0].targets
    assert all(torch.equal(before[k], v) for k, v in trained[0].weights.items())
    assert not torch.equal(streamed.weights["blocks.0.fc1.lora_B.weight"], before["blocks.0.fc1.lora_B.weight"])


def test_stopping_keeps_the_finished_steps_and_a_callback_error_propagates(model, episode):
    run = lora_training(model, *frames_of(episode), rank=4, steps=20)
    for step, _ in enumerate(run):
        if step == 2:
            break
    assert len(run.losses) == 3 and run.lora.steps == 3 and run.lora.rank == 4

    def cancel(step):
        if step == 1:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        train_episodic_lora(model, *frames_of(episode), rank=4, steps=20, callback=cancel)


def test_save_and_load_round_trip_bit_exactly(tmp_path, trained):
    path = save_lora(trained[0], tmp_path / "lora.safetensors")
    loaded = load_lora(path)
    assert (loaded.rank, loaded.alpha, loaded.steps, loaded.backbone, loaded.targets) == (
        8, 8.0, STEPS, trained[0].backbone, trained[0].targets)
    assert loaded.weights.keys() == trained[0].weights.keys()
    assert all(torch.equal(loaded.weights[k], v) for k, v in trained[0].weights.items())
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_lora_of_another_backbone_or_rank_is_refused(model, trained):
    with pytest.raises(ValueError, match="^lora: a LoRA trained on another backbone"):
        lora_network(tiny_model(), trained[0])
    lora = trained[0]
    half = {k: v[:4] if ".lora_A." in k else v[:, :4] for k, v in lora.weights.items()}
    with pytest.raises(ValueError, match="^lora: .*not rank 8"):
        lora_network(model, EpisodicLoRA(half, 8, 8.0, lora.targets, lora.backbone, 1))
    wide = {k: torch.cat([v, v], 1) if ".lora_A." in k else v for k, v in lora.weights.items()}
    with pytest.raises(ValueError, match="^lora: a LoRA trained on another backbone or rank"):
        lora_network(model, EpisodicLoRA(wide, 8, 8.0, lora.targets, lora.backbone, 1))


def damage(tmp_path, trained, tensors=None, metadata=None):
    """A saved copy of the trained LoRA with its tensors or metadata changed."""
    path = save_lora(trained[0], tmp_path / "good.safetensors")
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
    weights = load_file(str(path))
    bad = tmp_path / "bad.safetensors"
    save_file(tensors(weights) if tensors else weights, str(bad), metadata=metadata(meta) if metadata else meta)
    return bad


@pytest.mark.parametrize("change, message", [
    (dict(tensors=lambda w: w | {"blocks.0.qkv.lora_A.weight": w["blocks.0.qkv.lora_A.weight"] * float("nan")}),
     "NaN"),
    (dict(tensors=lambda w: {k: v for k, v in w.items() if "blocks.3.fc2" not in k}), "do not match its targets"),
    (dict(tensors=lambda w: w | {"blocks.0.qkv.lora_A.weight": w["blocks.0.qkv.lora_A.weight"].to(torch.int32)}),
     "float"),
    (dict(metadata=lambda m: m | {"rank": "eight"}), "out of range"),
    (dict(metadata=lambda m: m | {"alpha": "inf"}), "out of range"),
    (dict(metadata=lambda m: {k: v for k, v in m.items() if k != "targets"}), "metadata"),
    (dict(metadata=lambda m: m | {"targets": json.dumps(["blocks.0.modulation"])}), "targets"),
    (dict(metadata=lambda m: m | {"format": "come-episodic-lora/2"}), "version"),
    (dict(metadata=lambda m: m | {"format": "come-patch-memory/1"}), "expected 'come-episodic-lora/1'"),
])
def test_damaged_files_are_refused_naming_lora_file(tmp_path, trained, change, message):
    with pytest.raises(ValueError, match="^lora_file: ") as raised:
        load_lora(damage(tmp_path, trained, **change))
    assert message in str(raised.value)


# ---- the nodes, in the real ComfyUI ----

@pytest.fixture
def lora_folder(comfy, tmp_path):
    """A scratch episodic_loras folder first in ComfyUI's list (where saves go), unregistered after."""
    folder_paths = importlib.import_module("folder_paths")
    folder_paths.add_model_folder_path("episodic_loras", str(tmp_path), is_default=True)
    yield tmp_path
    folder_paths.folder_names_and_paths["episodic_loras"][0].remove(str(tmp_path))


@pytest.fixture(scope="module")
def pack_tiny(comfy, tmp_path_factory):
    """The tiny backbone loaded by the pack as ComfyUI imported it (its WorldModel class, not this test's)."""
    mappings, _ = comfy
    folder = save_world_model(tiny_model().network, tmp_path_factory.mktemp("tiny") / "tiny")
    return sys.modules[mappings["CoMELoadWorldModel"].__module__].load_world_model(folder)


def test_nodes_train_save_and_load_under_the_models_folder(comfy, lora_folder, pack_tiny):
    mappings, _ = comfy
    frames, _, path, depth, _ = mappings["CoMELoadEpisode"].execute(episode="sample_episode.safetensors").args
    model = pack_tiny
    lora, curve = mappings["CoMETrainEpisodicLoRA"].execute(
        world_model=model, frames=frames, metric_depth=depth, camera_path=path, rank=4, steps=5, lr=1e-3, seed=0,
        first_frame=0, last_frame=11).args
    assert lora.steps == 5 and lora.rank == 4 and curve.shape == (1, 256, 512, 3)
    assert 0 <= float(curve.min()) and float(curve.max()) <= 1
    again = mappings["CoMETrainEpisodicLoRA"].execute(
        world_model=model, frames=frames, metric_depth=depth, camera_path=path, rank=16, steps=2, lr=1e-3, seed=0,
        first_frame=0, last_frame=11, continue_from=lora).args[0]
    assert again.steps == 7 and again.rank == 4
    save = mappings["CoMESaveEpisodicLoRA"]
    saved = save.execute(lora=lora, filename_prefix="walk/lora").args[0]
    second = save.execute(lora=lora, filename_prefix="walk/lora").args[0]
    assert saved != second and (lora_folder / saved).is_file() and (lora_folder / second).is_file()
    assert saved in mappings["CoMELoadEpisodicLoRA"].GET_SCHEMA().inputs[0].options
    loaded = mappings["CoMELoadEpisodicLoRA"].execute(lora_file=saved).args[0]
    assert all(torch.equal(loaded.weights[k], v) for k, v in lora.weights.items())


def test_a_cancel_returns_the_lora_trained_so_far(comfy, monkeypatch, pack_tiny):
    mappings, _ = comfy
    mm, comfy_utils = importlib.import_module("comfy.model_management"), importlib.import_module("comfy.utils")
    updates = []

    class CancellingBar(comfy_utils.ProgressBar):
        def update(self, value):
            super().update(value)
            updates.append(value)
            if len(updates) == 3:
                mm.interrupt_current_processing(True)

    monkeypatch.setattr(comfy_utils, "ProgressBar", CancellingBar)
    frames, _, path, depth, _ = mappings["CoMELoadEpisode"].execute(episode="sample_episode.safetensors").args
    lora, _ = mappings["CoMETrainEpisodicLoRA"].execute(
        world_model=pack_tiny, frames=frames, metric_depth=depth, camera_path=path, rank=2, steps=50, lr=1e-3,
        seed=0, first_frame=0, last_frame=9).args
    assert lora.steps == 4 and not mm.processing_interrupted()
