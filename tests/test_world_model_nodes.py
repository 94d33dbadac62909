"""Load World Model and Navigate inside a real ComfyUI, on a tiny random model (independent of the shipped weights)."""
from __future__ import annotations

import importlib
import json
import math
import shutil
import sys

import pytest
import torch

from memory.world.backbones.mosaic_dit import MosaicDiT
from memory.world.world_model import save_world_model

SIZE = 32
STEPS = 2


def node(comfy, node_id):
    """The registered class of a CoME node."""
    mappings, _ = comfy
    assert node_id in mappings, f"{node_id} is not registered"
    return mappings[node_id]


def nodes_module(comfy):
    """The pack's nodes/world_model.py module as ComfyUI imported it."""
    return sys.modules[node(comfy, "CoMELoadWorldModel").__module__]


@pytest.fixture(scope="module")
def models_root(comfy, tmp_path_factory):
    """A registered ComfyUI 'world_models' folder holding a tiny random model 'tiny/v1' (unregistered after)."""
    folder_paths = importlib.import_module("folder_paths")
    root = tmp_path_factory.mktemp("world_models")
    torch.manual_seed(0)
    tiny = MosaicDiT(hidden_size=32, depth=1, num_heads=2, rope_dims=(4, 6, 6))
    with torch.no_grad():
        # zero-initialised gates would make an untrained model ignore its noise and seed
        for weight in tiny.parameters():
            weight.normal_(0.0, 0.05)
    save_world_model(tiny, root / "tiny" / "v1")
    folder_paths.add_model_folder_path("world_models", str(root))
    yield root
    folder_paths.folder_names_and_paths["world_models"][0].remove(str(root))


@pytest.fixture(scope="module")
def model(comfy, models_root):
    """The tiny model loaded through the node."""
    return node(comfy, "CoMELoadWorldModel").execute(model="tiny/v1", dtype="float32", device="cpu").args[0]


def camera_path(comfy, moves="forward 0.5"):
    """A SIZE x SIZE path from the moves node: its start camera, then one camera per 0.1 m."""
    return node(comfy, "CoMECameraPathText").execute(moves=moves, step_m=0.1, step_deg=5.0, width=SIZE,
                                                     height=SIZE, fov_deg=80.0).args[0]


def frames(count=2, size=SIZE):
    """Deterministic initial frames in 0..1."""
    return torch.rand(count, size, size, 3, generator=torch.Generator().manual_seed(1))


def navigate(comfy, model, path, initial, **extra):
    """Run the Navigate node with small settings."""
    settings = dict(chunk_size=3, steps=STEPS, seed=0) | extra
    return node(comfy, "CoMENavigate").execute(world_model=model, initial_frames=initial, camera_path=path,
                                               **settings).args


def test_model_list_starts_with_the_embedded_default_then_folders(comfy, models_root):
    (models_root / "no_config").mkdir(exist_ok=True)
    module = nodes_module(comfy)
    choices = module.model_choices()
    assert choices[0] == module.DEFAULT_CHOICE
    assert "tiny/v1" in choices and "no_config" not in choices
    schema_options = node(comfy, "CoMELoadWorldModel").GET_SCHEMA().inputs[0].options
    assert schema_options[0] == module.DEFAULT_CHOICE


def test_load_listed_folder_with_dtype_and_device(comfy, models_root):
    loaded = node(comfy, "CoMELoadWorldModel").execute(model="tiny/v1", dtype="bfloat16", device="cpu").args[0]
    assert loaded.name == "v1" and loaded.dtype == torch.bfloat16 and loaded.device.type == "cpu"
    auto = node(comfy, "CoMELoadWorldModel").execute(model="tiny/v1", dtype="float32", device="auto").args[0]
    # it computes on ComfyUI's device once a node runs it (tests/test_model_management.py follows the moves)
    assert auto.patcher.load_device == importlib.import_module("comfy.model_management").get_torch_device()


def test_default_entry_loads_the_embedded_folder(comfy, models_root, monkeypatch):
    module = nodes_module(comfy)
    monkeypatch.setattr(module, "DEFAULT_MODEL", models_root / "tiny" / "v1")
    loaded = node(comfy, "CoMELoadWorldModel").execute(model=module.DEFAULT_CHOICE, dtype="float32",
                                                       device="cpu").args[0]
    assert loaded.name == "v1"


@pytest.fixture(scope="module")
def float32_rollout(comfy):
    """The embedded model's float32 rollout that every other offered dtype is compared with."""
    return rollout_with_dtype(comfy, "float32")


def rollout_with_dtype(comfy, dtype):
    """Frames of the embedded default model loaded in ``dtype`` on the CPU, along 0.5 m from one sample frame."""
    module = nodes_module(comfy)
    loaded = node(comfy, "CoMELoadWorldModel").execute(model=module.DEFAULT_CHOICE, dtype=dtype, device="cpu").args[0]
    assert loaded.dtype == module.DTYPES[dtype]
    episode = node(comfy, "CoMELoadEpisode").execute(episode="sample_episode.safetensors").args
    path = node(comfy, "CoMECameraPathText").execute(moves="forward 0.5", step_m=0.1, step_deg=5.0, width=64,
                                                     height=64, fov_deg=80.0, reference=episode[2].slice(0, 1)).args[0]
    return navigate(comfy, loaded, path, episode[0][:1], chunk_size=4, steps=1)[0]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_every_offered_dtype_navigates_on_the_cpu(comfy, float32_rollout, dtype):
    rgb = rollout_with_dtype(comfy, dtype)
    assert rgb.shape == float32_rollout.shape and rgb.dtype == torch.float32
    assert bool(torch.isfinite(rgb).all()) and 0 <= float(rgb.min()) and float(rgb.max()) <= 1
    # half precision changes the rollout a little, not into another video (bfloat16 measured 25.9 dB, float16 32.4)
    mse = float(((rgb[1:] - float32_rollout[1:]) ** 2).mean())
    assert 10 * math.log10(1 / mse) > 20


def bad_folder(root, kind):
    """A copy of the tiny model broken in one way."""
    folder = root / f"bad_{kind}"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(root / "tiny" / "v1", folder)
    config = folder / "config.json"
    if kind == "missing_config":
        config.unlink()
    elif kind == "wrong_class":
        config.write_text(json.dumps(json.loads(config.read_text()) | {"_class_name": "UNet2DModel"}))
    elif kind == "bin_weights":
        for weights in folder.glob("*.safetensors"):
            weights.rename(weights.with_suffix(".bin"))
    elif kind == "mismatched_weights":
        config.write_text(json.dumps(json.loads(config.read_text()) | {"hidden_size": 48, "num_heads": 3}))
    return folder.name


@pytest.mark.parametrize("kind, reason", [("missing_config", "config.json"), ("wrong_class", "UNet2DModel"),
                                          ("bin_weights", "safetensors"), ("mismatched_weights", "do not match")])
def test_bad_model_folders_raise_naming_the_input(comfy, models_root, kind, reason):
    name = bad_folder(models_root, kind)
    with pytest.raises(ValueError, match=rf"^model: .*{reason}"):
        node(comfy, "CoMELoadWorldModel").execute(model=name, dtype="float32", device="cpu")


@pytest.mark.parametrize("name, reason", [("not_there", "no folder"), ("../tiny", r"'\.\.'"), ("/etc", "absolute")])
def test_unknown_or_escaping_model_names_raise(comfy, models_root, name, reason):
    with pytest.raises(ValueError, match=rf"^model: .*{reason}"):
        node(comfy, "CoMELoadWorldModel").execute(model=name, dtype="float32", device="cpu")


def test_navigate_generates_one_frame_per_camera_with_depth(comfy, model, ticks):
    path = camera_path(comfy)
    initial = frames()
    rgb, depth_image, covered, metric = navigate(comfy, model, path, initial)
    assert len(path) == 6
    assert rgb.shape == (6, SIZE, SIZE, 3) and rgb.dtype == torch.float32
    assert 0 <= float(rgb.min()) and float(rgb.max()) <= 1
    assert torch.equal(rgb[:2], initial)
    assert depth_image.shape == rgb.shape and metric.metres.shape == (6, SIZE, SIZE)
    assert torch.equal(covered.c2w, path.c2w)
    # 4 cameras to generate in chunks of 3 -> 2 chunks, plus the depth pass of the initial frames
    assert ticks["total"] == STEPS * 3 and ticks["updates"] == ticks["total"]


def test_navigate_keeps_given_depth_and_is_deterministic(comfy, model):
    path = camera_path(comfy)
    depth = nodes_module(comfy).DepthMaps(torch.full((2, SIZE, SIZE), 2.5))
    first = navigate(comfy, model, path, frames(), initial_depth=depth)
    again = navigate(comfy, model, path, frames(), initial_depth=depth)
    assert torch.equal(first[3].metres[:2], depth.metres)
    assert torch.equal(first[0], again[0])
    other_seed = navigate(comfy, model, path, frames(), initial_depth=depth, seed=1)
    assert not torch.equal(first[0][2:], other_seed[0][2:])


def test_interrupt_returns_the_finished_frames_and_their_cameras(comfy, model, ticks):
    mm = importlib.import_module("comfy.model_management")
    path = camera_path(comfy)
    depth = nodes_module(comfy).DepthMaps(torch.full((2, SIZE, SIZE), 2.5))
    ticks["cancel_at"] = STEPS + 1  # during the second generated chunk
    rgb, depth_image, covered, metric = navigate(comfy, model, path, frames(), initial_depth=depth)
    assert rgb.shape[0] == 2 + 3 and depth_image.shape[0] == 5 and metric.metres.shape[0] == 5
    assert len(covered) == 5 and torch.equal(covered.c2w, path.c2w[:5])
    assert not mm.processing_interrupted()


def test_interrupt_before_any_frame_propagates(comfy, model):
    mm = importlib.import_module("comfy.model_management")
    mm.interrupt_current_processing(True)
    with pytest.raises(mm.InterruptProcessingException):
        navigate(comfy, model, camera_path(comfy), frames())
    assert not mm.processing_interrupted()


def test_initial_frames_of_another_size_are_an_error_not_resized(comfy, model):
    with pytest.raises(ValueError, match=r"^initial_frames: .*\(48, 48\).*\(32, 32\)"):
        navigate(comfy, model, camera_path(comfy), frames(size=48))


@pytest.mark.parametrize("count", [6, 7])
def test_path_not_longer_than_the_initial_frames_is_an_error(comfy, model, count):
    with pytest.raises(ValueError, match=r"^camera_path: .*longer than the initial frames"):
        navigate(comfy, model, camera_path(comfy), frames(count=count))


@pytest.mark.parametrize("shape", [(3, SIZE, SIZE), (2, SIZE, 16)])
def test_initial_depth_must_match_the_frames(comfy, model, shape):
    depth = nodes_module(comfy).DepthMaps(torch.ones(shape))
    with pytest.raises(ValueError, match=r"^initial_depth: "):
        navigate(comfy, model, camera_path(comfy), frames(), initial_depth=depth)


def test_path_size_must_fit_the_model_patches(comfy, model):
    path = node(comfy, "CoMECameraPathText").execute(moves="forward 0.5", step_m=0.1, step_deg=5.0, width=36,
                                                     height=SIZE, fov_deg=80.0).args[0]
    with pytest.raises(ValueError, match=r"^camera_path: .*patch size 8"):
        navigate(comfy, model, path, torch.rand(2, SIZE, 36, 3))


def test_navigate_workflow_starts_its_path_at_the_initial_frame_camera(comfy):
    """workflows/navigate_basic.json wires the documented rule: the path's first camera is the initial frame's."""
    from comfyui_support import PACK, load_runner

    mappings, _ = comfy
    workflow = json.loads((PACK / "workflows" / "navigate_basic.json").read_text())
    prompt = load_runner().ui_to_api(workflow, mappings)
    by_type = {entry["class_type"]: entry["inputs"] for entry in prompt.values()}
    navigate_inputs = by_type["CoMENavigate"]
    assert prompt[navigate_inputs["camera_path"][0]]["class_type"] == "CoMECameraPathText"
    pick = by_type["ImageFromBatch"]
    episode = node(comfy, "CoMELoadEpisode").execute(**by_type["CoMELoadEpisode"]).args
    initial = mappings["ImageFromBatch"]().frombatch(episode[0], pick["batch_index"], pick["length"])[0]
    moves = {k: v for k, v in by_type["CoMECameraPathText"].items() if k != "reference"}
    path = node(comfy, "CoMECameraPathText").execute(**moves, reference=episode[2]).args[0]
    index = next(i for i in range(len(episode[0])) if torch.equal(episode[0][i], initial[0]))
    assert len(initial) == 1 and 20 <= len(path) <= 64
    assert torch.allclose(path.c2w[0], episode[2].c2w[index], atol=1e-5)
