"""Malformed inputs of Train, Save and Load Episodic LoRA (widgets, frames, cameras, LoRAs, file names, damaged files)."""
from __future__ import annotations

import dataclasses
import importlib
import json

import torch
from safetensors.torch import save_file

from malformed_support import Case

LORAS = "episodic_loras"


def _lora(env):
    """A valid LoRA of the embedded model (one step on the sample's first 6 frames), made once."""
    if "lora" not in env.cache:
        env.cache["lora"] = env.call("CoMETrainEpisodicLoRA", rank=2, steps=1, last_frame=5).args[0]
    return env.cache["lora"]


def _train(**overrides):
    """Train Episodic LoRA with one malformed input (cheap settings, so a missed check would still end soon)."""
    return lambda env: env.call("CoMETrainEpisodicLoRA", **({"steps": 1, "last_frame": 11} | overrides))


def _changed(**fields):
    """Train Episodic LoRA continuing from a valid LoRA with some fields changed."""
    return lambda env: env.call("CoMETrainEpisodicLoRA", steps=1, last_frame=11,
                                continue_from=dataclasses.replace(_lora(env), **fields))


def _save(lora=None, **overrides):
    """Save Episodic LoRA of a valid LoRA (or ``lora(env)``) with one malformed input."""
    return lambda env: env.call("CoMESaveEpisodicLoRA", lora=_lora(env) if lora is None else lora(env), **overrides)


def _folder(env):
    """A scratch episodic_loras folder registered (after the default one) with ComfyUI."""
    root = env.scratch / LORAS
    root.mkdir(exist_ok=True)
    folder_paths = importlib.import_module("folder_paths")
    if str(root) not in folder_paths.get_folder_paths(LORAS):
        folder_paths.add_model_folder_path(LORAS, str(root))
    return root


def _damaged(name, tensors=None, metadata=None, raw=None):
    """A setup writing ``name`` into the scratch folder: a valid LoRA file with its tensors or metadata changed."""
    def setup(env):
        lora = _lora(env)
        meta = {"format": "come-episodic-lora/1", "rank": str(lora.rank), "alpha": repr(lora.alpha),
                "targets": json.dumps(list(lora.targets)), "backbone": lora.backbone, "steps": str(lora.steps)}
        path = _folder(env) / name
        if raw is not None:
            path.write_bytes(raw)
            return
        weights = dict(lora.weights)
        save_file(tensors(weights) if tensors else weights, str(path), metadata=metadata(meta) if metadata else meta)
    return setup


def _load(name):
    return lambda env: env.call("CoMELoadEpisodicLoRA", lora_file=name)


def _first(change):
    def edit(weights):
        key = sorted(weights)[0]
        return weights | {key: change(weights[key])}
    return edit


def _depth(env, count):
    return type(env.metric_depth)(env.metric_depth.metres[:count])


CASES = [
    Case("lora-rank-zero", "rank", _train(rank=0)),
    Case("lora-rank-huge", "rank", _train(rank=100_000)),
    Case("lora-steps-zero", "steps", _train(steps=0)),
    Case("lora-steps-nan", "steps", _train(steps=float("nan"))),
    Case("lora-lr-zero", "lr", _train(lr=0.0)),
    Case("lora-lr-nan", "lr", _train(lr=float("nan"))),
    Case("lora-lr-string", "lr", _train(lr="1e-3")),
    Case("lora-seed-negative", "seed", _train(seed=-1)),
    Case("lora-first-frame-past-end", "first_frame", _train(first_frame=5000, last_frame=-1)),
    Case("lora-last-frame-past-end", "last_frame", _train(last_frame=5000)),
    Case("lora-last-before-first", "last_frame", _train(first_frame=10, last_frame=5)),
    Case("lora-too-few-frames", "frames", _train(last_frame=3)),
    Case("lora-frames-not-image", "frames", _train(frames="frames.png")),
    Case("lora-frames-nan", "frames", lambda env: _train(frames=env.frames * float("nan"))(env)),
    Case("lora-frames-rgba", "frames", lambda env: _train(frames=torch.cat([env.frames, env.frames[..., :1]], -1))(env)),
    Case("lora-frames-other-size", "camera_path", lambda env: _train(frames=env.frames[:, :56, :56])(env)),
    Case("lora-depth-count", "metric_depth", lambda env: _train(metric_depth=_depth(env, 20))(env)),
    Case("lora-depth-negative", "metric_depth",
         lambda env: _train(metric_depth=type(env.metric_depth)(-env.metric_depth.metres))(env)),
    Case("lora-depth-not-depth", "metric_depth", _train(metric_depth="depth")),
    Case("lora-path-not-path", "camera_path", _train(camera_path=[1, 2, 3])),
    Case("lora-path-shorter", "camera_path", lambda env: _train(camera_path=env.path.slice(0, 20))(env)),
    Case("lora-world-model-not-model", "world_model", _train(world_model="model")),
    Case("lora-continue-not-lora", "continue_from", _train(continue_from="lora.safetensors")),
    Case("lora-continue-other-backbone", "continue_from",
         _changed(backbone='MosaicDiT:{"depth": 1, "hidden_size": 32, "num_heads": 2, "patch_size": 8}')),
    Case("lora-continue-other-rank", "continue_from", _changed(rank=4, alpha=4.0)),
    Case("lora-continue-missing-target", "continue_from",
         lambda env: _changed(targets=_lora(env).targets[1:])(env)),
    Case("lora-save-not-lora", "lora", _save(lora=lambda env: {"weights": {}})),
    Case("lora-save-nan-weights", "lora", _save(lora=lambda env: dataclasses.replace(
        _lora(env), weights=_first(lambda t: t * float("nan"))(dict(_lora(env).weights))))),
    Case("lora-save-prefix-dotdot", "filename_prefix", _save(filename_prefix="../../escape")),
    Case("lora-save-prefix-absolute", "filename_prefix", _save(filename_prefix="/tmp/escape")),
    Case("lora-save-prefix-empty", "filename_prefix", _save(filename_prefix="")),
    Case("lora-save-prefix-nul", "filename_prefix", _save(filename_prefix="a\x00b")),
    Case("lora-load-unoffered", "lora_file", _load("../../etc/passwd")),
    Case("lora-load-not-safetensors", "lora_file", _load("garbage.safetensors"),
         setup=_damaged("garbage.safetensors", raw=b"\x00" * 64)),
    Case("lora-load-nan", "lora_file", _load("nan.safetensors"),
         setup=_damaged("nan.safetensors", tensors=_first(lambda t: t * float("nan")))),
    Case("lora-load-missing-tensor", "lora_file", _load("missing.safetensors"),
         setup=_damaged("missing.safetensors", tensors=lambda w: dict(sorted(w.items())[1:]))),
    Case("lora-load-wrong-rank", "lora_file", _load("rank.safetensors"),
         setup=_damaged("rank.safetensors", metadata=lambda m: m | {"rank": "3"})),
    Case("lora-load-bad-metadata", "lora_file", _load("meta.safetensors"),
         setup=_damaged("meta.safetensors", metadata=lambda m: m | {"targets": "not json"})),
    Case("lora-load-other-format", "lora_file", _load("format.safetensors"),
         setup=_damaged("format.safetensors", metadata=lambda m: m | {"format": "come-patch-memory/1"})),
    Case("lora-load-newer-version", "lora_file", _load("newer.safetensors"),
         setup=_damaged("newer.safetensors", metadata=lambda m: m | {"format": "come-episodic-lora/2"})),
    Case("lora-load-int-weights", "lora_file", _load("int.safetensors"),
         setup=_damaged("int.safetensors", tensors=_first(lambda t: t.to(torch.int32)))),
]
