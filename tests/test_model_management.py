"""ComfyUI's model management of the world model (nodes/managed_model.py) in the real ComfyUI.

Load World Model returns a world model backed by a ModelPatcher; every node that runs the network
loads it with load_models_gpu first; ComfyUI can unload it and the next run gives the same frames; a
partial (--lowvram) load streams layers through ComfyUI's casting layers and computes the same; an
interrupt stops a navigation in ComfyUI's executor as it stops core nodes. ComfyUI runs with --cpu
here, so compute and offload device are both the CPU: the loads and offloads are ComfyUI's real
bookkeeping, and the frames must not change by a bit.
"""
from __future__ import annotations

import importlib
import sys
import weakref
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from comfyui_support import execute_prompt
from memory.world.rollout import forward_bytes
from memory.world.world_model import load_world_model

EMBEDDED = "come-default (embedded)"
SIZE, CHUNK = 64, 4


def node(comfy, node_id):
    """The registered class of a CoME node."""
    return comfy[0][node_id]


@pytest.fixture(scope="module")
def pack(comfy):
    """The pack's modules as ComfyUI imported them (their classes, not this test's imports of memory/)."""
    package = node(comfy, "CoMELoadWorldModel").__module__.split(".")[0]
    modules = {name: sys.modules[f"{package}.{path}"] for name, path in [
        ("managed", "nodes.managed_model"), ("nodes", "nodes.world_model"), ("rollout", "memory.world.rollout"),
        ("experts", "memory.world.experts"), ("lora", "memory.world.lora")]}
    return SimpleNamespace(**modules, mm=importlib.import_module("comfy.model_management"),
                           patcher=importlib.import_module("comfy.model_patcher"), ops=importlib.import_module("comfy.ops"))


@pytest.fixture
def model(comfy):
    """The embedded model freshly loaded by the node (its own patcher, not yet loaded by ComfyUI)."""
    return node(comfy, "CoMELoadWorldModel").execute(model=EMBEDDED, dtype="float32", device="auto").args[0]


@pytest.fixture(scope="module")
def walk(comfy):
    """One sample-episode frame and a 10-camera path from its camera (chunks of 4, 4 and 1 after the frame)."""
    frames, _, cameras, _, _ = node(comfy, "CoMELoadEpisode").execute(episode="sample_episode.safetensors").args
    path = node(comfy, "CoMECameraPathText").execute(moves="forward 0.9", step_m=0.1, step_deg=5.0, width=SIZE,
                                                     height=SIZE, fov_deg=80.0, reference=cameras.slice(0, 1)).args[0]
    return frames[:1], path


def navigate(comfy, model, walk):
    """The Navigate node's frames."""
    initial, path = walk
    return node(comfy, "CoMENavigate").execute(world_model=model, initial_frames=initial, camera_path=path,
                                               chunk_size=CHUNK, steps=1, seed=0).args[0]


def composition(comfy, lora=None):
    """Base + short-term (4 frames) experts under poce, and a streaming long-term expert with ``lora``."""
    experts = [node(comfy, "CoMEBaseExpert").execute(alpha=2.0).args[0],
               node(comfy, "CoMEShortTermExpert").execute(frames=4, alpha=1.5).args[0]]
    if lora is not None:
        experts.append(node(comfy, "CoMELongTermExpert").execute(lora=lora, alpha=1.5, stream_steps=1,
                                                                 stream_lr=1e-3).args[0])
    slots = {f"expert_{i}": e for i, e in enumerate(experts, start=1)}
    return node(comfy, "CoMEPoCECombine").execute(mode="poce", **slots).args[0]


def navigate_with_memory(comfy, model, walk, experts):
    """The Navigate with Memory node's frames and LoRA."""
    initial, path = walk
    out = node(comfy, "CoMENavigateWithMemory").execute(world_model=model, composition=experts,
                                                        initial_frames=initial, camera_path=path, chunk_size=CHUNK,
                                                        steps=1, seed=0).args
    return out[0], out[5]


def engine_frames(pack, experts, walk):
    """The same rollout by the engine alone on a plain (unmanaged) load of the embedded model."""
    initial, path = walk
    plain = pack.nodes.load_world_model(pack.nodes.DEFAULT_MODEL)
    assert not isinstance(plain, pack.managed.ManagedWorldModel)
    run = pack.rollout.rollout(plain, experts, initial, None, path, CHUNK, 1, 0, keep_memory=True)
    return torch.cat([chunk.rgb for chunk in run])


@pytest.fixture
def loads(pack, monkeypatch):
    """Every load_models_gpu call as (models, memory_required, force_full_load), passed on to ComfyUI."""
    calls, original = [], pack.mm.load_models_gpu

    def recording(models, memory_required=0, force_full_load=False, **kwargs):
        calls.append((list(models), memory_required, force_full_load))
        return original(models, memory_required=memory_required, force_full_load=force_full_load, **kwargs)

    monkeypatch.setattr(pack.mm, "load_models_gpu", recording)
    return calls


def test_load_world_model_gives_a_model_patcher_over_its_network(pack, model):
    patcher = model.patcher
    assert isinstance(model, pack.managed.ManagedWorldModel) and isinstance(patcher, pack.patcher.ModelPatcher)
    assert patcher.model.network is model.network
    assert patcher.load_device == pack.mm.get_torch_device() and patcher.offload_device == pack.mm.unet_offload_device()
    assert patcher.model_size() == sum(p.numel() * p.element_size() for p in model.network.parameters())
    # every weight sits in one of ComfyUI's casting layers, so ComfyUI may stream it (no forced full load)
    linears = [m for m in model.network.modules() if isinstance(m, nn.Linear)]
    assert linears and all(isinstance(m, pack.ops.CastWeightBiasOp) for m in linears)
    assert not model.full_load
    assert patcher not in pack.mm.loaded_models()


def test_navigate_loads_it_through_comfyui_and_computes_as_the_engine_alone(comfy, pack, model, walk, loads):
    rgb = navigate(comfy, model, walk)
    assert loads == [([model.patcher], forward_bytes(model, 1, model.context_frames + CHUNK, SIZE, SIZE), False)]
    assert model.patcher in pack.mm.loaded_models() and model.patcher.loaded_size() == model.patcher.model_size()
    assert model.device == model.patcher.load_device
    assert torch.equal(rgb, engine_frames(pack, pack.rollout.BASE_ONLY, walk))


def test_navigate_with_memory_trains_and_streams_the_lora_as_the_engine_alone(comfy, pack, model, walk, loads):
    frames, _, cameras, depth, _ = node(comfy, "CoMELoadEpisode").execute(episode="sample_episode.safetensors").args
    # training reads the weights wherever ComfyUI keeps them (its copy runs on the CPU): no load for it
    lora = node(comfy, "CoMETrainEpisodicLoRA").execute(
        world_model=model, frames=frames, metric_depth=depth, camera_path=cameras, rank=2, steps=2, lr=1e-3, seed=0,
        first_frame=0, last_frame=11).args[0]
    assert loads == []
    adapted = pack.lora.lora_network(model, lora)
    assert isinstance(adapted, pack.managed.ManagedWorldModel) and adapted.patcher is model.patcher
    experts = composition(comfy, lora)
    rgb, streamed = navigate_with_memory(comfy, model, walk, experts)
    merged = sum(model.network.get_submodule(t).weight.numel() * 4 for t in lora.targets)
    # the largest forward batches base and null (2 samples of 2 + 4 frames; the short-term expert's 4 + 4 frames
    # and the LoRA network's sample are forwards of their own), plus the merged LoRA projections
    assert loads == [([model.patcher], forward_bytes(model, 2, model.context_frames + CHUNK, SIZE, SIZE) + merged,
                      False)]
    assert model.patcher in pack.mm.loaded_models() and streamed.steps == lora.steps + 1
    assert torch.equal(rgb, engine_frames(pack, experts, walk))


@pytest.mark.parametrize("unload", ["unload_all_models", "free_memory"])
def test_comfyui_unloading_it_offloads_it_and_the_next_run_gives_the_same_frames(comfy, pack, model, walk, unload):
    first = navigate(comfy, model, walk)
    patcher = model.patcher
    assert patcher in pack.mm.loaded_models()
    if unload == "unload_all_models":
        pack.mm.unload_all_models()
    else:
        # what load_models_gpu does on a GPU when another model needs the room
        pack.mm.free_memory(1e30, patcher.load_device)
    assert patcher not in pack.mm.loaded_models() and patcher.loaded_size() == 0
    assert model.device == patcher.offload_device
    assert torch.equal(navigate(comfy, model, walk), first)
    assert patcher in pack.mm.loaded_models() and patcher.loaded_size() == patcher.model_size()


def test_a_partial_load_streams_layers_through_comfyui_casts_and_computes_the_same(comfy, pack, model, walk):
    full = navigate(comfy, model, walk)
    pack.mm.unload_all_models()
    patcher = model.patcher
    # what load_models_gpu does under --lowvram (or when the weights do not fit): load half, stream the rest
    patcher.patch_model(device_to=patcher.load_device, lowvram_model_memory=patcher.model_size() // 2)
    try:
        linears = [m for m in model.network.modules() if isinstance(m, nn.Linear)]
        streamed = [m for m in linears if m.comfy_cast_weights]
        assert patcher.model.model_lowvram and 0 < len(streamed) < len(linears)
        assert 0 < patcher.loaded_size() < patcher.model_size()
        initial, path = walk
        run = pack.rollout.navigate(model, initial, None, path, chunk=CHUNK, steps=1, seed=0)
        assert torch.equal(torch.cat([chunk.rgb for chunk in run]), full)
    finally:
        patcher.unpatch_model(patcher.offload_device)
    assert not any(m.comfy_cast_weights for m in model.network.modules() if isinstance(m, nn.Linear))


def test_weights_outside_comfyui_casting_layers_make_it_load_whole(pack, loads):
    network = nn.Sequential(nn.Linear(2, 2))
    network.register_buffer("scale", torch.ones(2))
    plain = pack.nodes.load_world_model(pack.nodes.DEFAULT_MODEL)
    odd = pack.managed.manage(pack.nodes.WorldModel(network, "odd", plain.schedule), torch.device("cpu"),
                              torch.device("cpu"))
    assert odd.full_load and isinstance(network[0], pack.ops.CastWeightBiasOp)
    pack.managed.load_for_run(odd, 0)
    assert loads == [([odd.patcher], 0, True)]
    pack.mm.unload_all_models()


class LiveBytes(TorchDispatchMode):
    """The peak bytes of tensors that ops allocate under it and that are still alive (views of an op's inputs not counted)."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}
        self.now = self.peak = 0

    def _free(self, key: int) -> None:
        self.now -= self.live.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key = storage.data_ptr()
                if key and key not in inputs and key not in self.live:
                    self.live[key] = storage.nbytes()
                    self.now += storage.nbytes()
                    weakref.finalize(storage, self._free, key)
        self.peak = max(self.peak, self.now)
        return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("batch, side", [(1, 32), (1, 64), (3, 64)])
def test_the_memory_asked_of_comfyui_bounds_the_counted_peak_of_a_forward(dtype, batch, side):
    model = load_world_model(dtype=dtype)
    frames = model.context_frames + CHUNK
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(batch, frames, c, side, side, generator=g).to(dtype) for c in (4, 6, 6)]
    sample, mosaic, rays = inputs
    timesteps = torch.full((batch, frames), 999.0)
    with torch.no_grad(), LiveBytes() as counted:
        model.network(sample, timesteps, mosaic, rays)
    used = counted.peak + sum(t.nbytes for t in (*inputs, timesteps))
    # the estimate is the counted peak within a few per cent, never below it
    assert used <= forward_bytes(model, batch, frames, side, side) <= 1.05 * used


def prompt(steps: int) -> dict:
    """An API prompt: the embedded model navigates 5 frames from one sample frame (depth predicted first), previewed."""
    return {
        "1": {"class_type": "CoMELoadWorldModel", "inputs": {"model": EMBEDDED, "dtype": "float32", "device": "auto"}},
        "2": {"class_type": "CoMELoadEpisode", "inputs": {"episode": "sample_episode.safetensors"}},
        "3": {"class_type": "ImageFromBatch", "inputs": {"image": ["2", 0], "batch_index": 0, "length": 1}},
        "4": {"class_type": "CoMECameraPathText", "inputs": {"moves": "forward 0.5", "step_m": 0.1, "step_deg": 5.0,
                                                             "width": SIZE, "height": SIZE, "fov_deg": 80.0}},
        "5": {"class_type": "CoMENavigate", "inputs": {"world_model": ["1", 0], "initial_frames": ["3", 0],
                                                       "camera_path": ["4", 0], "chunk_size": CHUNK, "steps": steps,
                                                       "seed": 0}},
        "6": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}},
    }


@pytest.mark.parametrize("cancel_at, previewed", [(1, None), (4, 1 + CHUNK)])
def test_an_interrupt_in_the_executor_stops_navigation_as_core_nodes_stop(comfy, pack, ticks, cancel_at, previewed):
    """Cancelled in the depth pass, nothing is finished: ComfyUI reports the interrupt as for a core sampler.

    Cancelled after the first chunk (2 depth steps, 2 chunk steps), the finished frames are the node's result.
    """
    pack.mm.unload_all_models()
    ticks["cancel_at"] = cancel_at
    executor = execute_prompt(prompt(steps=2))
    events = [event for event, _ in executor.status_messages]
    assert "execution_error" not in events and not pack.mm.processing_interrupted()
    if previewed is None:
        stopped = next(data for event, data in executor.status_messages if event == "execution_interrupted")
        assert not executor.success and stopped["node_type"] == "CoMENavigate"
    else:
        assert executor.success and len(executor.history_result["outputs"]["6"]["images"]) == previewed
    # the backbone stays loaded, as core models stay after a cancel, and the next prompt runs
    assert any(isinstance(p.model, pack.managed.Backbone) for p in pack.mm.loaded_models())
    ticks["cancel_at"] = None
    assert execute_prompt(prompt(steps=2)).success
