"""Every shipped workflow loads in the real ComfyUI web frontend with no missing node and runs to success on a CPU.

The workflows on core model loaders get random models of the file names they expect, in shapes ComfyUI's
loaders detect: an SD 1.5 checkpoint (tiny UNet, full-size CLIP-L, whose config is fixed, and a TAESD as its
VAE) and, for native Wan, a tiny VACE transformer and a full-size random Wan 2.1 VAE (its config is fixed too).
Wan's text encoder cannot be had small: ComfyUI builds umt5-xxl (5.7 B parameters) from a fixed config, and a
Wan model takes only its 4096-wide output. So the Wan workflow runs in the real frontend up to the server's
validation, which must reject nothing but the missing text encoder, and runs in the executor with a fixed
4096-wide conditioning in place of CLIP Text Encode.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from comfyui_support import PACK, execute_prompt, load_runner, random_weights, run_harness, saved_latent, tiny_unet

WORKFLOWS = sorted((PACK / "workflows").glob("*.json"))
SD_CHECKPOINT = "v1-5-pruned-emaonly-fp16.safetensors"
WAN_DIT, WAN_VAE = "wan2.1_vace_1.3B_fp16.safetensors", "wan_2.1_vae.safetensors"
# workflows that only load here, with the one model input the server must find missing
LOAD_ONLY = {"wan_navigate_memory.json": ("CLIPLoader", "clip_name")}
# ComfyUI detects a Wan model with head size 128 and text width 4096; VACE's input is 32 latent + 64 mask channels
TINY_VACE = dict(dim=128, ffn_dim=256, num_heads=1, num_layers=2, vace_layers=1, vace_in_dim=96, in_dim=16,
                 out_dim=16, text_dim=4096, freq_dim=256)
WAN_VAE_CONFIG = dict(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                      temperal_downsample=[False, True, True], dropout=0.0)
# the executor runs the shipped graphs at a small size and step count, to stay quick on a CPU
SMALL = {"WanVaceToVideo": {"width": 64, "height": 64, "length": 5}, "EmptyLatentImage": {"width": 64, "height": 64},
         "BasicScheduler": {"steps": 2}}
WAN_PATH_CAMERAS = 17  # the Wan workflow's camera path: its start, 12 turning and 4 walking frames


def write_model_files(root: Path) -> None:
    """Random models under the names the workflows expect, in ComfyUI's checkpoints, diffusion_models and vae folders."""
    from comfy.ldm.wan.model import VaceWanModel
    from comfy.ldm.wan.vae import WanVAE
    from comfy.ops import disable_weight_init
    from comfy.sd1_clip import SDClipModel
    from comfy.taesd.taesd import TAESD
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    for folder in ("checkpoints", "diffusion_models", "vae"):
        (root / folder).mkdir()
    # SD 1.5 is detected by 768-wide cross-attention without linear projections; one attention layer keeps it quick
    unet = random_weights(tiny_unet(context_dim=768, use_linear_in_transformer=False, transformer_depth_output=[0, 0]),
                          g, "model.diffusion_model.")
    clip = random_weights(SDClipModel(), g, "cond_stage_model.")
    # a TAESD is a VAE ComfyUI detects in a checkpoint; with TAESD's own latent scale and shift its decoder sees the latent
    vae = {**random_weights(TAESD(), g, "first_stage_model."), "first_stage_model.vae_scale": torch.tensor(1.0),
           "first_stage_model.vae_shift": torch.tensor(0.0)}
    save_file({k: v.half() for k, v in {**unet, **clip, **vae}.items()}, str(root / "checkpoints" / SD_CHECKPOINT))
    save_file(random_weights(VaceWanModel(**TINY_VACE, operations=disable_weight_init), g),
              str(root / "diffusion_models" / WAN_DIT))
    with torch.device("meta"):  # only its shapes: 127 M parameters
        wan_vae = WanVAE(**WAN_VAE_CONFIG)
    save_file({k: v.half() for k, v in random_weights(wan_vae, g).items()}, str(root / "vae" / WAN_VAE))


@pytest.fixture(scope="module")
def model_files(comfy, tmp_path_factory):
    """The random model files, registered in the in-process ComfyUI; yields their root folder."""
    import folder_paths

    root = tmp_path_factory.mktemp("workflow_models")
    write_model_files(root)
    folders = [(name, str(root / name)) for name in ("checkpoints", "diffusion_models", "vae")]
    for name, path in folders:
        folder_paths.add_model_folder_path(name, path)
    yield root
    for name, path in folders:
        folder_paths.folder_names_and_paths[name][0].remove(path)


@pytest.fixture(scope="module")
def ui_run(model_files, tmp_path_factory):
    """One run of all shipped workflows through the real frontend (headless Chromium) and server."""
    work = tmp_path_factory.mktemp("harness_ui")
    config = work / "extra_model_paths.yaml"
    config.write_text(f"come_tests:\n  base_path: {model_files}\n  checkpoints: checkpoints\n"
                      "  diffusion_models: diffusion_models\n  vae: vae\n")
    expected = [f"{p}::invalid" if p.name in LOAD_ONLY else str(p) for p in WORKFLOWS]
    run = run_harness("run-ui", expected, work, server_args=[f"--extra-model-paths-config={config}"])
    return run, work


def test_required_workflows_are_shipped():
    names = {p.name for p in WORKFLOWS}
    assert {"memory_scene_edit.json", "memory_3d_preview.json", "wan_navigate_memory.json",
            "poce_guider_any_model.json"} <= names


def test_all_workflows_pass_in_the_real_frontend(ui_run):
    run, _ = ui_run
    assert run["results"] is not None, run["stdout"][-3000:] + run["stderr"][-3000:]
    failures = [r for r in run["results"] if not r.get("passed")]
    assert run["returncode"] == 0 and not failures, json.dumps(failures, indent=1, default=str)[:6000] + run["stdout"][-2000:]
    assert len(run["results"]) == len(WORKFLOWS)
    assert not run["report"].get("packErrors"), run["report"]["packErrors"]


def test_load_only_workflows_lack_nothing_but_their_text_encoder(ui_run):
    """The frontend's prompt of a load-only workflow validates on the server except for the text encoder file."""
    run, _ = ui_run
    results = {Path(r["file"]).name: r for r in run["results"] if Path(r["file"]).name in LOAD_ONLY}
    assert results.keys() == LOAD_ONLY.keys()
    for name, result in results.items():
        errors = result["node_errors"]  # the harness stores them as Python's repr
        errors = ast.literal_eval(errors) if isinstance(errors, str) else errors
        reasons = [(e["class_type"], r["type"], r["extra_info"]["input_name"])
                   for e in errors.values() for r in e["errors"]]
        node_type, model_input = LOAD_ONLY[name]
        assert reasons == [(node_type, "value_not_in_list", model_input)], (name, errors)


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


def test_guider_workflow_writes_a_varied_image(ui_run):
    from PIL import Image

    _, work = ui_run
    images = [p for p in output_files(work, (".png",)) if p.name.startswith("poce_guider")]
    assert len(images) == 1
    image = Image.open(images[0])
    assert image.size == (256, 256) and np.asarray(image.convert("RGB")).std() > 1.0


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


# ---- the workflows on core model loaders in the executor, against variants of themselves ----

class FixedWanText:
    """Stands in for CLIP Text Encode on umt5-xxl: a fixed conditioning of the width a Wan model takes."""

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "testing"

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {}}

    def encode(self) -> tuple:
        """The conditioning, the same on every call."""
        g = torch.Generator().manual_seed(1)
        return ([[torch.randn(1, 8, TINY_VACE["text_dim"], generator=g), {}]],)


def small_prompt(name: str, mappings: dict, prefix: str) -> dict:
    """Shipped workflow ``name`` as the runner converts it, at the SMALL sizes, plus its sampling with the guider in
    single mode (the first expert alone); both sampler outputs saved as latents ``prefix/composed`` and ``prefix/single``."""
    prompt = load_runner().ui_to_api(json.loads((PACK / "workflows" / name).read_text()), mappings)
    for node in prompt.values():
        node["inputs"].update(SMALL.get(node["class_type"], {}))
    guider = next(k for k, n in prompt.items() if n["class_type"] == "CoMEPoCEGuider")
    sampler = next(k for k, n in prompt.items() if n["class_type"] == "SamplerCustomAdvanced")
    prompt["900"] = {"class_type": "CoMEPoCEGuider", "inputs": {**prompt[guider]["inputs"], "mode": "single"}}
    prompt["901"] = {"class_type": "SamplerCustomAdvanced",
                     "inputs": {**prompt[sampler]["inputs"], "guider": ["900", 0]}}
    for node_id, run, source in (("902", "composed", sampler), ("903", "single", "901")):
        prompt[node_id] = {"class_type": "SaveLatent", "inputs": {"samples": [source, 0],
                                                                   "filename_prefix": f"{prefix}/{run}"}}
    return prompt


def assert_success(executor) -> None:
    """The executor ran the prompt to the end."""
    assert executor.success, [d for ev, d in executor.status_messages if ev == "execution_error"]


def test_guider_workflow_composes_both_experts(comfy, model_files):
    mappings, out_dir = comfy
    assert_success(execute_prompt(small_prompt("poce_guider_any_model.json", mappings, "any_model")))
    composed, single = (saved_latent(out_dir, f"any_model/{run}") for run in ("composed", "single"))
    assert composed.shape == (1, 4, 8, 8) and torch.isfinite(composed).all()
    assert (composed - single).abs().max() > 1e-3  # the second expert changes the result


def test_wan_workflow_runs_with_a_fixed_text_conditioning(comfy, model_files, monkeypatch):
    from PIL import Image

    mappings, out_dir = comfy
    monkeypatch.setitem(mappings, "CoMETestFixedWanText", FixedWanText)
    prompt = small_prompt("wan_navigate_memory.json", mappings, "wan_workflow")
    for node_id, node in list(prompt.items()):
        if node["class_type"] == "CLIPLoader":
            del prompt[node_id]
        elif node["class_type"] == "CLIPTextEncode":
            prompt[node_id] = {"class_type": "CoMETestFixedWanText", "inputs": {}}
    render = next(k for k, n in prompt.items() if n["class_type"] == "CoMERenderPatchMemory")
    prompt["910"] = {"class_type": "MaskToImage", "inputs": {"mask": [render, 1]}}
    prompt["911"] = {"class_type": "SaveImage", "inputs": {"images": ["910", 0],
                                                            "filename_prefix": "wan_workflow/coverage"}}
    assert_success(execute_prompt(prompt))

    composed, single = (saved_latent(out_dir, f"wan_workflow/{run}") for run in ("composed", "single"))
    assert composed.shape == (1, 16, 2, 8, 8) and torch.isfinite(composed).all()
    assert (composed - single).abs().max() > 1e-3  # the spatial expert changes the result
    video = Image.open(next((out_dir / "come").glob("wan_navigate_memory_*.webp")))
    assert video.n_frames == SMALL["WanVaceToVideo"]["length"] and video.size == (64, 64)
    # the camera path turns back into the corridor the episode walked: the memory covers most of every view
    coverage = [np.asarray(Image.open(p).convert("L")).mean() / 255
                for p in sorted((out_dir / "wan_workflow").glob("coverage_*.png"))]
    assert len(coverage) == WAN_PATH_CAMERAS and min(coverage) > 0.5, coverage
