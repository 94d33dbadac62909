"""Simulator data generators (Memory Maze, MiniWorld). Simulators are optional and imported lazily.

Install them with ``pip install "comfyui-come[sim]"``; ``memory.data.sim`` itself imports without them.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import ModuleType

import numpy as np

SIMULATORS = ("memory_maze", "miniworld")
INSTALL_HINT = 'install the simulators with `pip install "comfyui-come[sim]"`'


@dataclass(frozen=True)
class View:
    """One rendered camera: ``rgb`` uint8 [H,W,3], metric z-depth float32 [H,W] (0 = sky), OpenCV ``c2w`` float32 [4,4]."""

    rgb: np.ndarray
    depth: np.ndarray
    c2w: np.ndarray


def missing_simulator(package: str, pins: str) -> ImportError:
    """The error raised when a simulator package cannot be imported."""
    return ImportError(f"The simulator package '{package}' is not installed; {INSTALL_HINT} (pins: {pins}).")


def load_simulator(name: str) -> ModuleType:
    """The simulator module ``memory.data.sim.<name>``; ``ValueError`` for unknown names, ``ImportError`` if not installed."""
    if name not in SIMULATORS:
        raise ValueError(f"sim: unknown simulator '{name}'; choose one of {', '.join(SIMULATORS)}.")
    return importlib.import_module(f".{name}", __name__)
