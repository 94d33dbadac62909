"""Binary glTF export: parse the written file back and check header, JSON, counts, bounds and data."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch

from memory.patch_memory.glb import BIN_CHUNK, GLB_MAGIC, JSON_CHUNK, export_glb


def parse_glb(data: bytes) -> tuple[dict, bytes]:
    """The JSON document and the BIN chunk of a .glb file, checking the container layout."""
    magic, version, length = struct.unpack_from("<III", data, 0)
    assert (magic, version, length) == (GLB_MAGIC, 2, len(data))
    json_len, json_type = struct.unpack_from("<II", data, 12)
    assert json_type == JSON_CHUNK and json_len % 4 == 0
    document = json.loads(data[20:20 + json_len])
    bin_len, bin_type = struct.unpack_from("<II", data, 20 + json_len)
    assert bin_type == BIN_CHUNK and bin_len % 4 == 0
    assert 28 + json_len + bin_len == len(data)
    return document, data[28 + json_len:28 + json_len + bin_len]


def test_points_round_trip_with_y_up_bounds_and_linear_colours(tmp_path):
    points = torch.tensor([[0.0, 0.0, 1.0], [1.0, 2.0, 3.0], [-1.0, -2.0, 0.5]])
    colours = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.0, 0.0, 1.0]])
    path = export_glb(points, colours, tmp_path / "cloud.glb")
    document, binary = parse_glb(path.read_bytes())
    assert document["asset"]["version"] == "2.0"
    primitive = document["meshes"][0]["primitives"][0]
    assert primitive["mode"] == 0  # POINTS
    position = document["accessors"][primitive["attributes"]["POSITION"]]
    colour = document["accessors"][primitive["attributes"]["COLOR_0"]]
    assert position["count"] == colour["count"] == 3
    assert position["type"] == "VEC3" and position["componentType"] == 5126
    assert colour["type"] == "VEC4" and colour["componentType"] == 5121 and colour["normalized"] is True
    view = document["bufferViews"][position["bufferView"]]
    decoded = np.frombuffer(binary, "<f4", count=9, offset=view["byteOffset"]).reshape(3, 3)
    # z-up (x, y, z) -> y-up (x, z, -y): world up (0, 0, 1) becomes glTF up (0, 1, 0).
    assert np.allclose(decoded[0], [0.0, 1.0, 0.0])
    assert np.allclose(decoded[1], [1.0, 3.0, -2.0])
    assert position["min"] == pytest.approx([-1.0, 0.5, -2.0]) and position["max"] == pytest.approx([1.0, 3.0, 2.0])
    cview = document["bufferViews"][colour["bufferView"]]
    rgba = np.frombuffer(binary, np.uint8, count=12, offset=cview["byteOffset"]).reshape(3, 4)
    assert rgba[0].tolist() == [255, 0, 0, 255]
    assert rgba[1, 0] == round(((0.5 + 0.055) / 1.055) ** 2.4 * 255)  # sRGB 0.5 -> linear 0.214
    assert document["buffers"][0]["byteLength"] <= len(binary)
    assert not list(tmp_path.glob(".*tmp"))


def test_max_points_subsamples_evenly(tmp_path):
    points = torch.stack([torch.arange(1000.0), torch.zeros(1000), torch.zeros(1000)], -1)
    path = export_glb(points, torch.full((1000, 3), 0.5), tmp_path / "sub.glb", max_points=100)
    document, binary = parse_glb(path.read_bytes())
    position = document["accessors"][0]
    assert position["count"] == 100
    xs = np.frombuffer(binary, "<f4", count=300).reshape(100, 3)[:, 0]
    assert xs[0] == 0.0 and xs[-1] == 990.0 and np.all(np.diff(xs) == 10.0)


@pytest.mark.parametrize("points, colours, name", [
    (torch.zeros(4, 2), torch.zeros(4, 3), "points"),
    (torch.zeros(4, 3), torch.zeros(3, 3), "colors"),
    (torch.zeros(0, 3), torch.zeros(0, 3), "nothing to export"),
    (torch.full((2, 3), float("nan")), torch.zeros(2, 3), "NaN"),
])
def test_bad_inputs_raise_value_errors(tmp_path, points, colours, name):
    with pytest.raises(ValueError, match=name):
        export_glb(points, colours, tmp_path / "bad.glb")
    assert not (tmp_path / "bad.glb").exists()


def test_memory_points_export(tmp_path):
    from memory.patch_memory import PatchMemory, insert_frames
    from testscene import orbit_cameras, room_views

    c2w, K = orbit_cameras(2, image_size=32)
    rgb, depth = room_views(c2w, K, 32, 32)
    memory = insert_frames(PatchMemory.empty(), rgb, depth, c2w, K)
    points, colours, _ = memory.points()
    document, _ = parse_glb(export_glb(points, colours, tmp_path / "memory.glb").read_bytes())
    position = document["accessors"][0]
    assert position["count"] == len(points)
    # The room is 3 m high (world z in [0, 3]) -> glTF y in [0, 3].
    assert -0.01 <= position["min"][1] and position["max"][1] <= 3.01


@pytest.mark.parametrize("max_points", [0, -5, 10**12, 2.5])
def test_max_points_outside_its_range_is_refused(tmp_path, max_points):
    with pytest.raises(ValueError, match="max_points"):
        export_glb(torch.zeros(4, 3), torch.zeros(4, 3), tmp_path / "bad.glb", max_points=max_points)
    assert not (tmp_path / "bad.glb").exists()
