"""Every shipped workflow loads in the real ComfyUI web frontend with no missing node and runs to success on a CPU."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from comfyui_support import PACK, load_runner, run_harness

WORKFLOWS = sorted((PACK / "workflows").glob("*.json"))


@pytest.fixture(scope="module")
def ui_run(tmp_path_factory):
    """One run of all shipped workflows through the real frontend (headless Chromium) and server."""
    work = tmp_path_factory.mktemp("harness_ui")
    run = run_harness("run-ui", [str(p) for p in WORKFLOWS], work)
    return run, work


def test_required_workflows_are_shipped():
    names = {p.name for p in WORKFLOWS}
    assert {"memory_scene_edit.json", "memory_3d_preview.json"} <= names


def test_all_workflows_pass_in_the_real_frontend(ui_run):
    run, _ = ui_run
    assert run["results"] is not None, run["stdout"][-3000:] + run["stderr"][-3000:]
    failures = [r for r in run["results"] if not r.get("passed")]
    assert run["returncode"] == 0 and not failures, json.dumps(failures, indent=1, default=str)[:6000] + run["stdout"][-2000:]
    assert len(run["results"]) == len(WORKFLOWS)
    assert not run["report"].get("packErrors"), run["report"]["packErrors"]


def output_files(work: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files with the given suffixes that the server wrote to its output folder."""
    return [p for p in (work / "output").rglob("*") if p.suffix.lower() in suffixes]


def test_scene_edit_writes_an_animation(ui_run):
    _, work = ui_run
    videos = output_files(work, (".webp", ".mp4", ".webm"))
    assert videos and all(p.stat().st_size > 1000 for p in videos)


def test_3d_preview_writes_a_glb(ui_run):
    _, work = ui_run
    glbs = output_files(work, (".glb",))
    assert glbs and glbs[0].read_bytes()[:4] == b"glTF"


def test_example_runner_converts_like_the_frontend(ui_run, comfy):
    """.ci/run_workflow.py (README command one) must build the same prompt as the real frontend's graphToPrompt."""
    _, work = ui_run
    mappings, _ = comfy
    runner = load_runner()
    for workflow in WORKFLOWS:
        frontend = json.loads((work / "api" / f"{workflow.stem}.api.json").read_text())
        frontend = frontend.get("prompt", frontend)
        ours = runner.ui_to_api(json.loads(workflow.read_text()), mappings)
        assert ours.keys() == frontend.keys()
        for node_id, entry in frontend.items():
            # the frontend may add values of its own DOM widgets (Preview3D's 'image'), which the server ignores
            spec = mappings[entry["class_type"]].INPUT_TYPES()
            declared = {*spec.get("required", {}), *spec.get("optional", {})}
            assert ours[node_id]["class_type"] == entry["class_type"]
            assert ours[node_id]["inputs"] == {k: v for k, v in entry["inputs"].items() if k in declared}, node_id
