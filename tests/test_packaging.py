"""The pack's declared dependencies: requirements.txt (what ComfyUI users install) agrees with pyproject.toml,
and every third-party module the pack imports is declared (training's tqdm was once missing)."""
from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

# Modules the pack imports without declaring them, because ComfyUI brings them: ComfyUI owns torch (see
# pyproject.toml) and typing_extensions comes with torch.
FROM_COMFYUI = {"comfy", "comfy_api", "folder_paths", "torch", "typing_extensions"}
# Import name -> distribution name where they differ; pyglet comes with miniworld (the sim extra).
DISTRIBUTION = {"PIL": "pillow", "pyglet": "miniworld"}


def name(requirement: str) -> str:
    """The normalised distribution name of a requirement line ("Pillow>=10" -> "pillow")."""
    return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9._-]+)", requirement).group(1)).lower()


def requirements_txt() -> list[str]:
    lines = (line.split("#")[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines())
    return [line for line in lines if line]


def imported_modules() -> dict[str, str]:
    """Top-level names of the absolute imports in the pack's code, each with one file that imports it."""
    found = {}
    for path in [ROOT / "__init__.py", *sorted((ROOT / "memory").rglob("*.py")), *sorted((ROOT / "nodes").rglob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for module in names:
                found.setdefault(module.split(".")[0], str(path.relative_to(ROOT)))
    return found


def test_requirements_txt_and_pyproject_declare_the_same_runtime_dependencies():
    assert sorted(requirements_txt()) == sorted(PYPROJECT["dependencies"])
    assert "tqdm" in {name(r) for r in requirements_txt()}


def test_every_third_party_import_of_the_pack_is_declared():
    declared = {name(r) for r in PYPROJECT["dependencies"]}
    declared |= {name(r) for extra in PYPROJECT["optional-dependencies"].values() for r in extra}
    own = {"memory", "nodes"}
    undeclared = {module: path for module, path in imported_modules().items()
                  if module not in sys.stdlib_module_names | own | FROM_COMFYUI
                  and name(DISTRIBUTION.get(module, module)) not in declared}
    assert not undeclared, f"imported but declared neither in pyproject.toml nor requirements.txt: {undeclared}"
