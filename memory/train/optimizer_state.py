"""An optimizer's state as flat safetensors tensors and back: checkpoints hold no pickle."""
from __future__ import annotations

import torch


def optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str = "") -> dict[str, torch.Tensor]:
    """Every per-parameter state tensor of ``optimizer`` as ``{prefix}{index}.{key}`` (scalars as shape [1])."""
    return {f"{prefix}{index}.{key}": value if value.ndim else value.reshape(1)
            for index, state in optimizer.state_dict()["state"].items() for key, value in state.items()}


def restore_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], param_groups: list[dict],
                      prefix: str = "") -> None:
    """Load into ``optimizer`` the state :func:`optimizer_tensors` wrote under ``prefix``, with ``param_groups``."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith(prefix):
            index, key = name[len(prefix):].split(".", 1)
            state.setdefault(int(index), {})[key] = value.reshape(()) if key == "step" else value
    optimizer.load_state_dict({"state": state, "param_groups": param_groups})
