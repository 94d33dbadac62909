"""Selections and edits of the patch memory: what they pick, what the render shows afterwards, inputs untouched."""
from __future__ import annotations

import math

import pytest
import torch

import memory.patch_memory.patches as patches_module
from memory.geometry.camera import intrinsics_from_fov, look_rotation, pose_matrix
from memory.patch_memory.edits import (
    delete, duplicate, keep_only, merge, move, rigid_transform, select_box, select_frames, select_group, select_mask,
    select_sphere,
)
from memory.patch_memory import PatchMemory, insert_frames, render
from testscene import PILLAR_HI, PILLAR_LO, orbit_cameras, room_views
from testscene import pillar_pixels as scene_pillar_pixels

SIZE = 64
PILLAR_LO_T, PILLAR_HI_T = torch.tensor(PILLAR_LO), torch.tensor(PILLAR_HI)


@pytest.fixture(scope="module")
def scene():
    c2w, K = orbit_cameras(6, image_size=SIZE)
    rgb, depth = room_views(c2w, K, SIZE, SIZE)
    return insert_frames(PatchMemory.empty(), rgb, depth, c2w, K), c2w, K


def pillar_box() -> tuple[torch.Tensor, torch.Tensor]:
    """A box around the pillar with a 0.1 m margin (it also takes the floor patches touching the pillar)."""
    return PILLAR_LO_T - 0.1, PILLAR_HI_T + 0.1


def pillar_pixels(pose: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Pixels [H,W] where the true scene shows the pillar from camera ``pose``."""
    return scene_pillar_pixels(pose[None], K, SIZE, SIZE)[0]


def snapshot(memory: PatchMemory) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in memory.tensors().items()}


def assert_unchanged(memory: PatchMemory, before: dict[str, torch.Tensor]) -> None:
    for name, tensor in memory.tensors().items():
        assert torch.equal(tensor, before[name]), f"{name} was modified in place"


def test_selections_pick_patches_by_centre_frame_and_group(scene):
    memory, _, _ = scene
    lo, hi = pillar_box()
    box = select_box(memory, lo, hi)
    inside = ((memory.centres >= lo) & (memory.centres <= hi)).all(-1)
    assert torch.equal(box, inside) and 0 < int(box.sum()) < len(memory)
    sphere = select_sphere(memory, [1.0, 0.0, 1.0], 1.0)
    assert torch.equal(sphere, (memory.centres - torch.tensor([1.0, 0.0, 1.0])).norm(dim=-1) <= 1.0)
    frames = select_frames(memory, 2, 4)
    assert torch.equal(frames, (memory.frame_ids == 2) | (memory.frame_ids == 3))
    assert bool(select_group(memory, 0).all()) and not bool(select_group(memory, 1).any())
    assert torch.equal(box & ~frames, box & ~select_frames(memory, 2, 4))  # plain bool ops combine


@pytest.mark.parametrize("call, name", [
    (lambda m: select_box(m, [1, 1, 1], [0, 0, 0]), "lo/hi"),
    (lambda m: select_box(m, [0, 0], [1, 1, 1]), "lo"),
    (lambda m: select_sphere(m, [0, 0, float("nan")], 1.0), "center"),
    (lambda m: select_sphere(m, [0, 0, 0], -1.0), "radius"),
    (lambda m: select_frames(m, 5, 2), "start/stop"),
    (lambda m: delete(m, torch.ones(3, dtype=torch.bool)), "selection must be a bool mask"),
    (lambda m: move(m, torch.ones(len(m), dtype=torch.bool), torch.eye(4) * 2), "transform"),
    (lambda m: duplicate(m, torch.ones(len(m), dtype=torch.bool), torch.eye(3)), "transform"),
])
def test_bad_selection_and_edit_inputs_raise_value_errors(scene, call, name):
    with pytest.raises(ValueError, match=name):
        call(scene[0])


def test_delete_removes_the_pillar_from_the_render(scene):
    memory, c2w, K = scene
    before = snapshot(memory)
    # Patches where the pillar meets the floor have no depth jump, so they are not split: their centres lie
    # up to a quarter metre out on the floor, and a box with that margin takes them too.
    lo, hi = pillar_box()
    edited = delete(memory, select_box(memory, lo - 0.15, hi + 0.15))
    assert_unchanged(memory, before)
    pillar = pillar_pixels(c2w[0], K)
    original = render(memory, K, c2w[0], SIZE, SIZE)
    after = render(edited, K, c2w[0], SIZE, SIZE)
    assert float((original.depth[pillar] < 2.6).float().mean()) > 0.95  # the pillar's faces are 2..2.5 m away
    shown = after.mask[pillar] > 0
    assert float((after.depth[pillar][shown] > 2.6).float().mean()) > 0.95  # what is behind, not the pillar


def test_keep_only_keeps_exactly_the_selection(scene):
    memory, _, _ = scene
    sel = select_box(memory, *pillar_box())
    kept = keep_only(memory, sel)
    assert len(kept) == int(sel.sum())
    assert torch.equal(kept.centres, memory.centres[sel])


def test_duplicate_shows_a_copy_at_the_moved_place(scene):
    memory, _, K = scene
    before = snapshot(memory)
    sel = select_box(memory, *pillar_box())
    shift = rigid_transform([0.0, 2.0, 0.0])
    doubled = duplicate(memory, sel, shift)
    assert_unchanged(memory, before)
    assert len(doubled) == len(memory) + int(sel.sum())
    copy = doubled.subset(torch.arange(len(memory), len(doubled)))
    assert bool((copy.groups == 1).all())
    assert torch.allclose(copy.centres, memory.centres[sel] + torch.tensor([0.0, 2.0, 0.0]))
    src_pts, _ = memory.subset(sel).lift()
    new_pts, _ = copy.lift()
    assert torch.allclose(new_pts, src_pts + torch.tensor([0.0, 2.0, 0.0]), atol=1e-4)
    # Look from the -x side at the copy (pillar now at y in [1.5, 2.5]): it stands in front of the wall.
    pose = pose_matrix(look_rotation(torch.tensor([0.0])), torch.tensor([[-2.0, 2.0, 1.0]]))[0]
    target = pillar_pixels(torch.linalg.inv(shift) @ pose, K)  # where the shifted pillar appears
    original = render(memory, K, pose, SIZE, SIZE)
    edited = render(doubled, K, pose, SIZE, SIZE)
    assert float(target.float().mean()) > 0.05
    assert float(original.depth[target].median()) > 5.5  # originally the far wall (x = 4, 6 m away)
    assert float(edited.depth[target].median()) < 3.6  # now the copy's face at x = 0.5 (2.5 m away)


def test_move_transforms_only_the_selection(scene):
    memory, _, _ = scene
    before = snapshot(memory)
    sel = select_box(memory, *pillar_box())
    turn = rigid_transform([0.0, 0.0, 0.5], [0.0, 0.0, 90.0], [1.0, 0.0, 0.0])
    moved = move(memory, sel, turn)
    assert_unchanged(memory, before)
    assert len(moved) == len(memory)
    assert torch.equal(moved.centres[~sel], memory.centres[~sel])
    expected = memory.centres[sel] @ turn[:3, :3].T + turn[:3, 3]
    assert torch.allclose(moved.centres[sel], expected, atol=1e-5)
    pts, _ = moved.subset(sel).lift()
    src, _ = memory.subset(sel).lift()
    assert torch.allclose(pts, src @ turn[:3, :3].T + turn[:3, 3], atol=1e-3)


def test_merge_places_b_with_the_transform_in_new_groups(scene):
    memory, _, _ = scene
    b = keep_only(memory, select_box(memory, *pillar_box()))
    place = rigid_transform([5.0, 0.0, 0.0], [0.0, 0.0, 180.0], [1.0, 0.0, 1.0])
    merged = merge(memory, b, place)
    assert len(merged) == len(memory) + len(b)
    tail = merged.subset(torch.arange(len(memory), len(merged)))
    assert torch.allclose(tail.centres, b.centres @ place[:3, :3].T + place[:3, 3], atol=1e-5)
    assert set(tail.groups.tolist()) == {1} and set(merged.groups[: len(memory)].tolist()) == {0}
    assert merge(memory, PatchMemory.empty()) is memory
    with pytest.raises(ValueError, match="patch sizes differ"):
        merge(memory, _one_patch_memory(4))


def _one_patch_memory(patch_size: int) -> PatchMemory:
    K = intrinsics_from_fov(patch_size, patch_size, 60)
    pose = pose_matrix(look_rotation(torch.tensor([0.0])), torch.tensor([[0.0, 0.0, 1.0]]))
    rgb = torch.zeros(1, patch_size, patch_size, 3, dtype=torch.uint8)
    depth = torch.ones(1, patch_size, patch_size)
    return insert_frames(PatchMemory.empty(patch_size), rgb, depth, pose, K)


@pytest.mark.parametrize("edit", ["delete", "keep_only", "duplicate", "move"])
def test_empty_selection_warns_and_returns_the_memory_unchanged(scene, edit):
    memory, _, _ = scene
    nothing = select_box(memory, [100, 100, 100], [101, 101, 101])
    args = {"delete": (), "keep_only": (), "duplicate": (torch.eye(4),), "move": (torch.eye(4),)}[edit]
    fn = {"delete": delete, "keep_only": keep_only, "duplicate": duplicate, "move": move}[edit]
    with pytest.warns(UserWarning, match=f"{edit}: the selection is empty"):
        assert fn(memory, nothing, *args) is memory


def test_rigid_transform_rotates_about_the_pivot_then_translates():
    turn = rigid_transform([0.0, 0.0, 1.0], [0.0, 0.0, 90.0], [1.0, 0.0, 0.0])
    point = torch.tensor([2.0, 0.0, 0.0, 1.0])
    assert torch.allclose(turn @ point, torch.tensor([1.0, 1.0, 1.0, 1.0]), atol=1e-6)
    # x first, then z: (0, 1, 0) -x90-> (0, 0, 1) -z90-> (0, 0, 1); z first would give (-1, 0, 0) -x90-> (-1, 0, 0).
    both = rigid_transform([0, 0, 0], [90.0, 0.0, 90.0])
    assert torch.allclose(both[:3, :3] @ torch.tensor([0.0, 1.0, 0.0]), torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)
    assert torch.allclose(torch.linalg.det(rigid_transform([1, 2, 3], [10, 20, 30])[:3, :3]), torch.tensor(1.0))
    assert math.isclose(float(rigid_transform()[:3, :3].trace()), 3.0)


def test_select_mask_picks_the_visible_surface_under_the_mask(scene):
    memory, c2w, K = scene
    pose = c2w[0]
    mask = pillar_pixels(pose, K)
    visible = select_mask(memory, mask, K, pose)
    through = select_mask(memory, mask, K, pose, visible_only=False)
    assert int(visible.sum()) > 0
    assert bool((through | ~visible).all())  # visible is a subset of the see-through selection
    lo, hi = pillar_box()
    on_pillar = ((memory.centres >= lo - 0.3) & (memory.centres <= hi + 0.3)).all(-1)
    assert float(on_pillar[visible].float().mean()) > 0.8
    assert int((through & ~on_pillar).sum()) > int((visible & ~on_pillar).sum())  # the wall behind only when seeing through
    assert not bool(select_mask(memory, torch.zeros(SIZE, SIZE, dtype=torch.bool), K, pose).any())
    with pytest.raises(ValueError, match="mask"):
        select_mask(memory, torch.ones(2, SIZE, SIZE), K, pose)


def test_non_finite_selections_and_oversized_edits_are_refused(scene, monkeypatch):
    memory = scene[0]
    with pytest.raises(ValueError, match="radius"):
        select_sphere(memory, [0, 0, 0], float("nan"))
    everything = torch.ones(len(memory), dtype=torch.bool)
    monkeypatch.setattr(patches_module, "MAX_PATCHES", len(memory) + 1)
    with pytest.raises(ValueError, match="memory: the result would hold"):
        duplicate(memory, everything, torch.eye(4))
    with pytest.raises(ValueError, match="b: the result would hold"):
        merge(memory, memory)
    pose = scene[1][0]
    with pytest.raises(ValueError, match="mask: contains NaN"):
        select_mask(memory, torch.full((SIZE, SIZE), float("nan")), scene[2], pose)
