"""The shared work limits and input checks of memory/limits.py."""
from __future__ import annotations

import json

import pytest
import torch

from memory.limits import MAX_JSON_CHARS, MAX_JSON_DEPTH, check_count, check_frames, check_image_size, parse_json


def test_parse_json_reads_documents_within_the_limits():
    assert parse_json('{"a": "[[[[[[[[[[ \\" {{{{", "b": [[1.5]]}', "json") == {"a": '[[[[[[[[[[ " {{{{', "b": [[1.5]]}
    assert parse_json('{"x": true, "y": null}', "json") == {"x": True, "y": None}


@pytest.mark.parametrize("text, reason", [
    ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), "nest more than"),
    ("{" * 100_000, "nest more than"),
    (" " * (MAX_JSON_CHARS + 1), "more than the limit"),
    ("[1,", "not valid JSON"),
    (b"[]", "expected text"),
])
def test_parse_json_refuses_deep_huge_or_broken_text_naming_the_input(text, reason):
    with pytest.raises(ValueError, match=f"^config: .*{reason}"):
        parse_json(text, "config")


@pytest.mark.parametrize("literal", ["true", "false", "null", "NaN", "Infinity", "-Infinity"])
def test_parse_json_without_literals_takes_numbers_only(literal):
    with pytest.raises(ValueError, match="is not a number"):
        parse_json(f'{{"K": [{literal}]}}', "json", literals=False)
    assert parse_json(json.dumps({"format": literal}), "json", literals=False) == {"format": literal}


def test_parse_json_refuses_an_unterminated_string_of_escaped_quotes():
    # a whole-string regex would rescan from every quote here (quadratic time); the malformed-input table
    # runs the same text under its time limit
    with pytest.raises(ValueError, match="not valid JSON"):
        parse_json('"' + '\\"' * 200_000, "json")


@pytest.mark.parametrize("value, reason", [(0, "outside"), (65, "outside"), (True, "whole number"),
                                           (2.5, "whole number"), ("4", "whole number")])
def test_check_count_names_the_input_and_the_range(value, reason):
    with pytest.raises(ValueError, match=f"^chunk_size: .*{reason}"):
        check_count(value, "chunk_size", 1, 64)
    assert check_count(4.0, "chunk_size", 1, 64) == 4


@pytest.mark.parametrize("height, width", [(0, 64), (64, 5000), (10 ** 9, 10 ** 9)])
def test_check_image_size_refuses_sizes_over_the_limits(height, width):
    with pytest.raises(ValueError, match="^render"):
        check_image_size(height, width, "render")


@pytest.mark.parametrize("frames, reason", [
    (torch.rand(2, 8, 8, 4), "4 channels"), (torch.rand(2, 8, 8, 3) + 1, "0..1"),
    (torch.full((1, 8, 8, 3), float("nan")), "NaN"), (torch.zeros(0, 8, 8, 3), "at least one frame"),
    (torch.zeros(8, 8, 3), "at least one frame"), (torch.zeros(1, 8, 8, 3, dtype=torch.uint8), "float"),
    ("frames.png", "expected an IMAGE"),
])
def test_check_frames_refuses_what_is_not_an_rgb_batch_in_0_1(frames, reason):
    with pytest.raises(ValueError, match=f"^frames: .*{reason}"):
        check_frames(frames, "frames")
    assert torch.equal(check_frames(torch.ones(1, 8, 8, 3), "frames"), torch.ones(1, 8, 8, 3))
