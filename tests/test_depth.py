"""Metric depth values and their display form."""
from __future__ import annotations

import pytest
import torch

from memory.geometry.depth import DepthMaps, check_metric_depth, depth_from_image, depth_to_image


def test_depth_to_image_is_inverse_depth_with_one_scale_per_batch():
    depth = torch.tensor([[[1.0, 2.0], [4.0, 0.0]], [[2.0, 2.0], [2.0, 2.0]]])
    image = depth_to_image(depth)
    assert image.shape == (2, 2, 2, 3)
    assert torch.allclose(image[0, :, :, 0], torch.tensor([[1.0, 0.5], [0.25, 0.0]]))
    assert torch.allclose(image[1, ..., 0], torch.full((2, 2), 0.5))


def test_depth_to_image_of_all_invalid_depth_is_black():
    assert float(depth_to_image(torch.zeros(1, 4, 4)).max()) == 0.0


@pytest.mark.parametrize("inverse", [True, False])
def test_depth_from_image_inverts_depth_to_image_range(inverse):
    metres = torch.tensor([[[0.5, 1.0], [5.0, 10.0]]])
    if inverse:
        x = (1 / metres - 1 / 10.0) / (1 / 0.5 - 1 / 10.0)
    else:
        x = (metres - 0.5) / (10.0 - 0.5)
    x = x.clamp_min(1e-3)
    image = x.unsqueeze(-1).expand(-1, -1, -1, 3)
    back = depth_from_image(image, 0.5, 10.0, inverse=inverse).metres
    assert torch.allclose(back, metres, rtol=2e-2)


def test_depth_from_image_keeps_black_invalid_and_checks_range():
    image = torch.zeros(1, 2, 2, 3)
    image[0, 0, 0] = 1.0
    depth = depth_from_image(image, 0.3, 20.0).metres
    assert float(depth[0, 0, 0]) == pytest.approx(0.3) and float(depth[0, 1, 1]) == 0.0
    with pytest.raises(ValueError, match="near/far"):
        depth_from_image(image, 5.0, 1.0)
    with pytest.raises(ValueError, match="depth_image"):
        depth_from_image(torch.zeros(2, 2, 3), 0.3, 20.0)


def test_depth_maps_needs_three_dimensions():
    with pytest.raises(ValueError, match=r"\[T,H,W\]"):
        DepthMaps(torch.zeros(4, 4))
    assert len(DepthMaps(torch.zeros(3, 4, 4))) == 3


@pytest.mark.parametrize("image, text", [
    (torch.full((1, 2, 2, 3), float("nan")), "NaN"),
    (torch.zeros(1, 2, 2, 0), "0 channels"),
    (torch.full((1, 2, 2, 3), 2.0), "0..1"),
    (torch.full((1, 2, 2, 1), -0.1), "0..1"),
    (torch.zeros(0, 2, 2, 3), "at least one image"),
    (torch.zeros(1, 2, 2, 3, dtype=torch.uint8), "float"),
])
def test_depth_image_must_be_a_finite_unit_range_image(image, text):
    with pytest.raises(ValueError, match=f"depth_image: .*{text}"):
        depth_from_image(image, 0.3, 20.0)


@pytest.mark.parametrize("near, far, name", [
    (float("nan"), 20.0, "near"), (0.0, 20.0, "near"), (0.3, float("inf"), "far"), (0.3, -1.0, "far"),
])
def test_near_and_far_errors_name_the_bad_one(near, far, name):
    with pytest.raises(ValueError, match=f"^{name}: must be a positive finite number"):
        depth_from_image(torch.full((1, 2, 2, 3), 0.5), near, far)


@pytest.mark.parametrize("depth, text", [
    (torch.full((1, 2, 2), float("nan")), "NaN"), (torch.full((1, 2, 2), -1.0), "negative"),
    (torch.zeros(1, 2, 2), "every pixel is 0"), (torch.ones(2, 2), r"\[T,H,W\]"),
    (torch.ones(1, 2, 2, dtype=torch.int32), r"\[T,H,W\]"),
])
def test_metric_depth_check_names_the_input(depth, text):
    with pytest.raises(ValueError, match=f"metric_depth: .*{text}"):
        check_metric_depth(depth, "metric_depth")
    assert check_metric_depth(DepthMaps(torch.ones(1, 2, 2)), "metric_depth").dtype == torch.float32
