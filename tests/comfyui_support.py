"""Access to a real ComfyUI for the integration tests: in-process nodes, and the harness for workflows."""
from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

PACK = Path(__file__).resolve().parent.parent
COMFY_DIR = Path(os.environ.get("COMFY_DIR", "/opt/comfyui"))
HARNESS = Path(os.environ.get("COMFY_HARNESS", PACK.parent / "shared" / "tools" / "comfy-harness.sh"))
# an SD2-style UNet (one level, 320 channels, 1024-wide cross-attention) that ComfyUI's model detection recognises
TINY_UNET = dict(image_size=32, in_channels=4, out_channels=4, model_channels=320, num_res_blocks=[1],
                 channel_mult=[1], transformer_depth=[1], transformer_depth_output=[1, 1],
                 transformer_depth_middle=-2, context_dim=1024, use_linear_in_transformer=True,
                 use_spatial_transformer=True, num_head_channels=64, legacy=False)


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


def tiny_unet(**changes: object) -> torch.nn.Module:
    """ComfyUI's UNetModel in the TINY_UNET configuration with ``changes`` (ComfyUI imported in-process)."""
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from comfy.ops import disable_weight_init
    return UNetModel(**{**TINY_UNET, **changes}, operations=disable_weight_init)


def random_weights(module: torch.nn.Module, generator: torch.Generator, prefix: str = "",
                   scale: float = 0.05) -> dict[str, torch.Tensor]:
    """Seeded random tensors shaped as ``module``'s state dict, keys prefixed: a random model ComfyUI detects by shape."""
    return {prefix + k: torch.randn(v.shape, generator=generator) * scale for k, v in module.state_dict().items()}


def saved_latent(out_dir: Path, prefix: str) -> torch.Tensor:
    """The one latent a SaveLatent node with ``filename_prefix`` ``prefix`` wrote to ``out_dir``."""
    from safetensors.torch import load_file
    folder, name = (out_dir / prefix).parent, Path(prefix).name
    files = sorted(folder.glob(f"{name}_{'[0-9]' * 5}_.latent"))
    assert len(files) == 1, files
    return load_file(str(files[0]))["latent_tensor"]


def run_harness(mode: str, workflows: list[str], work: Path, timeout: int = 1200,
                server_args: Sequence[str] = ()) -> dict:
    """Run ``comfy-harness.sh run-ui|run-api|run-direct`` on workflows (``server_args`` go to ComfyUI's main.py);
    returns its results JSON and output."""
    require_comfyui()
    proc = subprocess.run(
        ["bash", str(HARNESS), mode, "--work", str(work), "--timeout", "600",
         *(f"--server-arg={a}" for a in server_args), str(PACK), *workflows],
        cwd=PACK, capture_output=True, text=True, timeout=timeout,
    )
    results_file = work / f"results-{mode.split('-')[1]}.json"
    report = json.loads(results_file.read_text()) if results_file.exists() else None
    # run-ui wraps the per-workflow list with browser diagnostics; run-api/run-direct write the bare list
    results = report.get("results") if isinstance(report, dict) else report
    return {"returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr, "results": results,
            "report": report}
