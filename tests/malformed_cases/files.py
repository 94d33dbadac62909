"""Malformed file names for the nodes that write into ComfyUI's output folder."""
from __future__ import annotations

from malformed_support import Case

WRITERS = ("CoMESavePatchMemory", "CoMEPatchMemoryTo3D")


def _through_a_file(env):
    """An earlier output file that a prefix tries to use as a folder."""
    (env.output / "earlier.txt").write_text("an earlier result")


def _link_out(env):
    """A folder link inside the output folder that points out of it."""
    link = env.output / "link_out"
    if not link.exists():
        link.symlink_to(env.scratch, target_is_directory=True)


PREFIXES = [
    ("empty", ""),
    ("blank", "   "),
    ("dot", "."),
    ("dot-slash", "./"),
    ("dot-dot", ".."),
    ("dots-only", "..."),
    ("parent", "../escape"),
    ("parent-inside", "a/../../b"),
    ("absolute", "/tmp/absolute"),
    ("trailing-slash", "scenes/"),
    ("double-slash", "scenes//memory"),
    ("dot-part", "scenes/./memory"),
    ("dot-start", "./memory"),
    ("nul", "mem\x00ory"),
    ("control", "mem\x07ory"),
    ("newline", "memory\nrm"),
    ("long-name", "m" * 300),
    ("long-path", "abc/" * 400 + "memory"),
    ("not-text", 12345),
]


def _case(writer: str, label: str, prefix: object, setup=None) -> Case:
    """One writer given one bad prefix."""
    return Case(f"{writer}-prefix-{label}", "filename_prefix",
                lambda env: env.call(writer, filename_prefix=prefix), setup)


CASES = [
    *(_case(writer, label, prefix) for writer in WRITERS for label, prefix in PREFIXES),
    *(_case(writer, "through-a-file", "earlier.txt/memory", _through_a_file) for writer in WRITERS),
    *(_case(writer, "symlink-out", "link_out/memory", _link_out) for writer in WRITERS),
]
