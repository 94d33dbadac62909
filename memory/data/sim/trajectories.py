"""Scripted walking-explorer trajectories on a 2D occupancy grid, deterministic by seed.

The explorer walks between goals along shortest paths, turning in place at sharp corners and
walking straight otherwise. After the exploration phase it revisits: it turns around, walks back
along its own track for a while, turns again and re-walks the track in the original direction (so
the later frames see the same places from the same headings), then keeps exploring.

Walk styles (``WALKS``, ``--walk``); every one stays on free cells and is deterministic by seed:

    default        the explore-and-revisit walk above
    varied         the same, but each leg between goals is walked at its own speed, 0.5x to 2x
    turn_in_place  the same, plus a full turn on the spot (either way) at every goal
    look_around    the same, plus a stop at every goal to pan 45-90 degrees to one side, across to
                   the other and back
    loop           long loops through novel goals that come back to the start; the walk ends where
                   it began (after its last loop it turns on the spot there)

Pure numpy: no simulator needed.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

# Memory Maze's discrete action ids, used for both simulators so that episodes share one vocabulary.
NOOP, FORWARD, LEFT, RIGHT, FORWARD_LEFT, FORWARD_RIGHT = range(6)
WALKS = ("default", "varied", "turn_in_place", "look_around", "loop")
_NEIGHBOURS = [(-1, 0), (1, 0), (0, -1), (0, 1), (-1, -1), (-1, 1), (1, -1), (1, 1)]


@dataclass(frozen=True)
class OccupancyGrid:
    """Cells where the walker's centre may stand: ``free`` [R,C] bool; cell (r, c) is centred at (x0 + c·s, y0 − r·s)."""

    free: np.ndarray
    cell_size: float
    origin: tuple[float, float]

    def __post_init__(self) -> None:
        if self.free.ndim != 2 or self.free.dtype != np.bool_ or not self.free.any():
            raise ValueError("OccupancyGrid: free must be a 2D bool array with at least one free cell.")
        if self.cell_size <= 0:
            raise ValueError(f"OccupancyGrid: cell_size must be positive, got {self.cell_size}.")

    @classmethod
    def from_predicate(
        cls, x_range: tuple[float, float], y_range: tuple[float, float], cell_size: float,
        is_free: Callable[[float, float], bool],
    ) -> "OccupancyGrid":
        """Sample ``is_free(x, y)`` at cell centres covering the given world ranges (metres)."""
        cols = int(math.floor((x_range[1] - x_range[0]) / cell_size))
        rows = int(math.floor((y_range[1] - y_range[0]) / cell_size))
        x0, y0 = x_range[0] + cell_size / 2, y_range[1] - cell_size / 2
        free = np.array([[bool(is_free(x0 + c * cell_size, y0 - r * cell_size)) for c in range(cols)] for r in range(rows)])
        return cls(free, cell_size, (x0, y0))

    def centre(self, cell: tuple[int, int]) -> np.ndarray:
        """World (x, y) of a cell's centre."""
        return np.array([self.origin[0] + cell[1] * self.cell_size, self.origin[1] - cell[0] * self.cell_size])

    def cell_of(self, xy: np.ndarray) -> tuple[int, int]:
        """The cell containing world point ``xy``."""
        return (int(round((self.origin[1] - xy[1]) / self.cell_size)), int(round((xy[0] - self.origin[0]) / self.cell_size)))

    def is_free_xy(self, xy: np.ndarray) -> bool:
        """Whether world point ``xy`` lies in a free cell."""
        r, c = self.cell_of(xy)
        return 0 <= r < self.free.shape[0] and 0 <= c < self.free.shape[1] and bool(self.free[r, c])

    def distances(self, start: tuple[int, int]) -> tuple[np.ndarray, dict[tuple[int, int], tuple[int, int]]]:
        """Breadth-first step counts [R,C] from ``start`` (-1 = unreachable) and the parent of each reached cell."""
        dist = np.full(self.free.shape, -1, dtype=np.int64)
        parent: dict[tuple[int, int], tuple[int, int]] = {}
        dist[start] = 0
        queue = deque([start])
        while queue:
            r, c = queue.popleft()
            for dr, dc in _NEIGHBOURS:
                nr, nc = r + dr, c + dc
                if not (0 <= nr < self.free.shape[0] and 0 <= nc < self.free.shape[1]):
                    continue
                # Diagonal steps may not cut a blocked corner.
                if not self.free[nr, nc] or dist[nr, nc] >= 0 or not (self.free[r, nc] and self.free[nr, c]):
                    continue
                dist[nr, nc] = dist[r, c] + 1
                parent[(nr, nc)] = (r, c)
                queue.append((nr, nc))
        return dist, parent

    def line_is_free(self, a: np.ndarray, b: np.ndarray) -> bool:
        """Whether the straight segment a→b stays in free cells (sampled every quarter cell)."""
        n = max(2, int(math.ceil(np.linalg.norm(b - a) / (0.25 * self.cell_size))) + 1)
        return all(self.is_free_xy(a + (b - a) * k / (n - 1)) for k in range(n))


@dataclass(frozen=True)
class Trajectory:
    """Walker poses per frame: ``xy`` [T,2] metres, ``yaw`` [T] radians about +z (0 = +x), ``actions`` [T] ids."""

    xy: np.ndarray
    yaw: np.ndarray
    actions: np.ndarray

    def __len__(self) -> int:
        return int(len(self.yaw))


def _wrap(angle: float) -> float:
    return (angle + math.pi) % (2 * math.pi) - math.pi


def shortest_path(grid: OccupancyGrid, start: tuple[int, int], goal: tuple[int, int]) -> list[np.ndarray]:
    """Waypoints (world xy) of a shortest 8-connected path, shortened where straight lines stay free."""
    _, parent = grid.distances(start)
    if goal != start and goal not in parent:
        raise ValueError(f"shortest_path: goal cell {goal} is not reachable from {start}.")
    cells = [goal]
    while cells[-1] != start:
        cells.append(parent[cells[-1]])
    points = [grid.centre(c) for c in reversed(cells)]
    # String pulling: from each kept point jump to the farthest point still in straight line of sight.
    pulled, i = [points[0]], 0
    while i < len(points) - 1:
        j = len(points) - 1
        while j > i + 1 and not grid.line_is_free(points[i], points[j]):
            j -= 1
        pulled.append(points[j])
        i = j
    return pulled


class _Walker:
    """Frame-by-frame motion along a polyline: turn in place at sharp corners, otherwise walk at constant speed."""

    def __init__(self, xy: np.ndarray, yaw: float, speed: float, turn: float, align_tol: float) -> None:
        self.xy, self.yaw = xy.astype(np.float64), float(yaw)
        self.speed, self.turn, self.align_tol = speed, turn, align_tol
        self._last_turn = 0.0
        self.frames: list[tuple[np.ndarray, float, int]] = [(self.xy.copy(), self.yaw, NOOP)]

    def follow(self, waypoints: list[np.ndarray], limit: int) -> None:
        """Append frames walking through ``waypoints`` until they are done or ``limit`` frames exist."""
        queue: list[np.ndarray] = []
        for w in waypoints:
            w = np.asarray(w, dtype=np.float64)
            if not queue or np.linalg.norm(w - queue[-1]) > 1e-6:
                queue.append(w)
        while queue and len(self.frames) < limit:
            if np.linalg.norm(queue[0] - self.xy) < 1e-6:
                queue.pop(0)
                continue
            self._step(queue)

    def face(self, yaw: float, limit: int) -> None:
        """Append frames turning in place until heading ``yaw`` (or ``limit`` frames)."""
        while abs(_wrap(yaw - self.yaw)) > 1e-6 and len(self.frames) < limit:
            self._turn_towards(yaw)
            self.frames.append((self.xy.copy(), self.yaw, LEFT if self._last_turn > 0 else RIGHT))

    def spin(self, angle: float, limit: int) -> None:
        """Append frames turning in place by ``angle`` radians (either sign, may exceed a full turn) or until ``limit`` frames."""
        left = angle
        while abs(left) > 1e-9 and len(self.frames) < limit:
            step = float(np.clip(left, -self.turn, self.turn))
            self.yaw, left = _wrap(self.yaw + step), left - step
            self.frames.append((self.xy.copy(), self.yaw, LEFT if step > 0 else RIGHT))

    def _turn_towards(self, heading: float) -> None:
        err = _wrap(heading - self.yaw)
        self._last_turn = float(np.clip(err, -self.turn, self.turn))
        self.yaw = _wrap(self.yaw + self._last_turn)

    def _step(self, queue: list[np.ndarray]) -> None:
        delta = queue[0] - self.xy
        heading = math.atan2(delta[1], delta[0])
        self._turn_towards(heading)
        turning = abs(self._last_turn) > 1e-6
        if abs(_wrap(heading - self.yaw)) > self.align_tol:
            self.frames.append((self.xy.copy(), self.yaw, LEFT if self._last_turn > 0 else RIGHT))
            return
        budget = self.speed
        while budget > 1e-9 and queue:
            delta = queue[0] - self.xy
            dist = float(np.linalg.norm(delta))
            if dist <= budget:
                self.xy, budget = queue.pop(0), budget - dist
                # Stop at a corner that needs turning in place; carry on through gentle bends.
                if queue and abs(_wrap(math.atan2(*(queue[0] - self.xy)[::-1]) - self.yaw)) > self.align_tol:
                    break
            else:
                self.xy, budget = self.xy + delta / dist * budget, 0.0
        action = (FORWARD_LEFT if self._last_turn > 0 else FORWARD_RIGHT) if turning else FORWARD
        self.frames.append((self.xy.copy(), self.yaw, action))


def _pick_goal(grid: OccupancyGrid, here: tuple[int, int], visited: list[np.ndarray], rng: np.random.Generator,
               min_goal_distance: float) -> tuple[int, int]:
    """A reachable cell at least ``min_goal_distance`` away and, if possible, away from everywhere visited."""
    dist, _ = grid.distances(here)
    reach = np.argwhere(dist >= 0)
    metres = dist[dist >= 0] * grid.cell_size
    seen = np.stack(visited)
    centres = np.stack([grid.centre(tuple(c)) for c in reach])
    novelty = np.min(np.linalg.norm(centres[:, None] - seen[None], axis=-1), axis=1)
    candidates = reach[(metres >= min_goal_distance) & (novelty >= min_goal_distance / 2)]
    if not len(candidates):
        candidates = reach[metres >= min(min_goal_distance, metres.max())]
    return tuple(int(v) for v in candidates[rng.integers(len(candidates))])


def _trajectory(walker: _Walker, frames: int) -> Trajectory:
    xy, yaw, actions = zip(*walker.frames[:frames])
    return Trajectory(np.stack(xy), np.array(yaw), np.array(actions, dtype=np.int64))


def explore_and_revisit(
    grid: OccupancyGrid, frames: int, explore_frames: int, seed: int, speed: float = 0.3,
    turn_deg: float = 22.5, align_deg: float = 30.0, return_fraction: float = 0.35, min_goal_distance: float = 3.0,
    style: str = "default",
) -> Trajectory:
    """A ``frames``-long walk: explore for ``explore_frames``, then walk back along the track and re-walk it, then explore on.

    ``style`` is one of ``WALKS`` but ``loop`` (see the module docstring); it changes how the explorer walks between and at goals.
    """
    if frames < 2 or not 1 <= explore_frames < frames:
        raise ValueError(f"explore_and_revisit: need frames >= 2 and 1 <= explore_frames < frames, got {frames}, {explore_frames}.")
    if style not in WALKS or style == "loop":
        raise ValueError(f"explore_and_revisit: style must be one of {', '.join(w for w in WALKS if w != 'loop')}, got '{style}'.")
    rng = np.random.default_rng(seed)
    free_cells = np.argwhere(grid.free)
    start = tuple(int(v) for v in free_cells[rng.integers(len(free_cells))])
    walker = _Walker(grid.centre(start), rng.uniform(-math.pi, math.pi), speed, math.radians(turn_deg), math.radians(align_deg))
    visited: list[np.ndarray] = [walker.xy.copy()]

    def explore(limit: int) -> None:
        while len(walker.frames) < limit:
            path = shortest_path(grid, grid.cell_of(walker.xy), _pick_goal(grid, grid.cell_of(walker.xy), visited, rng, min_goal_distance))
            if style == "varied":
                # Log-uniform, so that slowing down and speeding up are equally likely.
                walker.speed = speed * 2.0 ** rng.uniform(-1.0, 1.0)
            walker.follow(path, limit)
            visited.extend(path)
            if style == "turn_in_place":
                walker.spin(rng.choice([-1.0, 1.0]) * 2 * math.pi, limit)
            elif style == "look_around":
                pan = rng.choice([-1.0, 1.0]) * math.radians(rng.uniform(45.0, 90.0))
                for angle in (pan, -2 * pan, pan):
                    walker.spin(angle, limit)

    explore(explore_frames)
    track = [f[0] for f in walker.frames]
    remaining = frames - explore_frames
    back_length = return_fraction * remaining * speed
    k, length = len(track) - 1, 0.0
    while k > 0 and length < back_length:
        length += float(np.linalg.norm(track[k] - track[k - 1]))
        k -= 1
    # Revisit a little slower and turn a little slower, so that revisits see the same places from
    # nearby but not identical poses (identical poses would make the reprojection check trivial).
    walker.speed = 0.77 * speed
    walker.follow(track[k:][::-1], frames)
    walker.face(walker.frames[k][1], frames)
    walker.follow(track[k:], frames)
    walker.speed = speed
    explore(frames)
    return _trajectory(walker, frames)


def loop_walk(grid: OccupancyGrid, frames: int, seed: int, speed: float = 0.3, turn_deg: float = 22.5,
              align_deg: float = 30.0, min_goal_distance: float = 3.0, tries: int = 8) -> Trajectory:
    """A ``frames``-long walk of loops through novel goals, each back to the start, ending exactly at the start."""
    if frames < 2:
        raise ValueError(f"loop_walk: need frames >= 2, got {frames}.")
    rng = np.random.default_rng(seed)
    free_cells = np.argwhere(grid.free)
    home = tuple(int(v) for v in free_cells[rng.integers(len(free_cells))])
    turn, align = math.radians(turn_deg), math.radians(align_deg)
    walker = _Walker(grid.centre(home), rng.uniform(-math.pi, math.pi), speed, turn, align)
    visited: list[np.ndarray] = [walker.xy.copy()]

    def frames_for(*paths: list[np.ndarray]) -> int:
        # The walker is deterministic, so a dry run from the same pose counts the frames exactly.
        trial = _Walker(walker.xy, walker.yaw, speed, turn, align)
        for path in paths:
            trial.follow(path, 1 << 30)
        return len(trial.frames) - 1

    while len(walker.frames) < frames:
        here = grid.cell_of(walker.xy)
        for _ in range(tries):
            goal = _pick_goal(grid, here, visited, rng, min_goal_distance)
            out, back = shortest_path(grid, here, goal), shortest_path(grid, goal, home)
            # Go on only if the walker can still get home in time afterwards.
            if len(walker.frames) + frames_for(out, back) <= frames:
                walker.follow(out, frames)
                visited.extend(out)
                break
        else:
            if here != home:
                walker.follow(shortest_path(grid, here, home), frames)
            else:
                # No loop fits into the frames left: turn on the spot at the start until the end.
                walker.spin(rng.choice([-1.0, 1.0]) * turn * (frames - len(walker.frames)), frames)
    return _trajectory(walker, frames)


def make_walk(style: str, grid: OccupancyGrid, frames: int, explore_frames: int, seed: int, speed: float = 0.3,
              turn_deg: float = 22.5) -> Trajectory:
    """The ``frames``-long walk of style ``style`` (one of ``WALKS``) for ``seed``."""
    if style not in WALKS:
        raise ValueError(f"--walk: unknown walk style '{style}'; choose one of {', '.join(WALKS)}.")
    if style == "loop":
        return loop_walk(grid, frames, seed, speed, turn_deg)
    return explore_and_revisit(grid, frames, explore_frames, seed, speed, turn_deg, style=style)
