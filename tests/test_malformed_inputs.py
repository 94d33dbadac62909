"""Malformed inputs across the node families get a clear ValueError naming the input, at once, and lose no file.

The cases live in ``tests/malformed_cases/*.py`` (see ``tests/malformed_support.py`` for the format).
Each runs in the real ComfyUI, in-process, with a time limit so that a hang fails instead of freezing
the run, and with a snapshot of every file under ComfyUI's folders and the pack before and after:
a rejected input must write no file anywhere and change none.
"""
from __future__ import annotations

import importlib
import os
import pkgutil
import signal
from pathlib import Path

import pytest

import malformed_cases
from malformed_support import Case, Env

PACK = Path(__file__).resolve().parent.parent
SECONDS_PER_CASE = 20
MIN_CASES = 150
SKIPPED = {"__pycache__", ".git", ".pytest_cache"}


def all_cases() -> list[Case]:
    """Every case of every family module under tests/malformed_cases/."""
    found = []
    for info in pkgutil.iter_modules(malformed_cases.__path__):
        found += importlib.import_module(f"malformed_cases.{info.name}").CASES
    return found


CASES = all_cases()


def test_the_table_is_large_unique_and_covers_every_family():
    ids = [case.id for case in CASES]
    assert len(ids) >= MIN_CASES, f"only {len(ids)} malformed-input cases"
    assert len(set(ids)) == len(ids), "case ids must be unique"
    families = {info.name for info in pkgutil.iter_modules(malformed_cases.__path__)}
    assert {"camera_paths", "episodes", "files", "patch_memory", "world_model"} <= families


@pytest.fixture(scope="module")
def env(comfy, tmp_path_factory):
    """Valid sample values, with ComfyUI's input folder moved to a scratch folder for the cases' files."""
    folder_paths = importlib.import_module("folder_paths")
    mappings, output = comfy
    previous = folder_paths.get_input_directory()
    inputs = tmp_path_factory.mktemp("comfy_in")
    folder_paths.set_input_directory(str(inputs))
    yield Env(mappings, Path(output), inputs, tmp_path_factory.mktemp("scratch"))
    folder_paths.set_input_directory(previous)


def snapshot(roots: list[Path]) -> dict[Path, tuple[int, int]]:
    """(size, mtime) of every file under ``roots`` (caches and git internals aside)."""
    files = {}
    for root in roots:
        for folder, subfolders, names in os.walk(root):
            subfolders[:] = [d for d in subfolders if d not in SKIPPED]
            for name in names:
                stat = os.stat(os.path.join(folder, name))
                files[Path(folder, name)] = (stat.st_size, stat.st_mtime_ns)
    return files


class Hang(Exception):
    """Raised by the alarm when a case runs past its time limit."""


def _alarm(*_):
    raise Hang


def watched_roots(env: Env) -> list[Path]:
    """ComfyUI's output, input, temp and model folders, the scratch folder and the pack itself."""
    folder_paths = importlib.import_module("folder_paths")
    roots = {env.output, env.input, env.scratch, PACK, Path(folder_paths.get_temp_directory())}
    roots |= {Path(p) for p in folder_paths.get_folder_paths("world_models")}
    return sorted(r.resolve() for r in roots if r.exists())


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_malformed_input_is_rejected_naming_it(env, case):
    if case.setup is not None:
        case.setup(env)
    roots = watched_roots(env)
    before = snapshot(roots)
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(SECONDS_PER_CASE)
    try:
        with pytest.raises(ValueError) as raised:
            case.call(env)
    except Hang:
        pytest.fail(f"{case.id}: still running after {SECONDS_PER_CASE} s; the input must be rejected at once")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    message = str(raised.value)
    assert case.input_name in message, f"{case.id}: the error does not name '{case.input_name}': {message}"
    after = snapshot(roots)
    changed = sorted(str(p) for p in before if p in after and after[p] != before[p])
    removed = sorted(str(p) for p in before if p not in after)
    added = sorted(str(p) for p in after if p not in before)
    assert not changed and not removed, f"{case.id}: earlier files changed {changed} or vanished {removed}"
    assert not added, f"{case.id}: a rejected input wrote files {added}"


def test_every_combo_input_of_the_pack_refuses_a_value_it_never_offered(env):
    ours = {node_id: cls for node_id, cls in env.mappings.items()
            if getattr(cls, "RELATIVE_PYTHON_MODULE", "").endswith("ComfyUI-CoME")}
    checked = []
    for node_id, cls in ours.items():
        for spec in cls.GET_SCHEMA().inputs:
            if spec.get_io_type() != "COMBO":
                continue
            with pytest.raises(ValueError) as raised:
                env.call(node_id, **{spec.id: "no-such-option"})
            assert spec.id in str(raised.value), f"{node_id}.{spec.id}: {raised.value}"
            checked.append(f"{node_id}.{spec.id}")
    assert len(checked) >= 7, checked
