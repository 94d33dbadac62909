"""MiniWorld maze scenes rendered at exact agent poses with metric depth and exact cameras.

Traps handled (see SIMULATORS.md): depth is read as float from a 24-bit, non-multisampled depth
buffer (MiniWorld's own ``render_depth`` reads a 16-bit multisampled one), and MiniWorld's y-up world
with heading (cos d, 0, -sin d) is mapped to the z-up world by (x, y, z) -> (x, -z, y), so d is the
yaw about +z. Sky/background (depth buffer at the far plane) is stored as 0.
"""
from __future__ import annotations

import ctypes
import os

import numpy as np

from ...geometry.camera import intrinsics_from_fov
from . import View, missing_simulator
from .trajectories import OccupancyGrid

PINS = "miniworld==2.1.0"
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
try:
    import pyglet

    pyglet.options["headless"] = True
    from miniworld.envs.maze import Maze
    from pyglet import gl
except ImportError as err:
    raise missing_simulator("miniworld", PINS) from err

MAZE_ROOMS = 4
ROOM_SIZE_M = 3.0
GRID_CELL_M = 0.25
WALKING_SPEED_M = 0.25
TURN_DEG = 22.5
# Must match the near/far planes MiniWorld passes to gluPerspective in render_obs.
Z_NEAR, Z_FAR = 0.04, 100.0
# Map MiniWorld's y-up world to the z-up world: (x, y, z) -> (x, -z, y).
_Y_UP_TO_Z_UP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


class _DepthFramebuffer:
    """A non-multisampled framebuffer with a 24-bit depth buffer, read back as linear z-depth in metres."""

    def __init__(self, width: int, height: int) -> None:
        self.width, self.height = width, height
        self.fbo = gl.GLuint(0)
        gl.glGenFramebuffers(1, ctypes.byref(self.fbo))
        gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, self.fbo)
        for storage, attachment in ((gl.GL_RGBA8, gl.GL_COLOR_ATTACHMENT0), (gl.GL_DEPTH_COMPONENT24, gl.GL_DEPTH_ATTACHMENT)):
            buffer = gl.GLuint(0)
            gl.glGenRenderbuffers(1, ctypes.byref(buffer))
            gl.glBindRenderbuffer(gl.GL_RENDERBUFFER, buffer)
            gl.glRenderbufferStorage(gl.GL_RENDERBUFFER, storage, width, height)
            gl.glFramebufferRenderbuffer(gl.GL_FRAMEBUFFER, attachment, gl.GL_RENDERBUFFER, buffer)
        status = gl.glCheckFramebufferStatus(gl.GL_FRAMEBUFFER)
        gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, 0)
        if status != gl.GL_FRAMEBUFFER_COMPLETE:
            raise RuntimeError(f"miniworld: could not create a depth framebuffer (status {status}); check the Mesa/EGL install.")
        self._buffer = np.zeros((height, width), dtype=np.float32)

    def bind(self) -> None:
        """Called by MiniWorld's render_obs before drawing."""
        gl.glDisable(gl.GL_MULTISAMPLE)
        gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, self.fbo)
        gl.glViewport(0, 0, self.width, self.height)

    def resolve(self) -> np.ndarray:
        """Called by MiniWorld after drawing: z-depth [H,W] in metres, 0 where nothing was drawn."""
        gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, self.fbo)
        gl.glPixelStorei(gl.GL_PACK_ALIGNMENT, 1)
        gl.glReadPixels(0, 0, self.width, self.height, gl.GL_DEPTH_COMPONENT, gl.GL_FLOAT,
                        self._buffer.ctypes.data_as(ctypes.POINTER(gl.GLfloat)))
        gl.glBindFramebuffer(gl.GL_FRAMEBUFFER, 0)
        gl.glEnable(gl.GL_MULTISAMPLE)
        # glReadPixels starts at the bottom row.
        window = np.flip(self._buffer, 0).astype(np.float64)
        ndc = 2.0 * window - 1.0
        depth = 2.0 * Z_NEAR * Z_FAR / (Z_FAR + Z_NEAR - ndc * (Z_FAR - Z_NEAR))
        return np.where(window >= 1.0, 0.0, depth).astype(np.float32)


class MiniWorldScene:
    """One MiniWorld maze (``maze`` x ``maze`` rooms of 3 m, layout chosen by ``seed``) whose camera can be placed anywhere."""

    speed = WALKING_SPEED_M
    turn_deg = TURN_DEG

    def __init__(self, seed: int, size: int = 64, maze: int = MAZE_ROOMS) -> None:
        if maze < 2:
            raise ValueError(f"maze: a MiniWorld maze needs at least 2 rooms a side, got {maze}.")
        self.source = f"miniworld==2.1.0 Maze(num_rows={maze}, num_cols={maze}, room_size={ROOM_SIZE_M:g})"
        self._env = Maze(num_rows=maze, num_cols=maze, room_size=ROOM_SIZE_M, obs_width=size, obs_height=size)
        self._env.reset(seed=seed)
        self._depth_fb = _DepthFramebuffer(size, size)
        agent = self._env.agent
        self.K = intrinsics_from_fov(size, size, float(agent.cam_fov_y))
        env = self._env
        self.grid = OccupancyGrid.from_predicate((env.min_x, env.max_x), (-env.max_z, -env.min_z), GRID_CELL_M, self._is_free)

    def _is_free(self, x: float, y: float) -> bool:
        pos = np.array([x, 0.0, -y])
        env = self._env
        return any(room.point_inside(pos) for room in env.rooms) and not env.intersect(env.agent, pos, env.agent.radius)

    def render(self, xy: np.ndarray, yaw: float) -> View:
        """RGB, metric z-depth and OpenCV camera-to-world of the agent standing at ``xy`` facing ``yaw`` (radians)."""
        agent = self._env.agent
        agent.pos = np.array([float(xy[0]), 0.0, -float(xy[1])])
        agent.dir = float(yaw)
        rgb = self._env.render_obs()
        depth = self._env.render_obs(self._depth_fb)
        # gluLookAt basis in MiniWorld's frame: forward f, right s = f x up, camera up u = s x f.
        forward = np.asarray(agent.cam_dir, dtype=np.float64)
        forward /= np.linalg.norm(forward)
        right = np.cross(forward, [0.0, 1.0, 0.0])
        right /= np.linalg.norm(right)
        up = np.cross(right, forward)
        c2w = np.eye(4)
        c2w[:3, :3] = _Y_UP_TO_Z_UP @ np.stack([right, -up, forward], axis=1)
        c2w[:3, 3] = _Y_UP_TO_Z_UP @ np.asarray(agent.cam_pos, dtype=np.float64)
        return View(np.ascontiguousarray(rgb), depth, c2w.astype(np.float32))


def open_scene(seed: int, size: int = 64, maze: int | None = None) -> MiniWorldScene:
    """A MiniWorld maze of ``maze`` x ``maze`` rooms (default 4) for ``seed``, rendering ``size``x``size`` frames."""
    return MiniWorldScene(seed, size, MAZE_ROOMS if maze is None else maze)
