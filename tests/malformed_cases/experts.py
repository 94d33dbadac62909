"""Malformed inputs of the memory-expert nodes, PoCE Combine and Navigate with Memory."""
from __future__ import annotations

import dataclasses

import torch

from malformed_support import Case

NAN = float("nan")


def _navigate(env, **overrides):
    """Navigate with Memory from the sample's first frame along its next 4 cameras, except ``overrides``."""
    inputs = dict(world_model=env.model, composition=env.composition, initial_frames=env.frames[:1],
                  camera_path=env.path.slice(0, 5), chunk_size=4, steps=1, seed=0) | overrides
    return env.node("CoMENavigateWithMemory").execute(**inputs)


def _empty_memory(env):
    return type(env.memory).empty(8)


def _with_lora(env, **changes):
    """Navigate with Memory under a long-term expert whose LoRA has ``changes`` (as if trained on another backbone)."""
    lora = dataclasses.replace(env.lora, **changes)
    expert = env.call("CoMELongTermExpert", lora=lora).args[0]
    return _navigate(env, composition=env.call("CoMEPoCECombine", expert_1=expert).args[0])


def _memory_of_patch(env, size):
    depth = type(env.metric_depth)(env.metric_depth.metres[:2])
    return env.call("CoMEBuildPatchMemory", frames=env.frames[:2], metric_depth=depth, camera_path=env.path.slice(0, 2),
                    patch_size=size).args[0]


CASES = [
    *(Case(f"expert-{node}-alpha-{label}", "alpha", lambda env, n=node, v=value: env.call(f"CoME{n}Expert", alpha=v))
      for node in ("Base", "ShortTerm") for label, value in (("below-one", 0.5), ("nan", NAN), ("inf", float("inf")),
                                                            ("text", "2"), ("bool", True))),
    Case("expert-spatial-alpha-nan", "alpha", lambda env: env.call("CoMESpatialExpert", alpha=NAN)),
    Case("expert-spatial-empty-memory", "memory", lambda env: env.call("CoMESpatialExpert", memory=_empty_memory(env))),
    Case("expert-spatial-not-memory", "memory", lambda env: env.call("CoMESpatialExpert", memory="scene.safetensors")),
    Case("expert-spatial-guidance-above-one", "guidance", lambda env: env.call("CoMESpatialExpert", guidance=1.5)),
    Case("expert-spatial-guidance-nan", "guidance", lambda env: env.call("CoMESpatialExpert", guidance=NAN)),
    Case("expert-short-term-frames-zero", "frames", lambda env: env.call("CoMEShortTermExpert", frames=0)),
    Case("expert-short-term-frames-huge", "frames", lambda env: env.call("CoMEShortTermExpert", frames=10 ** 6)),
    Case("expert-long-term-not-lora", "lora", lambda env: env.call("CoMELongTermExpert", lora="lora.safetensors")),
    Case("expert-long-term-stream-negative", "stream_steps", lambda env: env.call("CoMELongTermExpert", stream_steps=-1)),
    Case("expert-long-term-lr-nan", "stream_lr", lambda env: env.call("CoMELongTermExpert", stream_lr=NAN)),
    Case("combine-not-expert", "expert_1", lambda env: env.call("CoMEPoCECombine", expert_1="base")),
    Case("combine-slot-not-expert", "expert_2", lambda env: env.call("CoMEPoCECombine", expert_2=3)),
    Case("combine-more-not-composition", "more", lambda env: env.call("CoMEPoCECombine", more=[env.expert])),
    Case("navigate-memory-not-composition", "composition", lambda env: _navigate(env, composition=env.expert)),
    Case("navigate-memory-chunk-zero", "chunk_size", lambda env: _navigate(env, chunk_size=0)),
    Case("navigate-memory-steps-zero", "steps", lambda env: _navigate(env, steps=0)),
    Case("navigate-memory-frames-nan", "initial_frames",
         lambda env: _navigate(env, initial_frames=torch.full_like(env.frames[:1], NAN))),
    Case("navigate-memory-path-too-short", "camera_path", lambda env: _navigate(env, camera_path=env.path.slice(0, 1))),
    Case("navigate-memory-other-patch-size", "memory", lambda env: _navigate(env, composition=env.call(
        "CoMEPoCECombine", expert_1=env.call("CoMESpatialExpert", memory=_memory_of_patch(env, 16)).args[0]).args[0])),
    Case("navigate-memory-model-not-model", "world_model", lambda env: _navigate(env, world_model="model")),
    Case("navigate-memory-lora-other-backbone", "lora", lambda env: _with_lora(
        env, backbone='MosaicDiT:{"depth": 1, "hidden_size": 32, "num_heads": 2, "patch_size": 8}')),
    Case("navigate-memory-lora-other-rank", "lora", lambda env: _with_lora(env, rank=env.lora.rank + 2)),
]
