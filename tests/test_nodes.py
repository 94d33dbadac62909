"""The pack's nodes inside a real ComfyUI (imported in-process from the harness install)."""
from __future__ import annotations

import importlib
import json
import struct

import pytest
import torch


def node(comfy, node_id):
    """The registered class of a CoME node."""
    mappings, _ = comfy
    assert node_id in mappings, f"{node_id} is not registered"
    return mappings[node_id]


def psnr(a, b):
    """PSNR in dB of two images in 0..1."""
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean().clamp_min(1e-10)))


@pytest.fixture(scope="module")
def episode(comfy):
    """The embedded sample episode loaded through the node."""
    return node(comfy, "CoMELoadEpisode").execute(episode="sample_episode.safetensors").args


@pytest.fixture(scope="module")
def memory(comfy, episode):
    """A memory built from the sample episode's context frames."""
    frames, _, path, depth, context = episode
    out = node(comfy, "CoMEBuildPatchMemory").execute(
        frames=frames, metric_depth=depth, camera_path=path, patch_size=8, voxel_size=0.05,
        first_frame=0, last_frame=context - 1, frame_stride=1)
    return out.args[0]


def test_every_node_is_prefixed_categorised_and_documented(comfy):
    mappings, _ = comfy
    ours = {k: v for k, v in mappings.items() if getattr(v, "RELATIVE_PYTHON_MODULE", "").endswith("ComfyUI-CoME")}
    assert len(ours) >= 14
    for node_id, cls in ours.items():
        assert node_id.startswith("CoME")
        schema = cls.GET_SCHEMA()
        assert schema.category.startswith("CoME/"), node_id
        assert schema.description, node_id
        for spec in schema.inputs:
            assert spec.tooltip, f"{node_id}.{spec.id} has no tooltip"
        for spec in schema.outputs:
            assert spec.display_name == spec.id, f"{node_id} output {spec.id} shows as a bare type"
        # what the frontend labels the sockets with: names, not types such as IMAGE or COME_DEPTH
        assert list(cls.RETURN_NAMES) == [spec.id for spec in schema.outputs], node_id


def test_load_episode_outputs(episode):
    frames, depth_image, path, depth, context = episode
    assert frames.ndim == 4 and frames.shape[-1] == 3 and frames.dtype == torch.float32
    assert 0 <= float(frames.min()) and float(frames.max()) <= 1
    assert depth_image.shape == frames.shape
    assert len(path) == frames.shape[0] == depth.metres.shape[0]
    assert 1 <= context < frames.shape[0]


def test_build_and_render_reproduces_a_source_frame(comfy, episode, memory):
    frames, _, path, _, _ = episode
    render = node(comfy, "CoMERenderPatchMemory").execute(
        memory=memory, camera_path=path.slice(3, 4), max_patches=100000, max_distance=100.0)
    images, mask, depth_image, metric = render.args
    assert images.shape == (1, path.height, path.width, 3) and mask.shape == (1, path.height, path.width)
    covered = mask[0] > 0
    assert covered.float().mean() > 0.5
    assert psnr(images[0][covered], frames[3][covered]) > 24


def test_edit_delete_box_removes_the_region(comfy, episode, memory):
    _, _, path, _, _ = episode
    cam = path.c2w[3]
    ahead = cam[:3, 3] + cam[:3, 2] * 1.0
    edit = node(comfy, "CoMEEditPatchMemory")
    common = dict(selection="sphere", center_x=float(ahead[0]), center_y=float(ahead[1]), center_z=float(ahead[2]),
                  size_x=1.0, size_y=1.0, size_z=1.0, radius=1.5, first_frame=0, last_frame=0,
                  translate_x=0.0, translate_y=0.0, translate_z=0.0,
                  rotate_x_deg=0.0, rotate_y_deg=0.0, rotate_z_deg=0.0)
    before = memory.points()[0].clone()
    deleted = edit.execute(memory=memory, operation="delete", **common).args[0]
    kept = edit.execute(memory=memory, operation="keep_only", **common).args[0]
    assert 0 < len(deleted) < len(memory)
    assert len(deleted) + len(kept) == len(memory)
    dup = edit.execute(memory=memory, operation="duplicate", **{**common, "translate_z": 5.0}).args[0]
    assert len(dup) == len(memory) + len(kept)
    moved = edit.execute(memory=memory, operation="move", **{**common, "translate_z": 5.0}).args[0]
    assert len(moved) == len(memory)
    assert torch.equal(memory.points()[0], before)  # ComfyUI caches outputs: inputs must never change


def test_edit_with_empty_selection_warns_and_returns_unchanged(comfy, memory):
    edit = node(comfy, "CoMEEditPatchMemory")
    with pytest.warns(UserWarning):
        out = edit.execute(memory=memory, operation="delete", selection="sphere", center_x=1e3, center_y=1e3,
                           center_z=1e3, size_x=1.0, size_y=1.0, size_z=1.0, radius=0.1, first_frame=0,
                           last_frame=0, translate_x=0.0, translate_y=0.0, translate_z=0.0, rotate_x_deg=0.0,
                           rotate_y_deg=0.0, rotate_z_deg=0.0).args[0]
    assert len(out) == len(memory)


def test_mask_selection_needs_its_inputs(comfy, memory):
    edit = node(comfy, "CoMEEditPatchMemory")
    with pytest.raises(ValueError, match="mask_camera"):
        edit.execute(memory=memory, operation="delete", selection="mask", center_x=0.0, center_y=0.0, center_z=0.0,
                     size_x=1.0, size_y=1.0, size_z=1.0, radius=1.0, first_frame=0, last_frame=0,
                     translate_x=0.0, translate_y=0.0, translate_z=0.0, rotate_x_deg=0.0, rotate_y_deg=0.0,
                     rotate_z_deg=0.0)


def test_save_load_round_trip_in_output_folder(comfy, memory):
    _, out = comfy
    saved = node(comfy, "CoMESavePatchMemory").execute(memory=memory, filename_prefix="patch_memories/test").args[0]
    assert (out / saved).is_file() and saved.startswith("patch_memories/test_")
    choices = node(comfy, "CoMELoadPatchMemory").GET_SCHEMA().inputs[0].options
    assert f"{saved} [output]" in choices
    loaded = node(comfy, "CoMELoadPatchMemory").execute(memory_file=f"{saved} [output]").args[0]
    assert len(loaded) == len(memory)


@pytest.mark.parametrize("prefix", ["../escape", "/tmp/absolute", "a/../../b"])
def test_save_rejects_names_outside_the_output_folder(comfy, memory, prefix):
    _, out = comfy
    before = sorted(p.name for p in out.parent.rglob("*"))
    with pytest.raises(ValueError, match="filename_prefix"):
        node(comfy, "CoMESavePatchMemory").execute(memory=memory, filename_prefix=prefix)
    assert sorted(p.name for p in out.parent.rglob("*")) == before


@pytest.mark.parametrize("prefix", ["run[1]", "take*?", "patch_memories/sub[a-z]/m"])
def test_saves_with_glob_characters_never_overwrite(comfy, memory, prefix):
    _, out = comfy
    save = node(comfy, "CoMESavePatchMemory")
    first = save.execute(memory=memory, filename_prefix=prefix).args[0]
    content = (out / first).read_bytes()
    export = node(comfy, "CoMEPatchMemoryTo3D").execute(memory=memory, filename_prefix=prefix, max_points=5000).args[0]
    second = save.execute(memory=memory, filename_prefix=prefix).args[0]
    assert len({first, export.rsplit(".", 1)[0], second.rsplit(".", 1)[0]}) == 3, (first, export, second)
    assert (out / first).read_bytes() == content and (out / second).is_file()


def test_save_rejects_a_symlink_out_of_the_output_folder(comfy, memory, tmp_path):
    _, out = comfy
    (out / "linked").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(ValueError, match="outside"):
        node(comfy, "CoMESavePatchMemory").execute(memory=memory, filename_prefix="linked/memory")
    assert list(tmp_path.iterdir()) == []


def test_memory_to_3d_writes_a_glb_for_preview3d(comfy, memory):
    _, out = comfy
    rel = node(comfy, "CoMEPatchMemoryTo3D").execute(memory=memory, filename_prefix="patch_memories/cloud",
                                                    max_points=5000).args[0]
    data = (out / rel).read_bytes()
    magic, version, length = struct.unpack("<4sII", data[:12])
    assert magic == b"glTF" and version == 2 and length == len(data)
    chunk_len, chunk_type = struct.unpack("<I4s", data[12:20])
    gltf = json.loads(data[20:20 + chunk_len])
    assert chunk_type == b"JSON" and gltf["meshes"][0]["primitives"][0]["mode"] == 0
    assert 0 < gltf["accessors"][gltf["meshes"][0]["primitives"][0]["attributes"]["POSITION"]]["count"] <= 5000


def test_camera_path_nodes_chain_and_round_trip_json(comfy, episode):
    _, _, path, _, _ = episode
    text = node(comfy, "CoMECameraPathText").execute(moves="forward 1", step_m=0.1, step_deg=5.0, width=32,
                                                     height=32, fov_deg=60.0, reference=path).args[0]
    assert len(text) == 11 and (text.height, text.width) == (path.height, path.width)
    assert torch.allclose(text.c2w[0], path.c2w[-1], atol=1e-5)
    moved = text.c2w[-1, :3, 3] - text.c2w[0, :3, 3]
    assert abs(float(moved.norm()) - 1.0) < 1e-4
    as_json = node(comfy, "CoMECameraPathToJSON").execute(camera_path=text).args[0]
    back = node(comfy, "CoMECameraPathFromJSON").execute(json=as_json).args[0]
    assert torch.allclose(back.c2w, text.c2w, atol=1e-6)
    orbit = node(comfy, "CoMECameraPathOrbit").execute(center_x=1.0, center_y=2.0, center_z=0.5, radius=2.0,
                                                      camera_height=0.5, frames=8, start_deg=0.0, sweep_deg=360.0,
                                                      width=64, height=64, fov_deg=80.0).args[0]
    assert len(orbit) == 8
    keys = node(comfy, "CoMECameraPathKeyframes").execute(keyframes="0 0 1 0\n1 0 1 90", frames_between=3,
                                                         width=64, height=64, fov_deg=80.0).args[0]
    assert len(keys) == 5


def test_bad_camera_text_names_the_line(comfy):
    with pytest.raises(ValueError, match="line 2"):
        node(comfy, "CoMECameraPathText").execute(moves="forward 1\nfly 3", step_m=0.1, step_deg=5.0, width=64,
                                                  height=64, fov_deg=80.0)


def test_memory_map_draws_memory_and_path(comfy, episode, memory):
    _, _, path, _, _ = episode
    image = node(comfy, "CoMEPatchMemoryMap").execute(size=256, memory=memory, camera_path=path).args[0]
    assert image.shape == (1, 256, 256, 3)
    assert float(image.std()) > 0.05


def test_build_rejects_mismatched_inputs(comfy, episode):
    frames, _, path, depth, _ = episode
    with pytest.raises(ValueError, match="counts differ"):
        node(comfy, "CoMEBuildPatchMemory").execute(
            frames=frames[:5], metric_depth=depth, camera_path=path, patch_size=8, voxel_size=0.05,
            first_frame=0, last_frame=-1, frame_stride=1)


def test_render_interrupted_keeps_the_finished_frames(comfy, episode, memory, monkeypatch):
    mm = importlib.import_module("comfy.model_management")
    comfy_utils = importlib.import_module("comfy.utils")
    _, _, path, _, _ = episode
    updates = []

    class InterruptingBar(comfy_utils.ProgressBar):
        """Presses cancel after the third finished frame."""

        def update(self, value):
            super().update(value)
            updates.append(value)
            if len(updates) == 3:
                mm.interrupt_current_processing(True)

    monkeypatch.setattr(comfy_utils, "ProgressBar", InterruptingBar)
    out = node(comfy, "CoMERenderPatchMemory").execute(memory=memory, camera_path=path.slice(0, 8),
                                                       max_patches=4096, max_distance=30.0).args
    assert out[0].shape[0] == 3 and out[1].shape[0] == 3 and out[3].metres.shape[0] == 3
    assert not mm.processing_interrupted()


def test_render_interrupted_before_any_frame_stops(comfy, episode, memory):
    mm = importlib.import_module("comfy.model_management")
    _, _, path, _, _ = episode
    mm.interrupt_current_processing(True)
    with pytest.raises(mm.InterruptProcessingException):
        node(comfy, "CoMERenderPatchMemory").execute(memory=memory, camera_path=path.slice(0, 4),
                                                     max_patches=4096, max_distance=30.0)
    assert not mm.processing_interrupted()
