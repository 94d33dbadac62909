"""Projection, lifting, splatting and warping (memory/geometry.py), one behaviour per test."""
from __future__ import annotations

import torch

from memory.geometry.camera import intrinsics_from_fov, look_rotation, pose_matrix
from memory.geometry.projection import (
    backward_warp, grid_footprint, lift, lift_frame, pixel_centres, project, splat, splat_grids,
)

K = intrinsics_from_fov(32, 32, 60.0)


def camera(x: float = 0.0, yaw: float = 0.0) -> torch.Tensor:
    """A level camera at (x, 0, 1) looking along yaw (radians)."""
    return pose_matrix(look_rotation(torch.tensor([yaw])), torch.tensor([[x, 0.0, 1.0]]))[0]


def test_pixel_centres_are_at_half_pixels():
    grid = pixel_centres(2, 3)
    assert grid.shape == (2, 3, 2)
    assert torch.equal(grid[0, 0], torch.tensor([0.5, 0.5])) and torch.equal(grid[1, 2], torch.tensor([2.5, 1.5]))


def test_lift_then_project_returns_the_pixels_and_depth():
    uv = pixel_centres(32, 32)
    depth = torch.rand(32, 32) * 5 + 0.5
    pose = camera(0.3, 0.7)
    back, z = project(lift(uv, depth, K, pose), K, pose)
    assert torch.allclose(back, uv, atol=1e-3) and torch.allclose(z, depth, atol=1e-4)


def test_the_principal_point_lifts_onto_the_optical_axis():
    pose = camera(0.0, 0.0)
    point = lift(torch.tensor([[16.0, 16.0]]), torch.tensor([2.0]), K, pose)
    assert torch.allclose(point, torch.tensor([[2.0, 0.0, 1.0]]), atol=1e-5)


def test_splat_covers_the_nearest_two_by_two_pixels():
    pose = camera()
    point = lift(torch.tensor([[10.5, 20.5]]), torch.tensor([3.0]), K, pose)
    out = splat(point, torch.tensor([[1.0, 0.0, 0.0]]), K, pose, 32, 32)
    assert int(out.mask.sum()) == 4 and float(out.mask[20, 10]) == 1.0
    assert torch.allclose(out.depth[out.mask > 0], torch.full((4,), 3.0), atol=1e-4)


def test_splat_keeps_the_nearest_point():
    pose = camera()
    uv = torch.tensor([[16.0, 16.0], [16.0, 16.0]])
    points = lift(uv, torch.tensor([2.0, 5.0]), K, pose)
    out = splat(points, torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), K, pose, 32, 32)
    assert torch.equal(out.rgb[15, 15], torch.tensor([1.0, 0.0, 0.0]))


def test_splat_drops_points_behind_the_camera():
    pose = camera()
    behind = torch.tensor([[-3.0, 0.0, 1.0]])
    out = splat(behind, torch.ones(1, 3), K, pose, 32, 32)
    assert float(out.mask.sum()) == 0.0


def test_grid_footprint_grows_with_magnification():
    uv = pixel_centres(4, 4)[None]
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    assert int(grid_footprint(uv, valid).max()) == 2
    assert int(grid_footprint(uv * 3, valid).min()) == 4
    assert int(grid_footprint(uv * 100, valid).max()) == 8  # capped


def test_grid_footprint_ignores_invalid_neighbours():
    uv = pixel_centres(2, 2)[None].clone()
    uv[0, 1, 1] = 1000.0
    valid = torch.tensor([[[True, True], [True, False]]])
    assert int(grid_footprint(uv, valid).max()) == 2


def test_splat_grids_closes_a_magnified_surface_that_a_plain_splat_leaves_open():
    far, near = camera(-3.0), camera(0.0)
    depth = torch.full((1, 32, 32), 4.0)
    points, valid = lift_frame(depth[0], K, far)
    colours = torch.rand(1, 32, 32, 3)
    closed = splat_grids(points[None], valid[None], colours, K, near, 32, 32)
    open_ = splat(points.reshape(-1, 3), colours.reshape(-1, 3), K, near, 32, 32)
    assert float(closed.mask[4:28, 4:28].mean()) == 1.0
    assert float(open_.mask[4:28, 4:28].mean()) < 0.9


def test_splat_grids_renders_several_views_in_one_pass_as_one_by_one():
    torch.manual_seed(0)
    depth = 2.0 + torch.rand(2, 32, 32)
    depth[1, :8] = 0.0  # invalid pixels
    grids = [lift_frame(d, K, camera(-1.0 + i)) for i, d in enumerate(depth)]
    points, valid = torch.stack([g[0] for g in grids]), torch.stack([g[1] for g in grids])
    colours, bias = torch.rand(2, 32, 32, 3), torch.rand(2, 32, 32)
    targets = torch.stack([camera(x) for x in (-0.5, 0.0, 0.7)])
    views = splat_grids(points, valid, colours, K, targets, 32, 24, z_bias=bias)
    assert views.rgb.shape == (3, 32, 24, 3) and views.mask.shape == views.depth.shape == (3, 32, 24)
    for i, target in enumerate(targets):
        one = splat_grids(points, valid, colours, K, target, 32, 24, z_bias=bias)
        assert torch.equal(views.rgb[i], one.rgb) and torch.equal(views.mask[i], one.mask)
        assert torch.equal(views.depth[i], one.depth)


def test_backward_warp_reproduces_a_view_from_a_shifted_one():
    depth = torch.full((32, 32), 3.0)
    image = torch.rand(32, 32, 3)
    same, valid = backward_warp(image, depth, camera(), depth, camera(), K)
    assert bool(valid.all()) and torch.allclose(same, image, atol=1e-5)
    # a wall at x = 3: 3 m from the source camera, 3.5 m from the target half a metre behind it
    moved, valid = backward_warp(image, depth, camera(0.0), torch.full((32, 32), 3.5), camera(-0.5), K)
    assert 0.5 < float(valid.float().mean()) < 1.0
    centre = moved[12:20, 12:20]
    assert float(centre.std()) > 0.1  # real image content, not a constant fill
