"""Malformed inputs of Load World Model (options, damaged model folders) and Navigate (engine and node)."""
from __future__ import annotations

import importlib
import json
import shutil

import torch
from safetensors.torch import load_file, save_file

from malformed_support import Case
from memory.world.backbones.mosaic_dit import MosaicDiT
from memory.geometry.depth import DepthMaps
from memory.world.rollout import navigate
from memory.world.world_model import denoise, save_world_model

MODELS = "world_models"


def _models_root(env):
    """A scratch world_models folder registered with ComfyUI, holding a tiny random model 'tiny'."""
    root = env.scratch / MODELS
    if not (root / "tiny" / "config.json").exists():
        torch.manual_seed(0)
        save_world_model(MosaicDiT(hidden_size=32, depth=1, num_heads=2, rope_dims=(4, 6, 6)), root / "tiny")
        importlib.import_module("folder_paths").add_model_folder_path(MODELS, str(root))
    return root


def _broken(name, config=None, weights=None, raw_config=None, files=None):
    """A setup that copies the tiny model to ``name`` and breaks its config or weights."""
    def setup(env):
        root = _models_root(env)
        folder = root / name
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(root / "tiny", folder)
        config_file, weights_file = folder / "config.json", folder / "diffusion_pytorch_model.safetensors"
        if raw_config is not None:
            config_file.write_text(raw_config)
        if config is not None:
            config_file.write_text(json.dumps(config(json.loads(config_file.read_text()))))
        if weights is not None:
            save_file(weights(load_file(str(weights_file))), str(weights_file))
        if files is not None:
            files(folder)
    return setup


def _load(name, **overrides):
    """Load World Model on folder ``name`` on the CPU."""
    return lambda env: env.call("CoMELoadWorldModel", model=name, device="cpu", **overrides)


def _set(key, value):
    return lambda config: config | {key: value}


def _first_weight(change):
    def edit(tensors):
        name = sorted(tensors)[0]
        return tensors | {name: change(tensors[name])}
    return edit


FOLDERS = [
    ("config-not-object", dict(raw_config="[1, 2, 3]")),
    ("config-not-json", dict(raw_config="{'hidden_size': 32")),
    ("config-deeply-nested", dict(raw_config="[" * 5000 + "]" * 5000)),
    ("config-empty", dict(raw_config="")),
    ("config-escaped-quotes", dict(raw_config='{"a": "' + '\\"' * 400_000)),
    ("config-string-value", dict(config=_set("hidden_size", "32"))),
    ("config-bool-value", dict(config=_set("depth", True))),
    ("config-float-size", dict(config=_set("hidden_size", 32.5))),
    ("config-huge-size", dict(config=_set("hidden_size", 10 ** 9))),
    ("config-negative-depth", dict(config=_set("depth", -1))),
    ("config-zero-heads", dict(config=_set("num_heads", 0))),
    ("config-null-value", dict(config=_set("patch_size", None))),
    ("config-rope-two-dims", dict(config=_set("rope_dims", [4, 6]))),
    ("config-rope-not-list", dict(config=_set("rope_dims", "4,6,6"))),
    ("config-rope-misfit", dict(config=_set("rope_dims", [4, 4, 4]))),
    ("config-nan-theta", dict(raw_config=json.dumps({"_class_name": "MosaicDiT"})[:-1] + ', "rope_theta": NaN}')),
    ("config-unknown-key", dict(config=_set("hiden_size", 64))),
    ("config-other-class", dict(config=_set("_class_name", "UNet2DModel"))),
    ("config-missing", dict(files=lambda folder: (folder / "config.json").unlink())),
    ("schedule-missing", dict(files=lambda folder: (folder / "scheduler_config.json").unlink())),
    ("schedule-other-class", dict(files=lambda folder: (folder / "scheduler_config.json").write_text(
        '{"_class_name": "EulerDiscreteScheduler", "num_train_timesteps": 1000}'))),
    ("schedule-other-length", dict(files=lambda folder: (folder / "scheduler_config.json").write_text(
        '{"_class_name": "DDPMScheduler", "num_train_timesteps": 50}'))),
    ("weights-missing-file", dict(files=lambda folder: (folder / "diffusion_pytorch_model.safetensors").unlink())),
    ("weights-pickle-only", dict(files=lambda folder: (folder / "diffusion_pytorch_model.safetensors").rename(
        folder / "diffusion_pytorch_model.bin"))),
    ("weights-corrupted", dict(files=lambda folder: (folder / "diffusion_pytorch_model.safetensors").write_bytes(
        b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage" * 4))),
    ("weights-missing-tensor", dict(weights=lambda t: {k: v for k, v in t.items() if k != sorted(t)[0]})),
    ("weights-extra-tensor", dict(weights=lambda t: t | {"extra.weight": torch.zeros(2)})),
    ("weights-nan", dict(weights=_first_weight(lambda w: torch.full_like(w, float("nan"))))),
    ("weights-inf", dict(weights=_first_weight(lambda w: torch.full_like(w, float("inf"))))),
    ("weights-integer", dict(weights=_first_weight(lambda w: w.to(torch.int32)))),
    ("weights-wrong-shape", dict(weights=_first_weight(lambda w: torch.zeros(*w.shape[:-1], w.shape[-1] + 1)))),
    ("weights-duplicated", dict(files=lambda folder: shutil.copy(folder / "diffusion_pytorch_model.safetensors",
                                                                 folder / "diffusion_pytorch_model-copy.safetensors"))),
]


def _navigate(env, **overrides):
    """Navigate with the embedded model from the sample's first frame along its next 4 cameras, except ``overrides``."""
    inputs = dict(world_model=env.model, initial_frames=env.frames[:1], camera_path=env.path.slice(0, 5),
                  chunk_size=4, steps=1, seed=0) | overrides
    return env.node("CoMENavigate").execute(**inputs)


def _frames(env, change):
    return change(env.frames[:1].clone())


def _set_pixel(value):
    def change(frames):
        frames[0, 0, 0, 0] = value
        return frames
    return change


NAVIGATE = [
    ("chunk-zero", "chunk_size", dict(chunk_size=0)),
    ("chunk-negative", "chunk_size", dict(chunk_size=-3)),
    ("chunk-huge", "chunk_size", dict(chunk_size=10 ** 9)),
    ("chunk-fraction", "chunk_size", dict(chunk_size=2.5)),
    ("chunk-bool", "chunk_size", dict(chunk_size=True)),
    ("steps-zero", "steps", dict(steps=0)),
    ("steps-negative", "steps", dict(steps=-1)),
    ("steps-huge", "steps", dict(steps=10 ** 7)),
    ("seed-negative", "seed", dict(seed=-1)),
    ("seed-too-large", "seed", dict(seed=2 ** 64)),
    ("seed-not-int", "seed", dict(seed="7")),
]
FRAMES = [
    ("frames-nan", _set_pixel(float("nan"))),
    ("frames-inf", _set_pixel(float("inf"))),
    ("frames-above-one", _set_pixel(1.5)),
    ("frames-negative", _set_pixel(-0.2)),
    ("frames-alpha", lambda f: torch.cat([f, torch.ones_like(f[..., :1])], -1)),
    ("frames-one-channel", lambda f: f[..., :1]),
    ("frames-no-batch", lambda f: f[0]),
    ("frames-empty-batch", lambda f: f[:0]),
    ("frames-integer", lambda f: (f * 255).to(torch.uint8)),
    ("frames-other-size", lambda f: f[:, :32, :32]),
]


def _depth(env, value=None, shape=None):
    metres = env.metric_depth.metres[:1].clone()
    if value is not None:
        metres[0, 0, 0] = value
    return DepthMaps(torch.ones(shape) if shape is not None else metres)


CASES = [
    Case("load-dtype-unknown", "dtype", _load("tiny", dtype="float8"), _models_root),
    Case("load-dtype-empty", "dtype", _load("tiny", dtype=""), _models_root),
    Case("load-dtype-not-text", "dtype", _load("tiny", dtype=32), _models_root),
    Case("load-device-unknown", "device", lambda env: env.call("CoMELoadWorldModel", model="tiny", device="cuda:7"),
         _models_root),
    Case("load-device-empty", "device", lambda env: env.call("CoMELoadWorldModel", model="tiny", device=""),
         _models_root),
    Case("load-model-unknown", "model", _load("no_such_model"), _models_root),
    Case("load-model-parent", "model", _load("../tiny"), _models_root),
    Case("load-model-absolute", "model", _load("/etc"), _models_root),
    Case("load-model-empty", "model", _load(""), _models_root),
    *(Case(f"load-{label}", "model", _load(f"bad_{label}"), _broken(f"bad_{label}", **kind)) for label, kind in FOLDERS),
    *(Case(f"navigate-{label}", name, lambda env, o=overrides: _navigate(env, **o)) for label, name, overrides in NAVIGATE),
    *(Case(f"navigate-{label}", "initial_frames", lambda env, c=change: _navigate(env, initial_frames=_frames(env, c)))
      for label, change in FRAMES),
    Case("navigate-frames-not-image", "initial_frames", lambda env: _navigate(env, initial_frames="frame.png")),
    Case("navigate-too-many-initial-frames", "camera_path", lambda env: _navigate(env, initial_frames=env.frames[:5])),
    Case("navigate-depth-nan", "initial_depth", lambda env: _navigate(env, initial_depth=_depth(env, float("nan")))),
    Case("navigate-depth-negative", "initial_depth", lambda env: _navigate(env, initial_depth=_depth(env, -1.0))),
    Case("navigate-depth-shape", "initial_depth", lambda env: _navigate(env, initial_depth=_depth(env, shape=(2, 64, 64)))),
    Case("navigate-path-not-patch-multiple", "camera_path", lambda env: _navigate(
        env, camera_path=env.call("CoMECameraPathText", moves="forward 0.4", width=60, height=64).args[0],
        initial_frames=torch.rand(1, 64, 60, 3))),
    Case("navigate-model-not-a-model", "world_model", lambda env: _navigate(env, world_model="model.safetensors")),
    Case("navigate-path-not-a-path", "camera_path", lambda env: _navigate(env, camera_path=[[0, 0, 0]])),
    Case("engine-navigate-chunk-zero", "chunk_size", lambda env: navigate(
        env.model, env.frames[:1], None, env.path.slice(0, 5), chunk=0)),
    Case("engine-navigate-steps-zero", "steps", lambda env: navigate(
        env.model, env.frames[:1], None, env.path.slice(0, 5), steps=0)),
    Case("engine-sample-steps-zero", "steps", lambda env: denoise(
        env.model, lambda x, t: x, (1, 4, 64, 64), 0, torch.Generator())),
]
