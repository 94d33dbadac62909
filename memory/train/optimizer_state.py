"""An optimizer's state in a safetensors file and back: checkpoints hold no pickle."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file


def save_state(path: Path, optimizer: torch.optim.Optimizer, meta: dict, tensors: dict[str, torch.Tensor] | None = None,
               prefix: str = "") -> None:
    """Write ``optimizer``'s state as ``{prefix}{index}.{key}`` tensors beside ``tensors``, ``meta`` and its param groups."""
    state = {f"{prefix}{index}.{key}": value if value.ndim else value.reshape(1)
             for index, values in optimizer.state_dict()["state"].items() for key, value in values.items()}
    meta = {**meta, "param_groups": optimizer.state_dict()["param_groups"]}
    save_file({name: value.contiguous() for name, value in {**(tensors or {}), **state}.items()}, str(path),
              metadata={"state": json.dumps(meta)})


def load_state(path: Path, optimizer: torch.optim.Optimizer, prefix: str = "") -> tuple[dict[str, torch.Tensor], dict]:
    """Restore into ``optimizer`` what :func:`save_state` wrote; returns the file's other tensors and its ``meta``."""
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads(f.metadata()["state"])
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    state: dict[int, dict[str, torch.Tensor]] = {}
    others = {}
    for name, value in tensors.items():
        if not name.startswith(prefix):
            others[name] = value
            continue
        index, key = name[len(prefix):].split(".", 1)
        state.setdefault(int(index), {})[key] = value.reshape(()) if key == "step" else value
    optimizer.load_state_dict({"state": state, "param_groups": meta.pop("param_groups")})
    return others, meta
