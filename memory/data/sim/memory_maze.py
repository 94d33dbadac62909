"""Memory Maze scenes (9x9 to 15x15) rendered at exact walker poses with metric depth and exact cameras.

Traps handled (see SIMULATORS.md): the target colour border is off (``target_color_in_image=False``),
depth comes from a physics copy without multisampling, MuJoCo cameras look along -z with +y up,
wall cells are the digits '0'-'9' (or '*'), and the sky's far-plane depth is stored as 0.
"""
from __future__ import annotations

import math
import os

import numpy as np

from ...geometry.camera import intrinsics_from_fov
from . import View, missing_simulator
from .trajectories import OccupancyGrid

PINS = "memory-maze==1.0.3 mujoco==3.17.0 gym==0.26.2"
# MuJoCo picks its GL backend at import time; EGL runs headless on Mesa's software renderer.
os.environ.setdefault("MUJOCO_GL", "egl")
try:
    from memory_maze import tasks
except ImportError as err:
    raise missing_simulator("memory-maze", PINS) from err

# Wall cells are 2 m; keeping the walker's centre 0.5 m from any wall keeps the camera off the walls.
CLEARANCE_M = 0.5
GRID_CELL_M = 0.5
WALKING_SPEED_M = 0.3
TURN_DEG = 22.5
# MuJoCo returns the far plane (hundreds of metres) for sky; the largest maze is 15 cells of 2 m across.
SKY_DEPTH_M = 100.0
MAZE_SIZES = (9, 11, 13, 15)
DEFAULT_MAZE = 9
_MUJOCO_TO_OPENCV = np.diag([1.0, -1.0, -1.0])


class MemoryMazeScene:
    """One Memory Maze layout (``maze`` x ``maze`` cells, chosen by ``seed``) whose egocentric camera can be placed anywhere."""

    speed = WALKING_SPEED_M
    turn_deg = TURN_DEG

    def __init__(self, seed: int, size: int = 64, maze: int = DEFAULT_MAZE) -> None:
        if maze not in MAZE_SIZES:
            raise ValueError(f"maze: Memory Maze comes in sizes {', '.join(map(str, MAZE_SIZES))}, got {maze}.")
        self.source = f"memory-maze==1.0.3 MemoryMaze-{maze}x{maze} (target_color_in_image=False)"
        make = getattr(tasks, f"memory_maze_{maze}x{maze}")
        env = make(seed=seed, target_color_in_image=False, global_observables=False, camera_resolution=size)
        env.reset()
        base = env
        while not hasattr(base, "physics"):
            base = base.env if hasattr(base, "env") else base._env
        self._env, self.size = env, size
        self._physics = base.physics
        # Multisampled depth is resolved from one sub-sample off the pixel centre; a copy without it gives registered depth.
        self._depth_physics = self._physics.copy()
        self._depth_physics.model.vis.quality.offsamples = 0
        task = base.task
        self._walker = task._walker
        self._camera = self._walker.egocentric_camera.full_identifier
        self._joints = [self._walker.mjcf_model.find("joint", "steer")] + list(self._walker._root_joints[:2])
        arena = task._maze_arena
        layout = np.array(arena.maze.entity_layer)
        self._walls = np.vectorize(lambda ch: ch == "*" or ch.isdigit())(layout)
        self._scale, self._offset = float(arena.xy_scale), (float(arena._x_offset), float(arena._y_offset))
        fovy = float(self._physics.model.cam_fovy[self._physics.model.name2id(self._camera, "camera")])
        self.K = intrinsics_from_fov(size, size, fovy)
        half = self._scale * np.array(self._walls.shape) / 2
        self.grid = OccupancyGrid.from_predicate((-half[1], half[1]), (-half[0], half[0]), GRID_CELL_M, self._is_free)

    def _is_wall(self, x: float, y: float) -> bool:
        col = int(math.floor(x / self._scale + self._offset[0] + 0.5))
        row = int(math.floor(-y / self._scale + self._offset[1] + 0.5))
        rows, cols = self._walls.shape
        return not (0 <= row < rows and 0 <= col < cols) or bool(self._walls[row, col])

    def _is_free(self, x: float, y: float) -> bool:
        # Walls are axis-aligned cells larger than the clearance square, so its corners and centre suffice.
        return not any(self._is_wall(x + dx, y + dy) for dx in (-CLEARANCE_M, 0.0, CLEARANCE_M) for dy in (-CLEARANCE_M, 0.0, CLEARANCE_M))

    def render(self, xy: np.ndarray, yaw: float) -> View:
        """RGB, metric z-depth and OpenCV camera-to-world of the walker standing at ``xy`` facing ``yaw`` (radians)."""
        for physics in (self._physics, self._depth_physics):
            steer, root_x, root_y = (physics.bind(j) for j in self._joints)
            # The walker's steer hinge turns clockwise seen from above: yaw = -steer.
            steer.qpos, root_x.qpos, root_y.qpos = -yaw, float(xy[0]), float(xy[1])
            physics.forward()
        rgb = self._physics.render(self.size, self.size, camera_id=self._camera)
        depth = self._depth_physics.render(self.size, self.size, camera_id=self._camera, depth=True).astype(np.float32)
        depth[depth > SKY_DEPTH_M] = 0.0
        cam = self._physics.named.data
        c2w = np.eye(4)
        c2w[:3, :3] = cam.cam_xmat[self._camera].reshape(3, 3) @ _MUJOCO_TO_OPENCV
        c2w[:3, 3] = cam.cam_xpos[self._camera]
        return View(np.ascontiguousarray(rgb), depth, c2w.astype(np.float32))


def open_scene(seed: int, size: int = 64, maze: int | None = None) -> MemoryMazeScene:
    """A Memory Maze scene of ``maze`` x ``maze`` cells (default 9, the CoME benchmark) for ``seed``, rendering ``size``x``size`` frames."""
    return MemoryMazeScene(seed, size, DEFAULT_MAZE if maze is None else maze)

