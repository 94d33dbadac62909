"""LoRA interop (memory/world/lora_format.py): a peft LoRA on a diffusers Wan transformer <-> ComfyUI's native Wan LoRA.

The round trips run the real ComfyUI: a tiny random Wan 2.1 checkpoint in native keys, loaded by core
UNETLoader, with a LoRA applied by core LoraLoaderModelOnly, against the diffusers WanTransformer3DModel
holding the same weights (converted by diffusers' own ``convert_wan_transformer_to_diffusers``) with
the LoRA as a peft adapter. ComfyUI detects a Wan model from its weights with a fixed head size of 128
(``model_detection``: num_heads = dim // 128), frequency width 256 and text width 4096, hence those sizes.
The error tests need no ComfyUI and use a still smaller transformer.
"""
from __future__ import annotations

import importlib
import sys

import pytest
import torch
from diffusers import WanTransformer3DModel
from diffusers.loaders.single_file_utils import convert_wan_transformer_to_diffusers
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import save_file

from memory.world.lora_format import (
    PREFIX, apply_differences, diffusers_module, from_comfy, load_comfy_lora, native_module, peft_lora, to_comfy,
)

MODEL_FILE = "come_tiny_wan.safetensors"
LORA_FILE = "come_tiny_wan_lora_0_steps_00001_.safetensors"
RANK, ALPHA = 4, 2.0
# the episodic LoRA's modules on a Wan transformer: attention projections and FFN of every block
TARGETS = ["attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
           "attn2.to_out.0", "ffn.net.0.proj", "ffn.net.2"]
NATIVE = dict(model_type="t2v", patch_size=(1, 2, 2), text_len=512, in_dim=16, dim=256, ffn_dim=64, freq_dim=256,
              text_dim=4096, out_dim=16, num_heads=2, num_layers=2, window_size=(-1, -1), qk_norm=True,
              cross_attn_norm=True, eps=1e-6)
DIFFUSERS = dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=128, in_channels=16, out_channels=16,
                 text_dim=4096, freq_dim=256, ffn_dim=64, num_layers=2, cross_attn_norm=True,
                 qk_norm="rms_norm_across_heads", eps=1e-6)
SMALL = {**DIFFUSERS, "attention_head_dim": 16, "text_dim": 32, "freq_dim": 32, "ffn_dim": 48}
TOLERANCE = 1e-4


def with_lora(transformer: WanTransformer3DModel, weights: dict, rank: int, alpha: float, targets) -> WanTransformer3DModel:
    """``transformer`` with a peft adapter of ``weights`` on ``targets`` (every key must land)."""
    transformer.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets)))
    result = set_peft_model_state_dict(transformer, weights)
    assert not result.unexpected_keys
    return transformer


def random_lora(transformer: WanTransformer3DModel, seed: int) -> dict:
    """The peft state dict of a rank-RANK adapter on TARGETS with random (non-zero) A and B."""
    transformer.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS))
    g = torch.Generator().manual_seed(seed)
    weights = {k: torch.randn(v.shape, generator=g) * 0.1 for k, v in get_peft_model_state_dict(transformer).items()}
    transformer.delete_adapters("default")
    return weights


def forward(transformer: WanTransformer3DModel, inputs) -> torch.Tensor:
    """The diffusers transformer's output on (latents, timestep, text context)."""
    with torch.no_grad():
        return transformer(*inputs, return_dict=False)[0]


# ---- the format alone (no ComfyUI) ----

@pytest.fixture(scope="module")
def small():
    """A small random diffusers Wan transformer and a random LoRA on it, in ComfyUI's keys."""
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(**SMALL)
    weights = random_lora(transformer, 1)
    return transformer, weights, to_comfy(peft_lora(weights, RANK, ALPHA))


def test_lora_format_keys_are_comfyui_native_wan_names(small):
    _, weights, tensors = small
    assert len(tensors) == 3 * len(weights) // 2
    # written with alpha 1 (what core TrainLoraNode assumes when it continues from a file), the scale in lora_up
    assert torch.equal(tensors["diffusion_model.blocks.1.self_attn.o.lora_up.weight"],
                       weights["blocks.1.attn1.to_out.0.lora_B.weight"] * ALPHA)
    assert torch.equal(tensors["diffusion_model.blocks.0.ffn.0.lora_down.weight"],
                       weights["blocks.0.ffn.net.0.proj.lora_A.weight"])
    assert float(tensors["diffusion_model.blocks.0.cross_attn.k.alpha"]) == 1.0


def update(lora, module: str) -> torch.Tensor:
    """The weight update ``alpha / rank · B @ A`` of ``module`` in a PeftLoRA."""
    return lora.weights[f"{module}.lora_B.weight"] @ lora.weights[f"{module}.lora_A.weight"] * lora.alpha / lora.rank


def test_lora_format_converts_back_to_the_same_peft_weights(small):
    transformer, weights, tensors = small
    back = from_comfy(tensors, transformer, rank=RANK, alpha=ALPHA)
    assert (back.rank, back.alpha, back.differences) == (RANK, ALPHA, {})
    assert back.weights.keys() == weights.keys()
    assert all(torch.allclose(back.weights[k], weights[k], rtol=1e-6, atol=0) for k in weights)
    # at the file's own alpha (1) the scale stays in B: other weights, the same update
    own = from_comfy(tensors, transformer)
    assert own.alpha == 1.0
    for module in ("blocks.0.attn2.to_v", "blocks.1.ffn.net.2"):
        assert torch.allclose(update(own, module), update(back, module), atol=1e-6)


def test_lora_format_names_round_trip():
    for native in ("blocks.3.self_attn.o", "blocks.0.cross_attn.norm_k_img", "blocks.12.norm3", "head.head",
                   "time_projection.1", "img_emb.proj.4", "patch_embedding"):
        assert native_module(diffusers_module(native)) == native
    assert diffusers_module("blocks.0.attn.qkv") is None and native_module("blocks.0.attn.qkv") is None


@pytest.mark.parametrize("damage, message", [
    (lambda t: {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": torch.ones(8, 4),
                "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.ones(4, 8)},
     "match no module of this WanTransformer3DModel .* another architecture"),
    (lambda t: {k: torch.cat([v, v], -1) if k.endswith("lora_down.weight") else v for k, v in t.items()},
     "another architecture or model size"),
    (lambda t: {**t, "diffusion_model.blocks.7.self_attn.q.lora_up.weight": torch.ones(32, RANK)},
     "1 of its .* tensors \\(e.g. 'diffusion_model.blocks.7.self_attn.q.lora_up.weight'\\) match no module"),
    (lambda t: {k: v for k, v in t.items() if k != "diffusion_model.blocks.0.ffn.2.lora_down.weight"},
     "'blocks.0.ffn.2' has no down half"),
    (lambda t: {k: v for k, v in t.items() if not k.startswith("diffusion_model.blocks.1.ffn.2.lora_")},
     "'blocks.1.ffn.2' has no up and no down half"),
    (lambda t: {**t, "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.full((32, RANK), float("nan"))},
     "'diffusion_model.blocks.0.self_attn.q.lora_up.weight' holds NaN or inf"),
    (lambda t: {**t, "diffusion_model.blocks.0.self_attn.q.hada_w1_a": torch.ones(32, RANK)}, "not a LoRA tensor"),
    (lambda t: {**t, "diffusion_model.blocks.0.self_attn.q.lora_B.weight": torch.ones(32, RANK)}, "its up twice"),
    (lambda t: {**t, "diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.ones(32, 2 * RANK)},
     "rank-8 up and a rank-4 down half"),
    (lambda t: {}, "holds no tensors"),
])
def test_lora_format_bad_files_name_the_input(small, damage, message):
    transformer, _, tensors = small
    with pytest.raises(ValueError, match=f"^lora_file: .*{message}"):
        from_comfy(damage(dict(tensors)), transformer)


def test_lora_format_another_rank_than_asked_names_the_input(small, tmp_path):
    transformer, _, tensors = small
    save_file(tensors, str(tmp_path / "lora.safetensors"))
    with pytest.raises(ValueError, match=f"^lora_file: .*lora.safetensors: a rank-{RANK} LoRA, but rank 8 was asked"):
        load_comfy_lora(tmp_path / "lora.safetensors", transformer, rank=8)
    (tmp_path / "broken.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="^lora_file: .*not a readable safetensors file"):
        load_comfy_lora(tmp_path / "broken.safetensors", transformer)


def test_lora_format_export_refuses_a_lora_without_comfyui_counterpart(small):
    _, weights, _ = small
    with pytest.raises(ValueError, match="^lora: adapts 1 modules that ComfyUI's native Wan model does not have "
                                         "\\(e.g. 'blocks.0.attn.qkv'\\)"):
        peft_lora({"blocks.0.attn.qkv.lora_A.weight": torch.ones(RANK, 8),
                   "blocks.0.attn.qkv.lora_B.weight": torch.ones(24, RANK)}, RANK, ALPHA)
    with pytest.raises(ValueError, match="^lora: module 'blocks.0.attn1.to_q' has halves .* not rank 8"):
        peft_lora(weights, 8, ALPHA)
    with pytest.raises(ValueError, match="^lora: .*NaN"):
        peft_lora({**weights, "blocks.0.ffn.net.2.lora_A.weight": torch.full((RANK, 48), float("inf"))}, RANK, ALPHA)


# ---- against the real ComfyUI ----

@pytest.fixture(scope="module")
def tiny_wan(comfy, tmp_path_factory):
    """A tiny random native Wan 2.1 checkpoint registered in ComfyUI's diffusion_models (and its folder as the first
    loras folder, where exports go); yields (root, a maker of the same weights as a diffusers transformer, inputs)."""
    import folder_paths
    from comfy.ldm.wan.model import WanModel
    from comfy.ops import disable_weight_init

    _, out = comfy
    root = tmp_path_factory.mktemp("lora_format_models")
    g = torch.Generator().manual_seed(0)
    native = {k: torch.randn(v.shape, generator=g) * 0.05
              for k, v in WanModel(**NATIVE, operations=disable_weight_init).state_dict().items()}
    save_file(native, str(root / MODEL_FILE))

    def diffusers_copy() -> WanTransformer3DModel:
        transformer = WanTransformer3DModel(**DIFFUSERS)
        transformer.load_state_dict(convert_wan_transformer_to_diffusers(dict(native)), strict=True)
        return transformer.eval()

    inputs = (torch.randn(1, 16, 2, 8, 8, generator=g), torch.tensor([600.0]), torch.randn(1, 7, 4096, generator=g))
    # core SaveLoRANode writes into the output folder; its loras/ subfolder is registered so core loaders find it
    registered = [("diffusion_models", str(root), False), ("loras", str(root), True), ("loras", str(out / "loras"), False)]
    for name, path, first in registered:
        folder_paths.add_model_folder_path(name, path, is_default=first)
    yield root, diffusers_copy, inputs
    for name, path, _ in registered:
        folder_paths.folder_names_and_paths[name][0].remove(path)


def native_output(mappings, inputs, lora_file: str | None = None) -> torch.Tensor:
    """ComfyUI's native Wan (core UNETLoader, then core LoraLoaderModelOnly with ``lora_file``) on ``inputs``."""
    import comfy.model_management

    patcher = mappings["UNETLoader"]().load_unet(MODEL_FILE, "default")[0]
    if lora_file is not None:
        patcher = mappings["LoraLoaderModelOnly"]().load_lora_model_only(patcher, lora_file, 1.0)[0]
    comfy.model_management.load_models_gpu([patcher])
    model = patcher.model.diffusion_model
    assert model.dtype == torch.float32
    with torch.no_grad():
        return model(*inputs).float()


def test_lora_format_module_names_are_diffusers_own_conversion(comfy):
    """Every native Wan module (text-to-video and image-to-video) maps to the name diffusers' converter gives it."""
    from comfy.ldm.wan.model import WanModel
    from comfy.ops import disable_weight_init

    for model_type in ("t2v", "i2v"):
        native = WanModel(**{**NATIVE, "model_type": model_type}, operations=disable_weight_init).state_dict()
        for key, tensor in native.items():
            module, _, parameter = key.rpartition(".")
            if parameter == "modulation":  # a parameter, not a module: no LoRA and no TrainLoraNode difference
                continue
            (converted,) = convert_wan_transformer_to_diffusers({key: tensor})
            assert f"{diffusers_module(module)}.{parameter}" == converted, key
            assert native_module(converted.rpartition(".")[0]) == module


@pytest.fixture(scope="module")
def exported(comfy, tiny_wan):
    """A random LoRA on the tiny Wan's TARGETS written to models/loras/ by Export Episodic LoRA: its peft weights."""
    mappings, _ = comfy
    root, diffusers_copy, _ = tiny_wan
    weights = random_lora(diffusers_copy(), 2)
    # the LoRA value as the pack's nodes pass it (the pack's own EpisodicLoRA class, as ComfyUI imported it)
    export = mappings["CoMEExportEpisodicLoRA"]
    episodic = sys.modules[export.__module__].EpisodicLoRA(weights, RANK, ALPHA, tuple(TARGETS), "wan", 0)
    assert export.execute(lora=episodic, filename_prefix="come_tiny_wan_lora").args[0] == LORA_FILE
    assert (root / LORA_FILE).is_file()
    return weights


def test_lora_format_exported_lora_gives_comfyui_the_peft_output(comfy, tiny_wan, exported):
    """The key deliverable: Export Episodic LoRA's file applied by core LoraLoaderModelOnly = the peft adapter."""
    comfy_lora = importlib.import_module("comfy.lora")  # imported by name: `comfy` is the fixture here
    mappings, _ = comfy
    root, diffusers_copy, inputs = tiny_wan
    ours = forward(with_lora(diffusers_copy(), exported, RANK, ALPHA, TARGETS), inputs)
    base = forward(diffusers_copy(), inputs)
    native_base, native_lora = native_output(mappings, inputs), native_output(mappings, inputs, LORA_FILE)
    assert torch.allclose(native_base, base, atol=TOLERANCE), (native_base - base).abs().max()
    assert torch.allclose(native_lora, ours, atol=TOLERANCE), (native_lora - ours).abs().max()
    assert (ours - base).abs().max() > 100 * TOLERANCE  # the LoRA changes the output, so the test can fail
    # and ComfyUI read every key of the file (it ignores, with a log line only, keys it has no module for)
    patcher = mappings["UNETLoader"]().load_unet(MODEL_FILE, "default")[0]
    tensors = importlib.import_module("safetensors.torch").load_file(str(root / LORA_FILE))
    loaded = comfy_lora.load_lora(tensors, comfy_lora.model_lora_keys_unet(patcher.model, {}), log_missing=False)
    assert len(loaded) == len(exported) // 2 == 2 * len(TARGETS)


def train_lora(mappings, context: torch.Tensor, learning_rate: float, existing_lora: str = "[None]"):
    """One step of core TrainLoraNode on the tiny Wan (fp32, rank RANK): its LoRA dict and step count."""
    patcher = mappings["UNETLoader"]().load_unet(MODEL_FILE, "default")[0]
    latents = {"samples": torch.randn(1, 16, 2, 8, 8, generator=torch.Generator().manual_seed(3))}
    _, trained, _, steps = mappings["TrainLoraNode"]().train(
        patcher, latents, [[context, {}]], batch_size=1, steps=1, grad_accumulation_steps=1,
        learning_rate=learning_rate, rank=RANK, optimizer="AdamW", loss_function="MSE", seed=0, training_dtype="fp32",
        lora_dtype="fp32", algorithm="LoRA", gradient_checkpointing=False, existing_lora=existing_lora)
    return trained, steps


def test_lora_format_trainloranode_continues_from_an_exported_lora(comfy, tiny_wan, exported):
    """Core TrainLoraNode, continuing from the exported file, starts from the same update (a step of lr 1e-7 later)."""
    mappings, _ = comfy
    trained, steps = train_lora(mappings, tiny_wan[2][2], 1e-7, existing_lora=LORA_FILE)
    assert steps == 1  # 0 steps read back from the file's name, then one more
    for target in TARGETS[:3] + TARGETS[-3:]:
        for block in range(2):
            module = f"blocks.{block}.{target}"
            key = PREFIX + native_module(module)
            core = trained[f"{key}.lora_up.weight"] @ trained[f"{key}.lora_down.weight"] * trained[f"{key}.alpha"] / RANK
            ours = exported[f"{module}.lora_B.weight"] @ exported[f"{module}.lora_A.weight"] * ALPHA / RANK
            assert torch.allclose(core, ours, atol=1e-5), (module, (core - ours).abs().max())


def test_lora_format_trainloranode_file_loads_into_peft(comfy, tiny_wan):
    """A LoRA trained and saved by core TrainLoraNode / SaveLoRANode, read into a peft adapter (its bias and norm
    differences added to the weights), gives what core LoraLoaderModelOnly makes of it."""
    mappings, out = comfy
    _, diffusers_copy, inputs = tiny_wan
    trained, steps = train_lora(mappings, inputs[2], 0.05)
    mappings["SaveLoRANode"]().save(trained, "loras/come_trained", steps)
    (path,) = (out / "loras").glob("come_trained_1_steps_*.safetensors")
    assert any(k.endswith(".diff_b") for k in trained) and "diffusion_model.patch_embedding.lora_up.weight" in trained

    # alpha = rank: the file's scale (alpha 1 / rank) moves into B, so peft runs at scale 1
    lora = load_comfy_lora(path, diffusers_copy(), rank=RANK, alpha=float(RANK))
    assert "patch_embedding" in lora.targets and "blocks.0.attn1.norm_q.weight" in lora.differences
    transformer = diffusers_copy()
    apply_differences(transformer, lora)
    ours = forward(with_lora(transformer, lora.weights, lora.rank, lora.alpha, lora.targets), inputs)
    native_lora = native_output(mappings, inputs, path.name)
    assert torch.allclose(native_lora, ours, atol=TOLERANCE), (native_lora - ours).abs().max()
    assert (ours - native_output(mappings, inputs)).abs().max() > 100 * TOLERANCE
    # written back in ComfyUI's keys, it is the same file as far as ComfyUI's loader is concerned
    again = to_comfy(lora)
    assert {k for k in again if not k.endswith(".alpha")} == {k for k in trained if not k.endswith(".alpha")}


def test_lora_format_export_node_refuses_a_lora_without_comfyui_counterpart(comfy, tiny_wan):
    mappings, _ = comfy
    export = mappings["CoMEExportEpisodicLoRA"]
    mosaic = sys.modules[export.__module__].EpisodicLoRA(
        {"blocks.0.attn.qkv.lora_A.weight": torch.ones(RANK, 8), "blocks.0.attn.qkv.lora_B.weight": torch.ones(24, RANK)},
        RANK, ALPHA, ("blocks.0.attn.qkv",), "MosaicDiT", 0)
    with pytest.raises(ValueError, match="^lora: .*embedded MosaicDiT has none"):
        export.execute(lora=mosaic, filename_prefix="mosaic")
    with pytest.raises(ValueError, match="^lora: expected an episodic LoRA"):
        export.execute(lora={"weights": {}}, filename_prefix="mosaic")
