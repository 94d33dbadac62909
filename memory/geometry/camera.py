"""Camera values and pose maths shared by episodes, paths and the patch memory.

Conventions (``come-episode/1``): camera-to-world matrices ``c2w`` [T,4,4] with OpenCV camera axes
(x right, y down, z forward) in a right-handed, z-up world in metres; pixel intrinsics ``K`` [3,3]
with pixel centres at +0.5 (a centred camera has cx = W/2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import kornia
import torch

from ..limits import MAX_COORDINATE_M, MAX_PATH_FRAMES, check_count, check_image_size

ORTHONORMAL_TOL = 1e-3


@dataclass(frozen=True)
class CameraPath:
    """A sequence of cameras: poses ``c2w`` [T,4,4] float32, intrinsics ``K`` [3,3], image size."""

    c2w: torch.Tensor
    K: torch.Tensor
    height: int
    width: int

    def __post_init__(self) -> None:
        check_path(self.c2w, self.K, self.height, self.width, "CameraPath")

    def __len__(self) -> int:
        return int(self.c2w.shape[0])

    @property
    def positions(self) -> torch.Tensor:
        """Camera centres [T,3] in world coordinates."""
        return self.c2w[:, :3, 3]

    def slice(self, start: int, stop: int | None = None) -> "CameraPath":
        """The cameras ``start:stop`` as a new path."""
        return CameraPath(self.c2w[start:stop], self.K, self.height, self.width)

    def concat(self, other: "CameraPath") -> "CameraPath":
        """This path followed by ``other`` (same intrinsics and size)."""
        if (other.height, other.width) != (self.height, self.width) or not torch.allclose(other.K, self.K):
            raise ValueError("CameraPath.concat: both paths need the same intrinsics and image size.")
        return CameraPath(torch.cat([self.c2w, other.c2w]), self.K, self.height, self.width)


def validate_cameras(c2w: torch.Tensor, K: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` unless poses are finite rigid transforms and K is a valid pinhole."""
    if c2w.ndim != 3 or tuple(c2w.shape[1:]) != (4, 4):
        raise ValueError(f"{name}: c2w must have shape [T,4,4], got {list(c2w.shape)}.")
    if tuple(K.shape) != (3, 3):
        raise ValueError(f"{name}: K must have shape [3,3], got {list(K.shape)}.")
    if not torch.isfinite(c2w).all() or not torch.isfinite(K).all():
        raise ValueError(f"{name}: camera poses or intrinsics contain NaN or inf; fix the source data.")
    rot = c2w[:, :3, :3].double()
    eye = torch.eye(3, dtype=torch.float64).expand_as(rot)
    ortho_err = (rot @ rot.transpose(1, 2) - eye).abs().amax(dim=(1, 2))
    det = torch.linalg.det(rot)
    bad = ((ortho_err > ORTHONORMAL_TOL) | ((det - 1).abs() > ORTHONORMAL_TOL)).nonzero().flatten()
    if len(bad):
        raise ValueError(
            f"{name}: rotation of camera {int(bad[0])} is not orthonormal with det +1 "
            f"(error {float(ortho_err[bad[0]]):.3g}, det {float(det[bad[0]]):.4f}); "
            "re-orthonormalise the poses (e.g. with an SVD) before using them."
        )
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=c2w.dtype)
    if not torch.allclose(c2w[:, 3, :], bottom.expand(c2w.shape[0], 4), atol=1e-5):
        raise ValueError(f"{name}: the last row of every c2w must be [0, 0, 0, 1].")
    if K[0, 0] <= 0 or K[1, 1] <= 0:
        raise ValueError(f"{name}: focal lengths must be positive, got fx={float(K[0, 0])}, fy={float(K[1, 1])}.")


def check_number(value: object, name: str, low: float, high: float, *, open_interval: bool = False) -> float:
    """``value`` as a finite float within ``low..high`` (ends excluded if ``open_interval``), else a ValueError."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{name}: must be a finite number, got {value!r}.")
    inside = low < value < high if open_interval else low <= value <= high
    if not inside:
        ends = "()" if open_interval else "[]"
        raise ValueError(f"{name}: {value!r} is outside the allowed range {ends[0]}{low:g}, {high:g}{ends[1]}; "
                         "choose a value in that range.")
    return float(value)


def check_size(height: object, width: object, name: str) -> None:
    """ValueError naming ``name`` unless height and width are ints (not booleans or floats) within the image limits."""
    for side, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} ({side}): must be a whole number of pixels, got {value!r}.")
    check_image_size(height, width, name)


def check_pinhole(K: object, height: int, width: int, name: str) -> None:
    """ValueError naming ``name`` unless ``K`` is a finite pinhole [[fx,0,cx],[0,fy,cy],[0,0,1]] of this image size."""
    if not isinstance(K, torch.Tensor) or tuple(K.shape) != (3, 3):
        got = list(K.shape) if isinstance(K, torch.Tensor) else type(K).__name__
        raise ValueError(f"{name}: K must be a [3,3] tensor, got {got}.")
    if not torch.isfinite(K).all():
        raise ValueError(f"{name}: K contains NaN or inf; give finite pixel intrinsics.")
    (fx, skew, cx), (lower, fy, cy), last = K.double().tolist()
    if fx <= 0 or fy <= 0:
        raise ValueError(f"{name}: focal lengths must be positive, got fx={fx}, fy={fy}.")
    if skew != 0 or lower != 0 or last != [0.0, 0.0, 1.0]:
        raise ValueError(f"{name}: K must be a pinhole matrix [[fx,0,cx],[0,fy,cy],[0,0,1]], got {K.tolist()}.")
    if not (0 < cx < width and 0 < cy < height):
        raise ValueError(
            f"{name}: K principal point ({cx}, {cy}) lies outside the {width}x{height} image; "
            "K must be in pixels of this image size (a centred camera has cx = W/2, cy = H/2)."
        )


def check_positions(positions: torch.Tensor, name: str) -> None:
    """ValueError naming ``name`` unless every camera centre [T,3] lies within ``MAX_COORDINATE_M`` on each axis."""
    reach = positions.double().abs().amax(dim=-1)
    far = (~(reach <= MAX_COORDINATE_M)).nonzero().flatten()  # negated so that NaN counts as too far
    if len(far):
        raise ValueError(
            f"{name}: camera {int(far[0])} would be {float(reach[far[0]]):.4g} m from the origin along an axis, "
            f"beyond the limit of {MAX_COORDINATE_M:g} m; keep the cameras within it."
        )


def check_path(c2w: object, K: object, height: object, width: object, name: str) -> None:
    """ValueError naming ``name`` unless these are the poses, pinhole K and image size of a valid camera path."""
    if not isinstance(c2w, torch.Tensor):
        raise ValueError(f"{name}: c2w must be a [T,4,4] tensor, got {type(c2w).__name__}.")
    check_size(height, width, name)
    if c2w.ndim == 3:
        check_count(int(c2w.shape[0]), f"{name} (cameras)", 0, MAX_PATH_FRAMES, "cameras")
    check_pinhole(K, height, width, name)
    validate_cameras(c2w, K, name)
    check_positions(c2w[:, :3, 3], name)


def require_path(value: object, name: str) -> CameraPath:
    """``value`` if it is a CameraPath with at least one camera, else a ValueError naming the input ``name``."""
    if not isinstance(value, CameraPath):
        raise ValueError(f"{name}: expected a camera path, got {type(value).__name__}; connect a camera_path output.")
    if len(value) == 0:
        raise ValueError(f"{name}: the camera path has no cameras; connect a path with at least one camera.")
    return value


def intrinsics_from_fov(height: int, width: int, fovy_deg: float) -> torch.Tensor:
    """Pinhole K [3,3] with square pixels, centred principal point and vertical field of view ``fovy_deg``."""
    f = 0.5 * height / math.tan(math.radians(fovy_deg) / 2)
    return torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]], dtype=torch.float32)


def look_rotation(yaw: torch.Tensor, pitch: torch.Tensor | None = None) -> torch.Tensor:
    """OpenCV camera rotations [T,3,3] looking along yaw (about world +z, 0 = +x) tilted up by pitch (radians)."""
    yaw = torch.as_tensor(yaw, dtype=torch.float32).reshape(-1)
    pitch = torch.zeros_like(yaw) if pitch is None else torch.as_tensor(pitch, dtype=torch.float32).reshape(-1)
    forward = torch.stack([torch.cos(pitch) * torch.cos(yaw), torch.cos(pitch) * torch.sin(yaw), torch.sin(pitch)], -1)
    right = torch.stack([torch.sin(yaw), -torch.cos(yaw), torch.zeros_like(yaw)], -1)
    down = torch.linalg.cross(forward, right)
    return torch.stack([right, down, forward], dim=-1)


def pose_matrix(rotation: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
    """Camera-to-world [T,4,4] from rotations [T,3,3] and centres [T,3]."""
    return kornia.geometry.conversions.Rt_to_matrix4x4(rotation, position.reshape(-1, 3, 1))


def yaw_of(c2w: torch.Tensor) -> torch.Tensor:
    """Heading [T] in radians of each camera's optical axis projected on the ground plane."""
    forward = c2w[:, :3, 2]
    return torch.atan2(forward[:, 1], forward[:, 0])


def pitch_of(c2w: torch.Tensor) -> torch.Tensor:
    """Elevation [T] in radians of each camera's optical axis above the ground plane."""
    return torch.asin(c2w[:, 2, 2].clamp(-1.0, 1.0))


def plucker_rays(c2w: torch.Tensor, K: torch.Tensor, reference: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Plücker rays [T,6,H,W] (moment, direction) of every pixel centre, in the frame of the ``reference`` camera [4,4].

    Expressing rays relative to a reference camera keeps absolute simulator coordinates out of the network.
    """
    relative = kornia.geometry.linalg.inverse_transformation(reference[None].float()) @ c2w.float()
    v, u = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    pix = torch.stack([u, v], -1).reshape(1, -1, 2).expand(len(c2w), -1, -1)
    cam = kornia.geometry.camera.unproject_points(pix, torch.ones(*pix.shape[:2], 1), K.float()[None], normalize=True)
    direction = cam @ relative[:, :3, :3].transpose(1, 2)
    origin = relative[:, None, :3, 3].expand_as(direction)
    rays = torch.cat([torch.linalg.cross(origin, direction, dim=-1), direction], -1)
    return rays.reshape(len(c2w), height, width, 6).permute(0, 3, 1, 2).contiguous()
