"""Turn a display depth IMAGE (e.g. from a depth-estimation node) into metric depth for the patch memory."""
from __future__ import annotations

import torch
from comfy_api.latest import io

from ..memory.geometry.depth import depth_from_image
from .types import CATEGORY, DepthType, check_widgets


class DepthFromImage(io.ComfyNode):
    """Metric depth from a normalised depth IMAGE, mapped into [near, far] metres."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CoMEDepthFromImage",
            display_name="Metric Depth from Image (CoME)",
            category=f"{CATEGORY}/episode",
            description="Maps a depth IMAGE in 0..1 to metres so frames without recorded depth can be lifted "
            "into a patch memory. Black pixels stay invalid.",
            inputs=[
                io.Image.Input("depth_image", tooltip="Depth for display, one per frame (e.g. from a depth estimator)."),
                io.Float.Input("near", default=0.3, min=0.001, max=10000.0, step=0.05,
                               tooltip="Metres at the nearest value (white if inverse, black if not)."),
                io.Float.Input("far", default=20.0, min=0.002, max=100000.0, step=0.5,
                               tooltip="Metres at the farthest value."),
                io.Boolean.Input("inverse", default=True,
                                 tooltip="On: the image is inverse depth (white = near), as most estimators output. "
                                 "Off: linear depth (white = far)."),
            ],
            outputs=[DepthType.Output("metric_depth", display_name="metric_depth", tooltip="Metric z-depth in metres.")],
        )

    @classmethod
    def execute(cls, depth_image: torch.Tensor, near: float, far: float, inverse: bool) -> io.NodeOutput:
        check_widgets(cls, near=near, far=far)
        if not isinstance(inverse, bool):
            raise ValueError(f"inverse: expected true or false, got {inverse!r}.")
        return io.NodeOutput(depth_from_image(depth_image, near, far, inverse))
