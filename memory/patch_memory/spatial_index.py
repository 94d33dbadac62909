"""A 2D grid over patch centres (world x, y) so that retrieval touches only the cells a camera can see.

Built once per memory (sort by cell, O(N log N)) and cached on it; a query for an axis-aligned
rectangle costs O(occupied cells + patches returned) instead of O(N). The world is z-up and scenes
are mostly wide rather than tall, so the grid ignores z; exact culling happens afterwards.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

TARGET_CELLS_PER_SIDE = 256
MIN_CELL_M = 0.5


@dataclass(frozen=True)
class GridIndex:
    """Patches sorted by grid cell: ``order`` [N] patch indices, per occupied cell its coordinates [C,2] and span in ``order``."""

    cell_size: float
    origin: torch.Tensor
    cells: torch.Tensor
    starts: torch.Tensor
    counts: torch.Tensor
    order: torch.Tensor
    max_radius: float

    @classmethod
    def build(cls, centres: torch.Tensor, radii: torch.Tensor) -> "GridIndex":
        """Index of patch centres [N,3] with bounding radii [N]."""
        xy = centres[:, :2]
        origin = xy.amin(0) if len(xy) else torch.zeros(2)
        extent = float((xy.amax(0) - origin).max()) if len(xy) else 0.0
        cell_size = max(extent / TARGET_CELLS_PER_SIDE, MIN_CELL_M)
        coords = torch.floor((xy - origin) / cell_size).long()
        key = coords[:, 0] * (TARGET_CELLS_PER_SIDE * 4) + coords[:, 1]
        key, order = torch.sort(key, stable=True)
        unique, counts = torch.unique_consecutive(key, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        cells = coords[order[starts]] if len(order) else torch.zeros(0, 2, dtype=torch.long)
        return cls(cell_size, origin, cells, starts, counts, order, float(radii.max()) if len(radii) else 0.0)

    def query(self, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """Sorted indices of patches whose bounding sphere may reach the xy rectangle [lo, hi] (each [2])."""
        margin = self.max_radius
        first = torch.floor((lo - margin - self.origin) / self.cell_size).long()
        last = torch.floor((hi + margin - self.origin) / self.cell_size).long()
        hit = ((self.cells >= first) & (self.cells <= last)).all(-1)
        starts, counts = self.starts[hit], self.counts[hit]
        total = int(counts.sum())
        offsets = torch.cumsum(counts, 0) - counts
        within = torch.arange(total) - torch.repeat_interleave(offsets, counts)
        return self.order[torch.repeat_interleave(starts, counts) + within].sort().values
