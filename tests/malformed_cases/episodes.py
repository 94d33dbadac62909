"""Malformed inputs of Load Episode (damaged files in input/episodes/) and Metric Depth from Image."""
from __future__ import annotations

import json
import math
import struct

import torch
from safetensors.torch import load_file, save_file

from malformed_support import Case
from memory.data.episode import SAMPLE_EPISODE

EPISODE_FOLDER = "episodes"
NAN, INF = math.nan, math.inf
METADATA = {"format": "come-episode/1", "source": "test", "seed": "0", "context_frames": "4", "description": ""}


def _sample(frames: int = 8) -> dict[str, torch.Tensor]:
    """The first ``frames`` frames of the embedded sample episode as stored tensors."""
    tensors = load_file(str(SAMPLE_EPISODE))
    return {k: v if k == "K" else v[:frames].contiguous() for k, v in tensors.items()}


def _changed(name: str, change):
    """``change(copy)`` applied to a copy of the stored tensor ``name``, as a tensors-editing function."""
    def edit(tensors):
        copy = tensors[name].clone()
        change(copy)
        return dict(tensors, **{name: copy})
    return edit


def _set(index, value):
    def change(t):
        t[index] = value
    return change


def _episode_file(name: str, tensors=None, metadata: dict | None = None, raw=None):
    """A setup writing input/episodes/<name>.safetensors: the sample's first frames, damaged as described."""
    def setup(env):
        folder = env.input / EPISODE_FOLDER
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{name}.safetensors"
        if raw is not None:
            target.write_bytes(raw())
            return
        data = _sample() if tensors is None else tensors(_sample())
        meta = {k: v for k, v in (METADATA | (metadata or {})).items() if v is not None}
        save_file({k: v.contiguous() for k, v in data.items()}, str(target), metadata=meta)
    return setup


def _header_only(header: object) -> bytes:
    """A safetensors file of only a (hand-written) JSON header."""
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text


def _episode_case(name: str, **damage) -> Case:
    return Case(f"episode-{name}", "episode",
                lambda env: env.call("CoMELoadEpisode", episode=f"{EPISODE_FOLDER}/{name}.safetensors"),
                _episode_file(name, **damage))


def _rotated_k(tensors):
    K = tensors["K"].clone()
    K[0, 1] = 2.0  # skew: not a pinhole matrix of this format
    return dict(tensors, K=K)


def _depth_image(change=None, shape=(2, 16, 16, 3), dtype=torch.float32):
    """Metric Depth from Image on a grey ramp image, after ``change(image)``."""
    def call(env):
        image = torch.linspace(0.1, 0.9, math.prod(shape)).reshape(shape).to(dtype)
        if change is not None:
            change(image)
        return env.call("CoMEDepthFromImage", depth_image=image)
    return call


def _depth_node(**overrides):
    return lambda env: env.call("CoMEDepthFromImage", depth_image=torch.full((1, 8, 8, 3), 0.5), **overrides)


CASES: list[Case] = [
    _episode_case("truncated", raw=lambda: SAMPLE_EPISODE.read_bytes()[:5000]),
    _episode_case("truncated-header", raw=lambda: SAMPLE_EPISODE.read_bytes()[:20]),
    _episode_case("empty-file", raw=lambda: b""),
    _episode_case("header-not-json", raw=lambda: _header_only("zzz")),
    _episode_case("metadata-not-strings", raw=lambda: _header_only({"__metadata__": {"format": "come-episode/1", "seed": 5}})),
    _episode_case("no-format", metadata={"format": None}),
    _episode_case("newer-format", metadata={"format": "come-episode/2"}),
    _episode_case("no-seed", metadata={"seed": None}),
    _episode_case("seed-fraction", metadata={"seed": "1.5"}),
    _episode_case("seed-negative", metadata={"seed": "-1"}),
    _episode_case("seed-huge", metadata={"seed": "9" * 30}),
    _episode_case("context-arabic-digit", metadata={"context_frames": "\u0663"}),
    _episode_case("context-underscore", metadata={"context_frames": "1_0"}),
    _episode_case("context-zero", metadata={"context_frames": "0"}),
    _episode_case("context-all-frames", metadata={"context_frames": "8"}),
    _episode_case("no-depth", tensors=lambda t: {k: v for k, v in t.items() if k != "depth"}),
    _episode_case("extra-tensor", tensors=lambda t: dict(t, extra=torch.zeros(3))),
    _episode_case("rgb-float", tensors=lambda t: dict(t, rgb=t["rgb"].float() / 255)),
    _episode_case("rgb-rgba", tensors=lambda t: dict(t, rgb=torch.cat([t["rgb"], t["rgb"][..., :1]], -1))),
    _episode_case("rgb-no-frames", tensors=lambda t: dict(t, rgb=t["rgb"][:0], depth=t["depth"][:0], c2w=t["c2w"][:0],
                                                            actions=t["actions"][:0])),
    _episode_case("depth-float32", tensors=lambda t: dict(t, depth=t["depth"].float())),
    _episode_case("depth-integer", tensors=lambda t: dict(t, depth=t["depth"].to(torch.int16))),
    _episode_case("depth-nan", tensors=_changed("depth", _set((1, 2, 3), NAN))),
    _episode_case("depth-inf", tensors=_changed("depth", _set((2, 0, 0), INF))),
    _episode_case("depth-negative", tensors=_changed("depth", _set((0, 5, 5), -1.0))),
    _episode_case("depth-all-zero-frame", tensors=_changed("depth", _set(3, 0.0))),
    _episode_case("depth-count", tensors=lambda t: dict(t, depth=t["depth"][:5])),
    _episode_case("depth-size", tensors=lambda t: dict(t, depth=t["depth"][:, :32])),
    _episode_case("c2w-count", tensors=lambda t: dict(t, c2w=t["c2w"][:6])),
    _episode_case("c2w-3x4", tensors=lambda t: dict(t, c2w=t["c2w"][:, :3])),
    _episode_case("c2w-float16", tensors=lambda t: dict(t, c2w=t["c2w"].half())),
    _episode_case("c2w-scaled", tensors=_changed("c2w", lambda c: c[2, :3, :3].mul_(1.5))),
    _episode_case("c2w-nan", tensors=_changed("c2w", _set((0, 0, 3), NAN))),
    _episode_case("K-skew", tensors=_rotated_k),
    _episode_case("K-4x4", tensors=lambda t: dict(t, K=torch.eye(4))),
    _episode_case("K-negative-focal", tensors=_changed("K", _set((0, 0), -30.0))),
    _episode_case("K-principal-point-outside", tensors=_changed("K", _set((1, 2), 500.0))),
    _episode_case("K-last-row", tensors=_changed("K", _set((2, 2), 2.0))),
    _episode_case("K-float64", tensors=lambda t: dict(t, K=t["K"].double())),
    _episode_case("actions-float", tensors=lambda t: dict(t, actions=t["actions"].float())),
    _episode_case("actions-count", tensors=lambda t: dict(t, actions=t["actions"][:3])),
    # Metric Depth from Image
    Case("depth-image-nan", "depth_image", _depth_image(_set((0, 1, 1, 0), NAN))),
    Case("depth-image-inf", "depth_image", _depth_image(_set((1, 0, 0, 2), INF))),
    Case("depth-image-above-one", "depth_image", _depth_image(lambda x: x.mul_(255))),
    Case("depth-image-negative", "depth_image", _depth_image(_set((0, 0, 0), -0.5))),
    Case("depth-image-no-channels", "depth_image", _depth_image(shape=(1, 16, 16, 0))),
    Case("depth-image-five-channels", "depth_image", _depth_image(shape=(1, 16, 16, 5))),
    Case("depth-image-3d", "depth_image", _depth_image(shape=(16, 16, 3))),
    Case("depth-image-5d", "depth_image", _depth_image(shape=(1, 1, 16, 16, 3))),
    Case("depth-image-empty-batch", "depth_image", _depth_image(shape=(0, 16, 16, 3))),
    Case("depth-image-integer", "depth_image", _depth_image(shape=(1, 4, 4, 3), dtype=torch.int32)),
    Case("depth-image-not-image", "depth_image", lambda env: env.call("CoMEDepthFromImage", depth_image="depth.png")),
    Case("depth-near-zero", "near", _depth_node(near=0.0)),
    Case("depth-near-nan", "near", _depth_node(near=NAN)),
    Case("depth-far-nan", "far", _depth_node(far=NAN)),
    Case("depth-far-inf", "far", _depth_node(far=INF)),
    Case("depth-far-before-near", "far", _depth_node(near=5.0, far=1.0)),
    Case("depth-far-equal-near", "far", _depth_node(near=2.0, far=2.0)),
]
