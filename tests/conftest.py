"""Shared pytest setup: make the repo root importable so tests can `import memory`."""
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
