"""The Wan route in the real ComfyUI: a tiny random Wan folder under models/world_models, loaded and navigated by the nodes."""
from __future__ import annotations

import importlib
import shutil
import sys
from pathlib import Path

import pytest
import torch

from wan_support import write_wan_folder

SIZE, CHUNK = 32, 4
FOLDER = "tiny_wan_for_tests"


def node(comfy, node_id):
    """The registered class of a CoME node."""
    return comfy[0][node_id]


@pytest.fixture(scope="module")
def wan_choice(comfy):
    """A tiny Wan folder in ComfyUI's first models/world_models folder, named as the loader lists it."""
    folder_paths = importlib.import_module("folder_paths")
    root = Path(folder_paths.get_folder_paths("world_models")[0])
    folder = write_wan_folder(root / FOLDER)
    yield FOLDER
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def pack(comfy):
    """The pack's modules as ComfyUI imported them."""
    package = node(comfy, "CoMELoadWorldModel").__module__.split(".")[0]
    return {name: sys.modules[f"{package}.{path}"] for name, path in [
        ("nodes", "nodes.world_model"), ("managed", "nodes.managed_model"), ("wan", "memory.world.backbones.wan"),
        ("wan_rollout", "memory.world.wan_rollout"), ("experts", "memory.world.experts")]}


@pytest.fixture(scope="module")
def walk(comfy):
    """Two sample-episode frames at SIZE and the episode's first 9 cameras for that size (7 generated frames)."""
    frames, _, cameras, _, _ = node(comfy, "CoMELoadEpisode").execute(episode="sample_episode.safetensors").args
    K = cameras.K.clone()
    K[:2] *= SIZE / cameras.width
    path = type(cameras)(cameras.c2w[:9], K, SIZE, SIZE)
    small = torch.nn.functional.interpolate(frames[:2].permute(0, 3, 1, 2), size=(SIZE, SIZE), mode="area")
    return small.permute(0, 2, 3, 1), path


def test_the_loader_lists_a_wan_folder_once_and_loads_it_under_a_model_patcher(comfy, pack, wan_choice):
    choices = pack["nodes"].model_choices()
    assert wan_choice in choices
    assert not any(c.startswith(f"{wan_choice}/") for c in choices)  # its transformer/ and vae/ are no models
    model = node(comfy, "CoMELoadWorldModel").execute(model=wan_choice, dtype="float32", device="auto").args[0]
    assert isinstance(model, pack["managed"].ManagedWanWorldModel)
    assert model.patcher.model.network is model.transformer


def test_navigate_with_memory_on_wan_computes_as_the_engine_alone(comfy, pack, wan_choice, walk, monkeypatch):
    initial, path = walk
    mm = importlib.import_module("comfy.model_management")
    loads = []
    original = mm.load_models_gpu
    monkeypatch.setattr(mm, "load_models_gpu", lambda models, **kw: loads.append(list(models)) or original(models, **kw))
    model = node(comfy, "CoMELoadWorldModel").execute(model=wan_choice, dtype="float32", device="auto").args[0]
    experts = {"expert_1": node(comfy, "CoMEBaseExpert").execute(alpha=2.0).args[0],
               "expert_2": node(comfy, "CoMEShortTermExpert").execute(frames=2, alpha=1.5).args[0]}
    composition = node(comfy, "CoMEPoCECombine").execute(mode="poce", **experts).args[0]
    out = node(comfy, "CoMENavigateWithMemory").execute(world_model=model, composition=composition,
                                                        initial_frames=initial, camera_path=path, chunk_size=CHUNK,
                                                        steps=2, seed=5).args
    frames, memory = out[0], out[4]
    assert loads == [[model.patcher]]
    assert frames.shape == (len(path), SIZE, SIZE, 3) and torch.equal(frames[:2], initial)
    assert memory is not None and memory.patch_size == 16
    plain = pack["wan"].load_wan_world_model(model_folder(pack, wan_choice))
    run = pack["wan_rollout"].wan_rollout(plain, composition, initial, None, path, CHUNK, 2, 5, keep_memory=True)
    assert torch.allclose(frames, torch.cat([c.rgb for c in run]), atol=1e-5)
    base = node(comfy, "CoMENavigate").execute(world_model=model, initial_frames=initial, camera_path=path,
                                               chunk_size=CHUNK, steps=2, seed=5).args[0]
    assert base.shape == frames.shape and not torch.allclose(base, frames)


def model_folder(pack, choice: str) -> Path:
    """The folder behind a loader choice."""
    return pack["nodes"].resolve_model(choice)


def test_train_save_load_an_episodic_lora_on_wan_and_stream_it_in_a_walk(comfy, pack, wan_choice, walk):
    model = node(comfy, "CoMELoadWorldModel").execute(model=wan_choice, dtype="float32", device="cpu").args[0]
    frames, path = walk
    depth = node(comfy, "CoMENavigate").execute(world_model=model, initial_frames=frames, camera_path=path,
                                                chunk_size=CHUNK, steps=1, seed=0).args[3]
    rgb = node(comfy, "CoMENavigate").execute(world_model=model, initial_frames=frames, camera_path=path,
                                              chunk_size=CHUNK, steps=1, seed=0).args[0]
    lora, curve = node(comfy, "CoMETrainEpisodicLoRA").execute(world_model=model, frames=rgb, metric_depth=depth,
                                                               camera_path=path, rank=2, steps=3, lr=1e-2,
                                                               seed=0).args
    assert lora.steps == 3 and curve.shape[0] == 1 and curve.shape[-1] == 3
    assert lora.backbone.startswith("WanTransformer3DModel")
    saved = node(comfy, "CoMESaveEpisodicLoRA").execute(lora=lora, filename_prefix="wan_test").args[0]
    loaded = node(comfy, "CoMELoadEpisodicLoRA").execute(lora_file=saved).args[0]
    assert all(torch.equal(loaded.weights[k], lora.weights[k]) for k in lora.weights)
    more = node(comfy, "CoMETrainEpisodicLoRA").execute(world_model=model, frames=rgb, metric_depth=depth,
                                                        camera_path=path, rank=8, steps=1, lr=1e-2, seed=1,
                                                        continue_from=loaded).args[0]
    assert more.steps == 4 and more.rank == 2  # continuing keeps the LoRA's rank
    expert = node(comfy, "CoMELongTermExpert").execute(lora=loaded, alpha=1.5, stream_steps=1, stream_lr=1e-3).args[0]
    composition = node(comfy, "CoMEPoCECombine").execute(mode="poce", expert_1=expert).args[0]
    out = node(comfy, "CoMENavigateWithMemory").execute(world_model=model, composition=composition,
                                                        initial_frames=frames, camera_path=path, chunk_size=CHUNK,
                                                        steps=1, seed=0).args
    assert out[0].shape == rgb.shape and out[5].steps == 3 + 1  # streamed once, between the two chunks
    embedded = node(comfy, "CoMELoadWorldModel").execute(model="come-default (embedded)", dtype="float32",
                                                         device="cpu").args[0]
    with pytest.raises(ValueError, match="continue_from: .*another backbone"):
        node(comfy, "CoMETrainEpisodicLoRA").execute(world_model=embedded, frames=rgb, metric_depth=depth,
                                                     camera_path=path, rank=2, steps=1, lr=1e-3, seed=0,
                                                     continue_from=loaded)
    with pytest.raises(ValueError, match="depth_model: .*MosaicDiT"):
        node(comfy, "CoMENavigateWithMemory").execute(world_model=model, composition=composition,
                                                      initial_frames=frames, camera_path=path, chunk_size=CHUNK,
                                                      steps=1, seed=0, depth_model=model)
    same = node(comfy, "CoMENavigateWithMemory").execute(world_model=model, composition=composition,
                                                         initial_frames=frames, camera_path=path, chunk_size=CHUNK,
                                                         steps=1, seed=0, depth_model=embedded).args
    assert torch.equal(same[0], out[0]) and torch.equal(same[3].metres, out[3].metres)  # the embedded model is the default
    with pytest.raises(ValueError, match="chunk_size"):
        node(comfy, "CoMENavigate").execute(world_model=model, initial_frames=frames, camera_path=path,
                                            chunk_size=3, steps=1, seed=0)
