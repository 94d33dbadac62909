"""The benchmarks' PNG plots: matplotlib figures drawn by the Agg canvas (no screen, no pyplot global state).

matplotlib is the ``bench`` extra of pyproject.toml (``pip install "comfyui-come[bench]"``). The scripts
import this module after putting the repository root on sys.path (for ``memory``).
"""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from memory.metrics import frame_grid

DPI = 110
JSON_HELP = "output JSON file (a .png plot is written next to it)"
GAP = 2  # pixels between frames in a frame grid


def check_output(out: Path) -> None:
    """A ValueError naming ``--json`` unless ``out`` can take the results, checked before any measuring."""
    if out.suffix.lower() == ".png":
        raise ValueError(f"--json: {out} ends in .png, the name of the plot written next to the results; "
                         "give a .json file.")
    if out.is_dir():
        raise ValueError(f"--json: {out} is a folder; give a file name, e.g. {out / 'result.json'}.")
    existing = next(p for p in (out.absolute(), *out.absolute().parents) if p.exists())
    if existing != out.absolute() and not existing.is_dir():
        raise ValueError(f"--json: {existing} is a file, so {out} cannot be created under it.")
    if not os.access(existing if existing.is_dir() else existing.parent, os.W_OK):
        raise ValueError(f"--json: {existing} is not writable; give a path in a folder you can write to.")


def json_output(text: str) -> Path:
    """argparse type of ``--json``: the path, refused before any measuring unless it can take the results."""
    path = Path(text)
    try:
        check_output(path)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err).removeprefix("--json: ")) from None
    return path


def figure(width_in: float, height_in: float) -> Figure:
    """An empty figure of that size in inches, laid out by matplotlib, with the Agg canvas attached."""
    fig = Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: Path) -> None:
    """Write ``fig`` as a PNG at ``path``, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")


def show_frames(ax: Axes, frames: torch.Tensor, columns: int, title: str | None = None) -> None:
    """Frames [N,H,W,3] in 0..1 as one image, row-major in ``columns`` with GAP-pixel gaps, pixels unsmoothed."""
    ax.imshow(frame_grid(frames, columns, GAP).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)


def bars(ax: Axes, labels: list[str], values: list[float], fmt: str, colours: list[str]) -> None:
    """A bar per value with the value written above it; a non-finite value gets an empty bar and its text."""
    heights = [v if math.isfinite(v) else 0.0 for v in values]
    drawn = ax.bar(labels, heights, color=colours, width=0.6)
    ax.bar_label(drawn, labels=[fmt.format(v) for v in values], padding=2, fontsize=8)
    ax.margins(y=0.15)
