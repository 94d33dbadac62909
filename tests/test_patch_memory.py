"""Patch memory: insertion, dedupe, retrieval, rendering and files, on the analytic test room."""
from __future__ import annotations

import time

import pytest
import torch

import memory.patch_memory.patches as patches_module
import memory.patch_memory.retrieval as retrieval_module
from memory.geometry.camera import CameraPath, intrinsics_from_fov, look_rotation, pose_matrix
from memory.files import atomic_save_safetensors
from memory.geometry.projection import lift_frame
from memory.patch_memory import (
    PatchMemory, check_memory, frames_to_patches, insert_frames, iter_render, load_memory, render, render_path, retrieve,
    save_memory,
)
from testscene import orbit_cameras, room_views

SIZE = 64


def psnr(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> float:
    """PSNR in dB of images [H,W,3] in 0..1 over pixels where ``mask`` is set."""
    mse = ((a - b) ** 2).mean(-1)[mask > 0].mean()
    return float(-10 * torch.log10(mse))


@pytest.fixture(scope="module")
def scene():
    c2w, K = orbit_cameras(8, image_size=SIZE)
    rgb, depth = room_views(c2w, K, SIZE, SIZE)
    return rgb, depth, c2w, K


@pytest.fixture(scope="module")
def memory(scene):
    rgb, depth, c2w, K = scene
    return insert_frames(PatchMemory.empty(), rgb, depth, c2w, K)


def camera_at(x: float, y: float, z: float, yaw_deg: float) -> torch.Tensor:
    rotation = look_rotation(torch.tensor([yaw_deg]).deg2rad())
    return pose_matrix(rotation, torch.tensor([[x, y, z]]))[0]


def test_empty_memory_has_no_patches_and_refuses_to_render():
    empty = PatchMemory.empty(patch_size=4)
    assert len(empty) == 0 and empty.nbytes == 0 and empty.patch_size == 4
    K = intrinsics_from_fov(SIZE, SIZE, 70)
    with pytest.raises(ValueError, match="memory is empty: build it from frames first"):
        render(empty, K, camera_at(0, 0, 1, 0), SIZE, SIZE)


def test_stored_patch_costs_at_most_600_bytes(memory):
    assert len(memory) > 0
    assert memory.nbytes / len(memory) <= 600


def test_single_frame_is_cut_into_patches_that_lift_to_its_points(scene):
    rgb, depth, c2w, K = scene
    one = insert_frames(PatchMemory.empty(), rgb[:1], depth[:1], c2w[:1], K)
    origins = one.origins.long()
    assert len(torch.unique(origins[:, 0] * 1000 + origins[:, 1])) == (SIZE // 8) ** 2
    lifted, valid = one.lift()
    expected, _ = lift_frame(depth[0], K, c2w[0])
    coverage = torch.zeros(SIZE, SIZE, dtype=torch.long)
    for i in range(len(one)):
        u0, v0 = one.origins[i].tolist()
        block = expected[v0:v0 + 8, u0:u0 + 8].reshape(-1, 3)
        assert float((lifted[i] - block)[valid[i]].abs().max()) < 0.01  # float16 depth: ~1e-3 relative
        coverage[v0:v0 + 8, u0:u0 + 8] += valid[i].reshape(8, 8).long()
    assert bool((coverage == 1).all())  # split layers partition the frame's pixels
    points, colours, owner = one.points()
    assert len(points) == SIZE * SIZE and owner.max() == len(one) - 1 and float(colours.max()) <= 1.0


def test_patches_straddling_a_depth_edge_are_split_into_single_surface_layers(scene):
    rgb, depth, c2w, K = scene
    one = insert_frames(PatchMemory.empty(), rgb[:1], depth[:1], c2w[:1], K)
    assert len(one) > (SIZE // 8) ** 2  # the pillar's silhouette splits some patches
    layer_depth = torch.where(one.depth > 0, one.depth.float(), torch.nan).flatten(1)
    ordered = layer_depth.sort(-1).values
    jumps = torch.nan_to_num(ordered[:, 1:] / ordered[:, :-1], nan=1.0)
    assert float(jumps.max()) < 1.15  # no stored patch holds both pillar and wall


def test_render_reproduces_the_source_view(scene):
    rgb, depth, c2w, K = scene
    one = insert_frames(PatchMemory.empty(), rgb[2:3], depth[2:3], c2w[2:3], K)
    view = render(one, K, c2w[2], SIZE, SIZE)
    assert float(view.mask.mean()) > 0.99
    assert psnr(view.rgb, rgb[2].float() / 255, view.mask) > 24
    interior = view.mask.bool()
    assert float((view.depth[interior] - depth[2][interior]).abs().median()) < 0.01


def test_render_from_a_new_view_matches_the_room(memory):
    K = intrinsics_from_fov(SIZE, SIZE, 70)
    pose = camera_at(-1.3, 0.2, 1.2, -5)
    truth_rgb, _ = room_views(pose[None], K, SIZE, SIZE)
    view = render(memory, K, pose, SIZE, SIZE)
    assert float(view.mask.mean()) > 0.8
    assert psnr(view.rgb, truth_rgb[0].float() / 255, view.mask) > 15


def test_reinserting_the_same_frames_adds_nothing(scene, memory):
    rgb, depth, c2w, K = scene
    again = insert_frames(memory, rgb, depth, c2w, K, frame_ids=torch.arange(len(rgb)))
    assert len(again) == len(memory)


def test_revisits_do_not_grow_the_memory_without_bound(scene, memory):
    _, _, _, K = scene
    sizes = [len(memory)]
    grown = memory
    for lap in range(6):
        c2w, _ = orbit_cameras(8, radius=2.45, start_deg=5 + 3 * lap, image_size=SIZE)
        rgb, depth = room_views(c2w, K, SIZE, SIZE)
        grown = insert_frames(grown, rgb, depth, c2w, K)
        sizes.append(len(grown))
    added = [b - a for a, b in zip(sizes, sizes[1:])]
    raw_per_lap = 8 * (SIZE // 8) ** 2
    assert added[0] < 0.5 * raw_per_lap  # a lap at new angles adds under half its raw patches
    assert max(added[-2:]) < 0.6 * added[0]  # and later laps add less and less
    same, _ = orbit_cameras(8, radius=2.45, start_deg=5, image_size=SIZE)
    rgb, depth = room_views(same, K, SIZE, SIZE)
    assert len(insert_frames(grown, rgb, depth, same, K)) == len(grown)  # a revisit along the same poses adds nothing


def test_dedupe_keeps_the_oldest_of_equal_observations_and_the_finer_of_unequal_ones():
    K = intrinsics_from_fov(SIZE, SIZE, 70)
    still = torch.stack([camera_at(0, 2.5, 1.5, 90)] * 2)  # the camera holds still for two frames
    rgb, depth = room_views(still, K, SIZE, SIZE)
    first = insert_frames(PatchMemory.empty(), rgb[:1], depth[:1], still[:1], K)
    both = insert_frames(first, rgb[1:], depth[1:], still[1:], K)
    assert len(both) == len(first) == 64
    assert bool((both.frame_ids == 0).all())
    assert float(render(both, K, still[0], SIZE, SIZE).mask.mean()) > 0.99
    # 1.4 m and 2 m from the wall: same voxel level (0.2 m), but the nearer view is finer and wins though older.
    near, far = camera_at(0, 2.6, 1.5, 90), camera_at(0, 2.0, 1.5, 90)
    rgb, depth = room_views(torch.stack([near, far]), K, SIZE, SIZE)
    mixed = insert_frames(PatchMemory.empty(), rgb, depth, torch.stack([near, far]), K)
    assert int((mixed.frame_ids == 0).sum()) == 64
    assert int((mixed.frame_ids == 1).sum()) < 64


def test_patches_without_valid_depth_are_dropped(scene):
    rgb, depth, c2w, K = scene
    holed = depth[:1].clone()
    holed[0, :8, :16] = 0
    one = insert_frames(PatchMemory.empty(), rgb[:1], holed, c2w[:1], K)
    origins = one.origins.long()
    assert len(torch.unique(origins[:, 0] * 1000 + origins[:, 1])) == (SIZE // 8) ** 2 - 2
    assert not ((one.origins[:, 1] == 0) & (one.origins[:, 0] < 16)).any()


@pytest.mark.parametrize("case, name", [
    ("count", "rgb/depth/c2w"), ("size", "patch_size"), ("nan", "depth"), ("negative", "depth"),
    ("zeros", "depth"), ("rotation", "c2w/K"), ("float_range", "rgb"), ("depth_size", "depth"),
])
def test_bad_inputs_raise_value_errors_naming_the_input(scene, case, name):
    rgb, depth, c2w, K = scene[0][:2], scene[1][:2], scene[2][:2], scene[3]
    if case == "count":
        depth = depth[:1]
    elif case == "size":
        rgb, depth = rgb[:, :60], depth[:, :60]
    elif case == "nan":
        depth = depth.clone()
        depth[0, 0, 0] = float("nan")
    elif case == "negative":
        depth = -depth
    elif case == "zeros":
        depth = torch.zeros_like(depth)
    elif case == "rotation":
        c2w = c2w.clone()
        c2w[0, :3, :3] *= 1.5
    elif case == "float_range":
        rgb = rgb.float()
    elif case == "depth_size":
        depth = depth[:, :, :32]
    with pytest.raises(ValueError, match=name):
        insert_frames(PatchMemory.empty(), rgb, depth, c2w, K)


def test_retrieve_culls_patches_behind_and_outside_the_frustum(scene):
    rgb, depth, c2w, K = scene
    one = insert_frames(PatchMemory.empty(), rgb[:1], depth[:1], c2w[:1], K)
    eye = c2w[0, :3, 3].tolist()
    forward = c2w[0, :3, 2]
    yaw = float(torch.atan2(forward[1], forward[0]).rad2deg())
    assert len(retrieve(one, K, camera_at(*eye, yaw), SIZE, SIZE)) == len(one)
    assert len(retrieve(one, K, camera_at(*eye, yaw + 180), SIZE, SIZE)) == 0
    side = retrieve(one, K, camera_at(*eye, yaw + 60), SIZE, SIZE)
    assert 0 < len(side) < len(one) / 2
    near = retrieve(one, K, camera_at(*eye, yaw), SIZE, SIZE, max_distance=0.5)
    distance = (one.centres[near] - c2w[0, :3, 3]) @ forward
    assert bool((distance - one.radii[near] < 0.5).all())  # only spheres reaching within 0.5 m survive
    assert len(near) < 4


def test_retrieval_budget_prefers_the_front_surface_and_spreads_over_the_screen(scene, memory):
    _, _, c2w, K = scene
    behind = memory.transformed(torch.eye(4))
    offset = torch.eye(4)
    offset[:3, 3] = c2w[3, :3, 2] * 3.0  # the same scene again, 3 m further along the view direction
    doubled = memory.concat(behind.transformed(offset))
    front = retrieve(memory, K, c2w[3], SIZE, SIZE)
    chosen = retrieve(doubled, K, c2w[3], SIZE, SIZE, max_patches=len(front))
    assert len(chosen) <= len(front)
    # Mostly the original; the copy only where it is in front (its pillar is nearer than the original far wall).
    assert float((chosen < len(memory)).float().mean()) > 0.7
    few = retrieve(memory, K, c2w[3], SIZE, SIZE, max_patches=16)
    assert len(few) == 16
    view = render(memory.subset(few), K, c2w[3], SIZE, SIZE)
    assert float(view.mask.mean()) > 0.15  # 16 patches of 64 px spread out, not piled in one cell


def test_render_path_calls_back_per_frame_and_keeps_partial_results(scene, memory):
    _, _, c2w, K = scene
    path = CameraPath(c2w[:3], K, SIZE, SIZE)
    seen = []
    rgb, mask, depth = render_path(memory, path, callback=seen.append)
    assert seen == [0, 1, 2]
    assert rgb.shape == (3, SIZE, SIZE, 3) and mask.shape == depth.shape == (3, SIZE, SIZE)

    def interrupt(i: int) -> None:
        if i == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        render_path(memory, path, callback=interrupt)
    done = []
    for frame in iter_render(memory, path):
        done.append(frame)
        if len(done) == 2:
            break
    assert torch.equal(done[1].rgb, rgb[1])


def test_save_load_round_trip(tmp_path, memory):
    path = save_memory(memory, tmp_path / "scene" / "memory.safetensors")
    loaded = load_memory(path)
    assert loaded.patch_size == memory.patch_size and len(loaded) == len(memory)
    for name, tensor in memory.tensors().items():
        assert torch.equal(getattr(loaded, name), tensor), name
    assert not list((tmp_path / "scene").glob(".*tmp"))


def test_load_rejects_corrupted_foreign_and_inconsistent_files(tmp_path, memory):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00not json at all")
    with pytest.raises(ValueError, match="memory_file"):
        load_memory(broken)
    episode = tmp_path / "episode.safetensors"
    atomic_save_safetensors({"rgb": torch.zeros(1, 8, 8, 3, dtype=torch.uint8)}, episode, {"format": "come-episode/1"})
    with pytest.raises(ValueError, match="expected 'come-patch-memory/1'"):
        load_memory(episode)
    tensors = memory.tensors()
    shapes = tmp_path / "shapes.safetensors"
    atomic_save_safetensors(dict(tensors, depth=tensors["depth"][:, :4]), shapes,
                            {"format": "come-patch-memory/1", "patch_size": "8"})
    with pytest.raises(ValueError, match="inconsistent"):
        load_memory(shapes)
    missing = tmp_path / "missing.safetensors"
    atomic_save_safetensors({k: v for k, v in tensors.items() if k != "radii"}, missing,
                            {"format": "come-patch-memory/1", "patch_size": "8"})
    with pytest.raises(ValueError, match="missing tensors \\['radii'\\]"):
        load_memory(missing)
    with pytest.raises(ValueError, match="does not exist"):
        load_memory(tmp_path / "nope.safetensors")


def test_frames_to_patches_keeps_frame_ids_times_and_origins(scene):
    rgb, depth, c2w, K = scene
    patches = frames_to_patches(rgb[:2], depth[:2], c2w[:2], K, torch.tensor([7, 9]), torch.tensor([0.5, 1.5]), 8)
    first = int((patches.frame_ids == 7).sum())
    assert first >= 64 and bool((patches.frame_ids[first:] == 9).all())
    assert bool((patches.times[first:] == 1.5).all()) and bool((patches.times[:first] == 0.5).all())
    at = ((patches.origins[:first] == torch.tensor([8, 8], dtype=torch.int16)).all(-1)).nonzero()[0, 0]
    assert torch.equal(patches.rgb[at], rgb[0, 8:16, 8:16])


def test_benchmark_quick_run_writes_the_agreed_keys(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(root / "benchmarks" / "patch_memory.py"), "--json", str(out), "--quick"],
                   check=True, cwd=root, capture_output=True, timeout=300)
    result = json.loads(out.read_text())
    for key in ("render_ratio_1e6_vs_1e4", "bytes_per_patch", "revisit_psnr_gap_db"):
        assert isinstance(result[key], float), key
    assert result["bytes_per_patch"] <= 600
    assert out.with_suffix(".png").stat().st_size > 1000


def test_grid_index_retrieval_matches_a_full_scan(memory, scene, monkeypatch):
    from memory.patch_memory import retrieval
    from memory.patch_memory.edits import merge, rigid_transform

    _, _, c2w, K = scene
    far_copy = merge(memory, memory, rigid_transform([30.0, 0.0, 0.0]))
    big = merge(far_copy, far_copy, rigid_transform([0.0, 30.0, 0.0]))
    monkeypatch.setattr(retrieval, "INDEX_MIN_PATCHES", 1)
    indexed = retrieve(big, K, c2w[1], SIZE, SIZE, max_distance=10.0)
    queried = big.index.query(torch.tensor([-5.0, -5.0]), torch.tensor([6.0, 6.0]))
    inside = ((big.centres[:, :2] >= -5.0) & (big.centres[:, :2] <= 6.0)).all(-1).nonzero().flatten()
    assert bool(torch.isin(inside, queried).all())
    assert len(queried) < len(big)  # the copies 30 m away are not even looked at
    monkeypatch.setattr(retrieval, "INDEX_MIN_PATCHES", 10**9)
    assert torch.equal(indexed, retrieve(big, K, c2w[1], SIZE, SIZE, max_distance=10.0))


def _damaged(memory: PatchMemory, field: str, index: tuple, value: float) -> PatchMemory:
    """``memory`` with one value of tensor ``field`` replaced (dtypes and shapes kept)."""
    tensor = getattr(memory, field).clone()
    tensor[index] = value
    return PatchMemory(**dict(memory.tensors(), **{field: tensor}), patch_size=memory.patch_size)


@pytest.mark.parametrize("field, index, value, text", [
    ("depth", (0, 0, 0), float("nan"), "depth of patch 0"),
    ("depth", (3, 1, 1), -1.0, "depth of patch 3"),
    ("centres", (2, 0), float("inf"), "centres of patch 2"),
    ("radii", (1,), -0.1, "radii of patch 1"),
    ("c2w", (0, 0, 0), 2.0, "not orthonormal"),
    ("intrinsics", (0, 1), 0.0, "focal length"),
    ("origins", (0, 0), -8, "origins of patch 0"),
    ("times", (0,), float("nan"), "times of patch 0"),
])
def test_damaged_values_are_refused_on_load_and_at_node_inputs(tmp_path, memory, field, index, value, text):
    bad = _damaged(memory, field, index, value)
    with pytest.raises(ValueError, match=f"memory_b: .*{text}"):
        check_memory(bad, "memory_b")
    path = tmp_path / "bad.safetensors"
    atomic_save_safetensors(bad.tensors(), path, {"format": "come-patch-memory/1", "patch_size": "8"})
    with pytest.raises(ValueError, match=f"memory_file: {path}: .*{text}"):
        load_memory(path)
    with pytest.raises(ValueError, match=f"memory: .*{text}"):
        render(bad, torch.eye(3) * 32 + torch.diag(torch.tensor([0.0, 0.0, -31.0])), torch.eye(4), SIZE, SIZE)
    with pytest.raises(ValueError, match=text):
        save_memory(bad, tmp_path / "never.safetensors")
    assert not (tmp_path / "never.safetensors").exists()


def test_load_checks_metadata_against_the_tensors(tmp_path, memory):
    path = tmp_path / "count.safetensors"
    atomic_save_safetensors(memory.tensors(), path, {"format": "come-patch-memory/1", "patch_size": "8", "patches": "3"})
    with pytest.raises(ValueError, match=f"memory_file: {path}: its metadata says '3' patches but it holds {len(memory)}"):
        load_memory(path)
    atomic_save_safetensors(memory.tensors(), path, {"format": "come-patch-memory/1", "patch_size": "4"})
    with pytest.raises(ValueError, match="memory_file: .*inconsistent.*patch_size = 4"):
        load_memory(path)
    atomic_save_safetensors(dict(memory.tensors(), depth=memory.depth.to(torch.int16)), path,
                            {"format": "come-patch-memory/1", "patch_size": "8"})
    with pytest.raises(ValueError, match="memory_file: .*depth: expected torch.float16"):
        load_memory(path)


def test_memory_size_limit_is_checked_before_any_work(tmp_path, monkeypatch, scene, memory):
    rgb, depth, c2w, K = scene
    monkeypatch.setattr(patches_module, "MAX_PATCHES", len(memory) + 10)
    with pytest.raises(ValueError, match="rgb: the result would hold .* more than the limit"):
        insert_frames(memory, rgb[:1], depth[:1], c2w[:1], K)
    path = save_memory(memory, tmp_path / "ok.safetensors")
    monkeypatch.setattr(patches_module, "MAX_PATCHES", len(memory) - 1)
    with pytest.raises(ValueError, match="memory_file: .* more than the limit"):
        load_memory(path)  # refused from the header, before the tensors are read
    with pytest.raises(ValueError, match="memory: .* more than the limit"):
        check_memory(memory.subset(torch.arange(len(memory))), "memory")  # a new value: not checked yet


def test_render_path_must_have_cameras_and_fit_the_pixel_limit(scene, memory, monkeypatch):
    _, _, c2w, K = scene
    with pytest.raises(ValueError, match="path: the camera path has no cameras"):
        render_path(memory, CameraPath(c2w[:0], K, SIZE, SIZE))
    monkeypatch.setattr(retrieval_module, "MAX_RENDER_PIXELS", 2 * SIZE * SIZE)
    with pytest.raises(ValueError, match="path: 3 frames of 64x64 .* more than the limit"):
        render_path(memory, CameraPath(c2w[:3], K, SIZE, SIZE))
    with pytest.raises(ValueError, match="max_patches"):
        render(memory, K, c2w[0], SIZE, SIZE, max_patches=0)
    with pytest.raises(ValueError, match="max_distance"):
        render(memory, K, c2w[0], SIZE, SIZE, max_distance=float("nan"))


def test_validation_runs_once_per_memory_and_is_cheap(memory):
    big = PatchMemory(**{k: torch.cat([v] * (100_000 // len(memory) + 1)) for k, v in memory.tensors().items()})
    start = time.perf_counter()
    assert check_memory(big, "memory") is big
    first = time.perf_counter() - start
    start = time.perf_counter()
    check_memory(big, "memory")
    assert time.perf_counter() - start < first / 10  # cached with the (immutable) memory
    assert first < 1.0  # measured 0.02 s per 1e5 patches on 2 CPU cores
