"""Safe names, atomic writes and checked reads (memory/files.py)."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch

from memory.files import atomic_save_safetensors, check_prefix, confined_path, finite_json, read_safetensors, write_json


def test_confined_path_accepts_names_inside_the_folder(tmp_path):
    assert confined_path(tmp_path, "a/b.safetensors") == (tmp_path / "a" / "b.safetensors").resolve()


@pytest.mark.parametrize("name, message", [
    ("../x.safetensors", "'..'"), ("a/../../x", "'..'"), ("/etc/passwd", "absolute"), ("", "empty"),
])
def test_confined_path_rejects_escaping_names(tmp_path, name, message):
    with pytest.raises(ValueError, match=message) as err:
        confined_path(tmp_path, name, "filename_prefix")
    assert "filename_prefix" in str(err.value)


def test_confined_path_rejects_a_symlink_that_points_out(tmp_path):
    outside = tmp_path / "outside"
    inside = tmp_path / "inside"
    outside.mkdir()
    inside.mkdir()
    (inside / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="outside"):
        confined_path(inside, "link/file.safetensors")


def test_atomic_save_leaves_no_partial_file_when_writing_fails(tmp_path):
    target = tmp_path / "m.safetensors"
    with pytest.raises(Exception):
        atomic_save_safetensors({"x": torch.zeros(2)}, target, metadata={"format": 1})  # metadata must be str
    assert list(tmp_path.iterdir()) == []


def test_atomic_save_replaces_and_is_readable_by_others(tmp_path):
    target = tmp_path / "m.safetensors"
    atomic_save_safetensors({"x": torch.zeros(2)}, target, {"format": "come-test/1"})
    atomic_save_safetensors({"x": torch.ones(2)}, target, {"format": "come-test/1"})
    tensors, metadata = read_safetensors(target, "come-test/1", "memory_file")
    assert torch.equal(tensors["x"], torch.ones(2)) and metadata["format"] == "come-test/1"
    assert os.stat(target).st_mode & 0o044 == 0o044
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_read_rejects_missing_corrupted_foreign_and_newer_files(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        read_safetensors(tmp_path / "none.safetensors", "come-test/1", "memory_file")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="memory_file.*not a readable safetensors"):
        read_safetensors(junk, "come-test/1", "memory_file")
    foreign = atomic_save_safetensors({"x": torch.zeros(1)}, tmp_path / "f.safetensors", {"format": "other/1"})
    with pytest.raises(ValueError, match="expected 'come-test/1'"):
        read_safetensors(foreign, "come-test/1", "memory_file")
    newer = atomic_save_safetensors({"x": torch.zeros(1)}, tmp_path / "n.safetensors", {"format": "come-test/2"})
    with pytest.raises(ValueError, match="update the pack"):
        read_safetensors(newer, "come-test/1", "memory_file")


@pytest.mark.parametrize("prefix", ["memory", "scenes/memory", "run[1]", "take*?", ".hidden", "a b/c d", "%year%/m"])
def test_check_prefix_accepts_names_inside_the_folder(tmp_path, prefix):
    assert check_prefix(prefix, tmp_path) == prefix


@pytest.mark.parametrize("prefix, reason", [
    (".", "'.' or '..' part"), ("./", "'.' or '..' part"), ("../x", r"'\.\.'"), ("/abs", "absolute"),
    ("a\x00b", "control character"), ("n" * 300, "too long"), ("f.txt/m", "which is a file"),
])
def test_check_prefix_names_the_input_and_the_reason(tmp_path, prefix, reason):
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(ValueError, match=f"^filename_prefix: .*{reason}"):
        check_prefix(prefix, tmp_path)


def test_write_json_writes_strict_json_with_null_where_nothing_was_measured(tmp_path):
    value = {"a": math.nan, "b": [1.0, math.inf, {"c": -math.inf}], "d": "nan", "e": 2}
    assert finite_json(value) == {"a": None, "b": [1.0, None, {"c": None}], "d": "nan", "e": 2}
    path = write_json(tmp_path / "out" / "result.json", value)
    assert json.loads(path.read_text()) == finite_json(value)
    assert "NaN" not in path.read_text() and os.listdir(path.parent) == ["result.json"]
