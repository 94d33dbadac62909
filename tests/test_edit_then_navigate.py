"""workflows/edit_memory_then_navigate.json: the generated walk respects the artist's edits of the patch memory.

The workflow's own graph (converted like the frontend converts it) is evaluated node by node in the real
ComfyUI, and the generated frames are looked at where the edits are: the deleted red target's colour
must be absent where it stood, and the green copy present where it was put.
"""
from __future__ import annotations

import json

import pytest
import torch

from comfyui_support import PACK, load_runner
from memory.geometry.projection import project

RED_AT = (-5.9, 7.7, 0.3)       # the target the workflow deletes (sphere of 1.5 m: far patches straddle it)
COPY_AT = (-1.7, -4.0, 0.35)    # where it puts the copy of the green target (-0.5, -1.9) + (-1.2, -2.1)
RED = torch.tensor([154.0, 36.0, 28.0]) / 255    # the red target in the sample's frames
GREEN = torch.tensor([74.0, 133.0, 80.0]) / 255  # the green target in the sample's frames


def evaluate(prompt: dict, mappings: dict, node_id: str, done: dict) -> tuple:
    """Outputs of one node of an API prompt, evaluating its inputs first (a minimal executor, no caching tricks)."""
    if node_id in done:
        return done[node_id]
    entry = prompt[node_id]
    inputs = {k: evaluate(prompt, mappings, v[0], done)[v[1]] if isinstance(v, list) else v
              for k, v in entry["inputs"].items()}
    cls = mappings[entry["class_type"]]
    if hasattr(cls, "GET_SCHEMA"):
        result = tuple(cls.execute(**inputs).args)
    else:
        result = getattr(cls(), cls.FUNCTION)(**inputs)
    done[node_id] = result
    return result


def near(pixels: torch.Tensor, colour: torch.Tensor) -> torch.Tensor:
    """Which pixels [...,3] are within 0.12 (RGB distance) of ``colour``."""
    return (pixels - colour).norm(dim=-1) < 0.12


def around(frames: torch.Tensor, path, point: tuple, radius: int = 3) -> list[torch.Tensor]:
    """Per frame where ``point`` projects inside the image and in front of the camera: the pixels around it."""
    patches = []
    for i in range(len(frames)):
        uv, z = project(torch.tensor([point]), path.K, path.c2w[i])
        u, v = int(uv[0, 0]), int(uv[0, 1])
        if float(z.reshape(-1)[0]) > 0.3 and radius <= u < path.width - radius and radius <= v < path.height - radius:
            patches.append(frames[i, v - radius:v + radius + 1, u - radius:u + radius + 1])
    return patches


def run_walk(comfy, edited: bool) -> tuple:
    """(frames, covered path) of the workflow's Navigate with Memory node, on the edited memory or on the unedited one."""
    mappings, _ = comfy
    workflow = json.loads((PACK / "workflows" / "edit_memory_then_navigate.json").read_text())
    prompt = load_runner().ui_to_api(workflow, mappings)
    if not edited:
        spatial = next(v for v in prompt.values() if v["class_type"] == "CoMESpatialExpert")
        spatial["inputs"]["memory"] = [next(k for k, v in prompt.items() if v["class_type"] == "CoMEBuildPatchMemory"), 0]
    navigate = next(k for k, v in prompt.items() if v["class_type"] == "CoMENavigateWithMemory")
    outputs = evaluate(prompt, mappings, navigate, {})
    return outputs[0][1:], outputs[2].slice(1)


@pytest.fixture(scope="module")
def walk(comfy):
    """The generated frames of the workflow and their cameras."""
    return run_walk(comfy, edited=True)


@pytest.fixture(scope="module")
def unedited_walk(comfy):
    """The same walk through the memory before the edits (the control)."""
    return run_walk(comfy, edited=False)


def share(walk: tuple, point: tuple, colour: torch.Tensor) -> float:
    """Mean share of ``colour`` around ``point`` over the frames that see it."""
    frames, path = walk
    return float(torch.stack([near(p, colour).float().mean() for p in around(frames, path, point)]).mean())


def test_the_walk_sees_both_edited_places(walk):
    frames, path = walk
    assert len(around(frames, path, COPY_AT)) >= 3 and len(around(frames, path, RED_AT)) >= 3


def test_the_deleted_target_stays_deleted(walk, unedited_walk):
    # in the recorded frames that see it, 6-80% of these pixels are red
    assert share(unedited_walk, RED_AT, RED) > 0.1
    assert share(walk, RED_AT, RED) < 0.03


def test_the_copy_stands_where_it_was_put(walk, unedited_walk):
    # in the recorded frames that see the original green target, 24-37% of these pixels are green
    assert share(unedited_walk, COPY_AT, GREEN) < 0.03
    assert share(walk, COPY_AT, GREEN) > 0.1
