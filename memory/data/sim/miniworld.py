"""MiniWorld scenes rendered at exact agent poses with metric depth and exact cameras.

Two kinds of scene: the rooms maze of ``--maze N`` (``Maze(num_rows=N, num_cols=N, room_size=3)``,
default 4, what ``--sim miniworld`` renders), and every registered MiniWorld 2.1.0 environment that
renders headless with exact depth, chosen with ``--env NAME`` (``ENVS``):

    oneroom      MiniWorld-OneRoom-v0        10 m room, one box
    oneroom_s6   MiniWorld-OneRoomS6-v0      6 m room, one box
    hallway      MiniWorld-Hallway-v0        12 m x 4 m corridor
    tmaze        MiniWorld-TMaze-v0          T-shaped corridors
    ymaze        MiniWorld-YMaze-v0          Y-shaped corridors (walls at 120 degrees)
    fourrooms    MiniWorld-FourRooms-v0      four 6 m rooms in a ring
    threerooms   MiniWorld-ThreeRooms-v0     three rooms, objects and a picture frame
    maze         MiniWorld-Maze-v0           8 x 8 rooms maze
    maze_s2      MiniWorld-MazeS2-v0         2 x 2 rooms maze
    maze_s3      MiniWorld-MazeS3-v0         3 x 3 rooms maze
    sidewalk     MiniWorld-Sidewalk-v0       outdoors: sidewalk, street, cones, a building
    wallgap      MiniWorld-WallGap-v0        outdoors: two yards and a gap in a wall
    putnext      MiniWorld-PutNext-v0        12 m room, six coloured boxes
    pickup       MiniWorld-PickupObjects-v0  open-sky yard with balls, boxes and keys
    collecthealth MiniWorld-CollectHealth-v0  16 m room, 18 medkits
    roomobjects  MiniWorld-RoomObjects-v0    open-sky yard, a box, a ball and a key
    sign         MiniWorld-Sign-v0           U-shaped rooms, boxes, keys and a text sign

The other registered ids are left out (``LEFT_OUT`` says why for each): they build exactly the same
scene as an id above and differ only in the agent's action step sizes or in fixing where the goal box
goes, which a scene rendered at scripted poses does not use. Scenes are static in every environment:
objects that MiniWorld calls non-static (medkits, keys, the duckie) move only inside ``env.step``,
which is never called; the camera is placed directly.

Traps handled (see SIMULATORS.md): depth is read as float from a 24-bit, non-multisampled depth
buffer (MiniWorld's own ``render_depth`` reads a 16-bit multisampled one), and MiniWorld's y-up world
with heading (cos d, 0, -sin d) is mapped to the z-up world by (x, y, z) -> (x, -z, y), so d is the
yaw about +z. Sky/background (depth buffer at the far plane) is stored as 0, and so is geometry past
the 100 m far plane (the Sidewalk street), which the RGB frame does not draw either.
"""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ...geometry.camera import intrinsics_from_fov
from . import View, missing_simulator
from .trajectories import OccupancyGrid

PINS = "miniworld==2.1.0"
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
try:
    import pyglet

    pyglet.options["headless"] = True
    import gymnasium
    from miniworld.envs.maze import Maze
    from miniworld.miniworld import MiniWorldEnv
    from pyglet import gl
except ImportError as err:
    raise missing_simulator("miniworld", PINS) from err

ENVS: dict[str, str] = {
    "oneroom": "MiniWorld-OneRoom-v0",
    "oneroom_s6": "MiniWorld-OneRoomS6-v0",
    "hallway": "MiniWorld-Hallway-v0",
    "tmaze": "MiniWorld-TMaze-v0",
    "ymaze": "MiniWorld-YMaze-v0",
    "fourrooms": "MiniWorld-FourRooms-v0",
    "threerooms": "MiniWorld-ThreeRooms-v0",
    "maze": "MiniWorld-Maze-v0",
    "maze_s2": "MiniWorld-MazeS2-v0",
    "maze_s3": "MiniWorld-MazeS3-v0",
    "sidewalk": "MiniWorld-Sidewalk-v0",
    "wallgap": "MiniWorld-WallGap-v0",
    "putnext": "MiniWorld-PutNext-v0",
    "pickup": "MiniWorld-PickupObjects-v0",
    "collecthealth": "MiniWorld-CollectHealth-v0",
    "roomobjects": "MiniWorld-RoomObjects-v0",
    "sign": "MiniWorld-Sign-v0",
}
LEFT_OUT: dict[str, str] = {
    "MiniWorld-OneRoomS6Fast-v0": "same scene as OneRoomS6; only the agent's step sizes differ (unused: poses are set directly)",
    "MiniWorld-MazeS3Fast-v0": "same scene as MazeS3; only the agent's step sizes differ (unused: poses are set directly)",
    "MiniWorld-TMazeLeft-v0": "same scene as TMaze with the goal box fixed on the left, one of TMaze's two random places",
    "MiniWorld-TMazeRight-v0": "same scene as TMaze with the goal box fixed on the right, one of TMaze's two random places",
    "MiniWorld-YMazeLeft-v0": "same scene as YMaze with the goal box fixed in the left arm, one of YMaze's two random places",
    "MiniWorld-YMazeRight-v0": "same scene as YMaze with the goal box fixed in the right arm, one of YMaze's two random places",
}
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


@dataclass
class _Built:
    """A built environment, its depth framebuffer, and the scene currently using them."""

    env: MiniWorldEnv
    depth_fb: _DepthFramebuffer
    scene: "MiniWorldScene | None" = None


# MiniWorld never frees an environment's GL objects (about 37 MB each), so each kind of environment is
# built once per process and frame size and reset for every scene.
_BUILT: dict[tuple[str, int], _Built] = {}


class MiniWorldScene:
    """One MiniWorld world (built environment ``key`` reset with ``seed``) whose camera can be placed anywhere; nothing in it moves."""

    speed = WALKING_SPEED_M
    turn_deg = TURN_DEG

    def __init__(self, key: str, size: int, build: Callable[[], MiniWorldEnv], seed: int, source: str) -> None:
        self.source = source
        if (key, size) not in _BUILT:
            _BUILT[key, size] = _Built(build(), _DepthFramebuffer(size, size))
        self._built = _BUILT[key, size]
        self._built.scene = self
        self._env = env = self._built.env
        # reset() compiles the static world into a display list of whatever GL context is current, and
        # another renderer (MuJoCo's EGL context) may have left its own current: make MiniWorld's current first.
        env.shadow_window.switch_to()
        env.reset(seed=seed)
        self.K = intrinsics_from_fov(size, size, float(env.agent.cam_fov_y))
        self.grid = OccupancyGrid.from_predicate((env.min_x, env.max_x), (-env.max_z, -env.min_z), GRID_CELL_M, self._is_free)

    def _is_free(self, x: float, y: float) -> bool:
        pos = np.array([x, 0.0, -y])
        env = self._env
        return any(room.point_inside(pos) for room in env.rooms) and not env.intersect(env.agent, pos, env.agent.radius)

    def render(self, xy: np.ndarray, yaw: float) -> View:
        """RGB, metric z-depth and OpenCV camera-to-world of the agent standing at ``xy`` facing ``yaw`` (radians)."""
        if self._built.scene is not self:
            raise RuntimeError(f"miniworld: this scene ({self.source}) was replaced by a newer scene of the same environment; "
                               "render a scene before opening the next one.")
        agent = self._env.agent
        agent.pos = np.array([float(xy[0]), 0.0, -float(xy[1])])
        agent.dir = float(yaw)
        rgb = self._env.render_obs()
        depth = self._env.render_obs(self._built.depth_fb)
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
    maze = MAZE_ROOMS if maze is None else maze
    if maze < 2:
        raise ValueError(f"maze: a MiniWorld maze needs at least 2 rooms a side, got {maze}.")

    def build() -> MiniWorldEnv:
        return Maze(num_rows=maze, num_cols=maze, room_size=ROOM_SIZE_M, obs_width=size, obs_height=size)

    return MiniWorldScene(f"maze{maze}", size, build, seed, f"miniworld==2.1.0 Maze(num_rows={maze}, num_cols={maze}, room_size={ROOM_SIZE_M:g})")


def open_env_scene(name: str, seed: int, size: int = 64) -> MiniWorldScene:
    """The registered MiniWorld environment ``ENVS[name]`` reset with ``seed``, rendering ``size``x``size`` frames."""
    if name not in ENVS:
        raise ValueError(f"--env: unknown MiniWorld environment '{name}'; choose one of {', '.join(ENVS)}.")

    def build() -> MiniWorldEnv:
        return gymnasium.make(ENVS[name], obs_width=size, obs_height=size).unwrapped

    return MiniWorldScene(ENVS[name], size, build, seed, f"miniworld==2.1.0 {ENVS[name]}")
