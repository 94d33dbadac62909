"""Access to a real ComfyUI for the integration tests: in-process nodes, and the harness for workflows."""
from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

PACK = Path(__file__).resolve().parent.parent
COMFY_DIR = Path(os.environ.get("COMFY_DIR", "/opt/comfyui"))
HARNESS = Path(os.environ.get("COMFY_HARNESS", PACK.parent / "shared" / "tools" / "comfy-harness.sh"))


def require_comfyui() -> None:
    """Skip (or fail when ``COME_REQUIRE_COMFYUI=1``, as in CI) unless ComfyUI and the harness are installed."""
    missing = [str(p) for p in (COMFY_DIR / "main.py", HARNESS) if not p.exists()]
    if missing:
        message = f"real ComfyUI not available ({', '.join(missing)} missing); run .ci/test to install it"
        if os.environ.get("COME_REQUIRE_COMFYUI") == "1":
            pytest.fail(message)
        pytest.skip(message)


def load_runner():
    """The example runner module (.ci/run_workflow.py), which starts ComfyUI in-process and converts workflows."""
    spec = importlib.util.spec_from_file_location("come_run_workflow", PACK / ".ci" / "run_workflow.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def start_comfyui_in_process(output_dir: Path) -> dict:
    """Import ComfyUI in this process with only this pack loaded; returns ComfyUI's NODE_CLASS_MAPPINGS."""
    require_comfyui()
    runner = load_runner()
    argv, cwd = sys.argv, os.getcwd()
    runner.start_comfyui(COMFY_DIR, output_dir)
    sys.argv = argv
    os.chdir(cwd)
    import nodes
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    return nodes.NODE_CLASS_MAPPINGS


def execute_prompt(prompt: dict):
    """Validate and run an API prompt in ComfyUI's own executor (ComfyUI imported in-process); returns the executor."""
    import execution
    import server

    async def run():
        executor = execution.PromptExecutor(server.PromptServer(asyncio.get_running_loop()),
                                            cache_type=execution.CacheType.CLASSIC)
        pid = str(uuid.uuid4())
        valid, err, outputs, node_errors = await execution.validate_prompt(pid, prompt, None)
        assert valid, (err, node_errors)
        await executor.execute_async(prompt, pid, {}, outputs)
        return executor

    return asyncio.run(run())


def run_harness(mode: str, workflows: list[str], work: Path, timeout: int = 1200) -> dict:
    """Run ``comfy-harness.sh run-ui|run-api|run-direct`` on workflows; returns its results JSON and output."""
    require_comfyui()
    proc = subprocess.run(
        ["bash", str(HARNESS), mode, "--work", str(work), "--timeout", "600", str(PACK), *workflows],
        cwd=PACK, capture_output=True, text=True, timeout=timeout,
    )
    results_file = work / f"results-{mode.split('-')[1]}.json"
    report = json.loads(results_file.read_text()) if results_file.exists() else None
    # run-ui wraps the per-workflow list with browser diagnostics; run-api/run-direct write the bare list
    results = report.get("results") if isinstance(report, dict) else report
    return {"returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr, "results": results,
            "report": report}
