"""Top-down map: where paths, wedges, points and the scale bar land in the image."""
from __future__ import annotations

import pytest
import torch

from memory.geometry.paths import look_at, parse_moves
from memory.patch_memory.topdown import BACKGROUND, PATH_COLOURS, _nice_length, map_view, top_down_map


def colour_mask(image: torch.Tensor, rgb: tuple[int, int, int]) -> torch.Tensor:
    """Pixels [H,W] bool whose colour is exactly ``rgb`` (0..255)."""
    return ((image * 255).round() == torch.tensor(rgb, dtype=torch.float32)).all(-1)


def test_map_is_an_rgb_image_in_unit_range():
    image = top_down_map(parse_moves("forward 1"), size=128)
    assert image.shape == (128, 128, 3)
    assert image.dtype == torch.float32
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0


def test_path_pixels_land_where_the_world_says_with_y_up():
    """An L path (east 2 m, then north 2 m) fits [0,2]x[0,2]: start bottom-left, corner bottom-right."""
    path = parse_moves("forward 2; turn_left 90; forward 2")
    image = top_down_map(path, size=256, margin=0.1)
    drawn = colour_mask(image, PATH_COLOURS[0])
    # 102.4 px per metre around the centre (1, 1): x=0 -> u=25.6, x=2 -> u=230.4, y=0 -> v=230.4, y=2 -> v=25.6.
    assert drawn[229:232, 100:150].any()  # the eastward leg along the bottom
    assert drawn[100:150, 229:232].any()  # the northward leg along the right
    assert drawn[229:232, 24:27].all()  # the start disc at the bottom left, outlined in white
    assert colour_mask(image, (255, 255, 255))[225:236, 20:31].any()
    assert not drawn[:200, :200].any()  # nothing in the empty top-left of the L
    assert not drawn[240:, :].any() and not drawn[:, 240:].any()


def test_map_view_matches_the_documented_fit():
    view = map_view(parse_moves("forward 2; turn_left 90; forward 2"), size=256, margin=0.1)
    assert (view.center_x, view.center_y) == pytest.approx((1.0, 1.0), abs=1e-6)
    assert view.pixels_per_metre == pytest.approx(102.4)
    assert view.to_pixels(torch.tensor([2.0, 0.0])).tolist() == pytest.approx([230.4, 230.4])


def test_single_camera_wedge_points_along_its_view():
    camera = parse_moves("wait 0", start_c2w=look_at([0.0, 0.0, 1.0], [0.0, -5.0, 1.0])[0])
    image = top_down_map(camera, size=128)
    drawn = colour_mask(image, PATH_COLOURS[0])
    centre = 64
    # Looking along -y (down in the image): the wedge reaches well below the disc and not above it.
    assert drawn[centre + 4 :, centre - 6 : centre + 6].any()
    assert not drawn[: centre - 4].any()


def test_highest_point_wins_each_pixel():
    low_first = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    colours = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    for order in ([0, 1], [1, 0]):
        image = top_down_map(points=low_first[order], colors=colours[order], size=64)
        assert colour_mask(image, (0, 255, 0)).sum() == 4  # a 2x2 footprint
        assert not colour_mask(image, (255, 0, 0)).any()


def test_points_fill_their_region_and_default_colours_follow_height():
    generator = torch.Generator().manual_seed(0)
    floor = torch.rand(8000, 3, generator=generator) * torch.tensor([4.0, 4.0, 0.0])
    tower = torch.tensor([[2.0, 2.0, 3.0]])
    image = top_down_map(points=torch.cat([floor, tower]), size=128, margin=0.1)
    background = colour_mask(image, BACKGROUND)
    assert background[:12].all() and background[:, -12:].all() and background[:100, :12].all()  # empty margins
    assert background[20:108, 20:108].float().mean() < 0.15  # the floor covers its square
    top = image[63:65, 63:65].reshape(-1, 3)
    floor_colour = image[30, 100]
    assert (top - floor_colour).abs().max() > 0.3


def test_uint8_colours_and_empty_points_are_accepted():
    points = torch.tensor([[0.0, 0.0, 0.0]])
    image = top_down_map(points=points, colors=torch.tensor([[0, 0, 255]], dtype=torch.uint8), size=64)
    assert colour_mask(image, (0, 0, 255)).sum() == 4
    empty = top_down_map(points=torch.zeros(0, 3), size=64)
    assert colour_mask(empty, BACKGROUND).float().mean() > 0.9


def test_paths_far_apart_are_both_visible():
    near = parse_moves("forward 1")
    far = parse_moves("forward 1", start_c2w=look_at([1000.0, 0.0, 0.0], [1001.0, 0.0, 0.0])[0])
    image = top_down_map([near, far], size=256)
    assert colour_mask(image, PATH_COLOURS[0])[:, :64].any()
    assert colour_mask(image, PATH_COLOURS[1])[:, 192:].any()


def test_highlight_draws_a_large_white_wedge_at_that_frame():
    path = parse_moves("forward 2")
    plain = colour_mask(top_down_map(path, size=256), (255, 255, 255))
    marked = colour_mask(top_down_map(path, size=256, highlight=-1), (255, 255, 255))
    extra = marked & ~plain
    assert extra.any()
    rows, cols = extra.nonzero(as_tuple=True)
    assert float(cols.float().mean()) > 180  # at the east end, where the last camera stands


def test_scale_bar_has_a_round_length():
    assert [_nice_length(m) for m in (1.9, 4.99, 0.3, 730.0, 5.0)] == [1, 2, 0.2, 500, 5]
    path = parse_moves("forward 2")
    view = map_view(path, size=256)
    image = top_down_map(path, size=256)
    white = colour_mask(image, (255, 255, 255))
    bar_row = white[200:, :100].sum(1).argmax() + 200
    expected = _nice_length(0.25 * 256 / view.pixels_per_metre) * view.pixels_per_metre
    assert abs(int(white[bar_row, :100].sum()) - expected) <= 3


@pytest.mark.parametrize("kwargs, text", [
    (dict(points=torch.zeros(5, 2)), r"points: expected shape \[N,3\]"),
    (dict(points=torch.full((2, 3), float("nan"))), "points: contains NaN"),
    (dict(points=torch.zeros(2, 3), colors=torch.zeros(3, 3)), "colors: expected shape"),
    (dict(points=torch.zeros(1, 3), colors=torch.full((1, 3), 2.0)), r"colors: float colours must lie in \[0, 1\]"),
    (dict(colors=torch.zeros(1, 3)), "colors: given without points"),
    (dict(paths=["forward 1"]), "paths: item 0 is a str"),
    (dict(paths=parse_moves("forward 0.1"), highlight=5), "highlight: frame 5 is outside path 0"),
    (dict(size=16), "size: must be a whole number"),
    (dict(margin=0.5), "margin: must be a fraction"),
    (dict(point_px=0), "point_px"),
])
def test_bad_inputs_raise(kwargs, text):
    with pytest.raises(ValueError, match=text):
        top_down_map(**kwargs)


@pytest.mark.parametrize("size", [10**9, 4097, float("nan"), float("inf"), "512"])
def test_map_size_beyond_the_image_limit_is_refused_at_once(size):
    with pytest.raises(ValueError, match="size: must be a whole number of pixels in 64..4096"):
        top_down_map(size=size)
