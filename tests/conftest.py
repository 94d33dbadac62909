"""Shared pytest setup: make the repo root importable so tests can `import memory`; the real ComfyUI and its progress bar."""
import importlib
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    """A real ComfyUI imported in-process with this pack loaded: (NODE_CLASS_MAPPINGS, output folder)."""
    from comfyui_support import start_comfyui_in_process

    out = tmp_path_factory.mktemp("comfy_out")
    return start_comfyui_in_process(out), out


@pytest.fixture
def ticks(comfy, monkeypatch):
    """Records the progress bar's total and updates; ``ticks['cancel_at']`` presses cancel after that many updates."""
    mm = importlib.import_module("comfy.model_management")
    comfy_utils = importlib.import_module("comfy.utils")
    record = {"total": None, "updates": 0, "cancel_at": None}

    class RecordingBar(comfy_utils.ProgressBar):
        def __init__(self, total, *args, **kwargs):
            super().__init__(total, *args, **kwargs)
            record["total"] = total

        def update(self, value):
            super().update(value)
            record["updates"] += value
            if record["updates"] == record["cancel_at"]:
                mm.interrupt_current_processing(True)

    monkeypatch.setattr(comfy_utils, "ProgressBar", RecordingBar)
    return record
