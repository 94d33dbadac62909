"""The PoCE guider (nodes/poce_guider.py) in the real ComfyUI executor on a tiny random checkpoint, against a direct computation.

The checkpoint is an SD2-style UNet (one level, 320 channels, 1024-wide cross-attention) that ComfyUI's
own UNETLoader detects as SD 2.x; its conditioning comes from core LotusConditioning (a fixed 1024-wide
embedding), so no text encoder is needed. The guider runs inside SamplerCustomAdvanced with euler from
one sigma to 0, whose result is exactly the guider's denoised x0; the reference evaluates the UNet
directly for each conditioning and composes by the ε formula of each mode. Expert 2 carries a hook LoRA
on its conditioning, so the reference applies that LoRA's weights by hand for it.
"""
from __future__ import annotations

import math

import pytest
import torch

from comfyui_support import execute_prompt, random_weights, saved_latent, tiny_unet
from memory.world.poce import MODES, mix_denoised, weights

MODEL_FILE = "come_tiny_sd2_unet.safetensors"
LORA_FILE = "come_tiny_unet_lora.safetensors"
# a cross-attention key projection: the LoRA changes every conditioned prediction, the zero conditioning's too
LORA_MODULE = "input_blocks.1.1.transformer_blocks.0.attn2.to_k"
LORA_RANK, LORA_ALPHA = 4, 2.0
ALPHAS = (2.0, 1.5, 3.0)
SEED, SIZE, STEPS = 7, 64, 2


def eps_formula(mode: str, alphas: tuple[float, ...], e: list[torch.Tensor], n: list[torch.Tensor]) -> torch.Tensor:
    """The composed ε of each mode, written out as in the paper and the mode list."""
    return {
        "poce": sum(a * ek + (1 - a) * nk for a, ek, nk in zip(alphas, e, n)),
        "poce_normalized": n[0] + sum(a * (ek - nk) for a, ek, nk in zip(alphas, e, n)),
        "poe": sum(e),
        "single": alphas[0] * e[0] + (1 - alphas[0]) * n[0],
    }[mode]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("flow", [False, True])
def test_guider_mix_denoised_is_the_epsilon_mixture_in_x0(mode, flow):
    torch.manual_seed(0)
    sigma = torch.tensor([0.7, 0.2]).view(2, 1, 1, 1) if flow else torch.tensor([3.0, 0.5]).view(2, 1, 1, 1)
    scale = 1 - sigma if flow else 1.0  # x = s·x0 + σ·ε: flow matching, or ComfyUI's ε/v parameterisation
    x = torch.randn(2, 4, 8, 8)
    mem, null = [torch.randn(2, 4, 8, 8) for _ in ALPHAS], [torch.randn(2, 4, 8, 8) for _ in ALPHAS]
    eps = [(x - scale * x0) / sigma for x0 in mem]
    eps_null = [(x - scale * x0) / sigma for x0 in null]
    expected = (x - sigma * eps_formula(mode, ALPHAS, eps, eps_null)) / scale
    w_memory, w_null = weights(mode, ALPHAS)
    got = mix_denoised([*zip(w_memory, mem), *zip(w_null, null)], x, scale)
    assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_guider_mix_without_clean_signal_is_an_error_naming_the_mode():
    x, a, b = torch.randn(3, 2, 4)
    with pytest.raises(ValueError, match="^mode: .*sum to 2"):
        mix_denoised([(1.0, a), (1.0, b)], x, torch.zeros(2, 1))
    # weights summing to 1 need no x term, so they stay defined there
    assert torch.equal(mix_denoised([(2.0, a), (-1.0, b)], x, torch.zeros(2, 1)), 2 * a - b)


@pytest.fixture(scope="module")
def tiny_files(comfy, tmp_path_factory):
    """A tiny random SD2-style UNet and a LoRA for it, registered in ComfyUI's diffusion_models and loras folders."""
    import folder_paths
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("poce_guider_models")
    g = torch.Generator().manual_seed(0)
    save_file(random_weights(tiny_unet(), g), str(root / MODEL_FILE))
    lora = {"up": torch.randn(320, LORA_RANK, generator=g) * 0.5, "down": torch.randn(LORA_RANK, 1024, generator=g) * 0.5}
    save_file({f"diffusion_model.{LORA_MODULE}.lora_up.weight": lora["up"],
               f"diffusion_model.{LORA_MODULE}.lora_down.weight": lora["down"],
               f"diffusion_model.{LORA_MODULE}.alpha": torch.tensor(LORA_ALPHA)}, str(root / LORA_FILE))
    registered = [("diffusion_models", str(root)), ("loras", str(root))]
    for name, path in registered:
        folder_paths.add_model_folder_path(name, path)
    yield root, lora
    for name, path in registered:
        folder_paths.folder_names_and_paths[name][0].remove(path)


def graph(flow: bool, runs: dict[str, tuple[str, int]]) -> dict:
    """An API prompt: tiny UNet (flow matching via ModelSamplingSD3 if ``flow``), three chained experts (expert 2
    with a hook LoRA on both its conditionings), and per run ``name: (mode, sigmas output)`` a PoCE guider in
    SamplerCustomAdvanced saved as a latent under ``poce_guider/name`` (sigmas output 0: all steps, 1: the last)."""
    model = ["2", 0] if flow else ["1", 0]
    prompt = {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": MODEL_FILE, "weight_dtype": "default"}},
        "2": {"class_type": "ModelSamplingSD3", "inputs": {"model": ["1", 0], "shift": 3.0}},
        "10": {"class_type": "LotusConditioning", "inputs": {}},
        "11": {"class_type": "ConditioningZeroOut", "inputs": {"conditioning": ["10", 0]}},
        "12": {"class_type": "ConditioningConcat", "inputs": {"conditioning_to": ["10", 0],
                                                               "conditioning_from": ["11", 0]}},
        "13": {"class_type": "ConditioningAverage", "inputs": {"conditioning_to": ["10", 0], "conditioning_from": ["11", 0],
                                                                "conditioning_to_strength": 0.5}},
        "14": {"class_type": "CreateHookLoraModelOnly", "inputs": {"lora_name": LORA_FILE, "strength_model": 1.0}},
        "15": {"class_type": "ConditioningSetProperties", "inputs": {"cond_NEW": ["12", 0], "strength": 1.0,
                                                                      "set_cond_area": "default", "hooks": ["14", 0]}},
        "16": {"class_type": "ConditioningSetProperties", "inputs": {"cond_NEW": ["11", 0], "strength": 1.0,
                                                                      "set_cond_area": "default", "hooks": ["14", 0]}},
        "20": {"class_type": "CoMEPoCEGuiderExpert", "inputs": {"model": model, "positive": ["10", 0],
                                                                 "null": ["11", 0], "alpha": ALPHAS[0]}},
        "21": {"class_type": "CoMEPoCEGuiderExpert", "inputs": {"model": model, "positive": ["15", 0], "null": ["16", 0],
                                                                 "alpha": ALPHAS[1], "previous": ["20", 0]}},
        "22": {"class_type": "CoMEPoCEGuiderExpert", "inputs": {"model": model, "positive": ["13", 0], "null": ["11", 0],
                                                                 "alpha": ALPHAS[2], "previous": ["21", 0]}},
        "30": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "euler"}},
        "31": {"class_type": "RandomNoise", "inputs": {"noise_seed": SEED}},
        "32": {"class_type": "BasicScheduler", "inputs": {"model": model, "scheduler": "simple", "steps": STEPS,
                                                           "denoise": 1.0}},
        "33": {"class_type": "SplitSigmas", "inputs": {"sigmas": ["32", 0], "step": STEPS - 1}},
        "34": {"class_type": "EmptyLatentImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1}},
    }
    for i, (name, (mode, sigmas)) in enumerate(runs.items()):
        guider, sampler, save = (str(100 + 3 * i + j) for j in range(3))
        prompt[guider] = {"class_type": "CoMEPoCEGuider", "inputs": {"experts": ["22", 0], "mode": mode}}
        prompt[sampler] = {"class_type": "SamplerCustomAdvanced", "inputs": {
            "noise": ["31", 0], "guider": [guider, 0], "sampler": ["30", 0],
            "sigmas": ["32", 0] if sigmas == 0 else ["33", 1], "latent_image": ["34", 0]}}
        prompt[save] = {"class_type": "SaveLatent", "inputs": {"samples": [sampler, 0],
                                                               "filename_prefix": f"poce_guider/{name}"}}
    return prompt


def direct_compositions(mappings, root, lora, flow: bool) -> dict[str, torch.Tensor]:
    """Per mode, what the guider must return after one euler step to sigma 0: the UNet evaluated per conditioning,
    composed in ε, as the latent SamplerCustomAdvanced outputs."""
    import comfy.sample
    import comfy.sd

    patcher = comfy.sd.load_diffusion_model(str(root / MODEL_FILE))
    if flow:
        patcher = mappings["ModelSamplingSD3"]().patch(patcher, 3.0)[0]
    base, ms = patcher.model, patcher.get_model_object("model_sampling")
    unet = base.diffusion_model
    sigma = mappings["BasicScheduler"]().get_sigmas(patcher, "simple", STEPS, 1.0)[0][STEPS - 1:STEPS]
    assert 0 < float(sigma) < float(ms.sigma_max)  # not the first sigma, so the sampler adds no max-denoise scaling
    noise = comfy.sample.prepare_noise(torch.zeros(1, 4, SIZE // 8, SIZE // 8), SEED)
    x = ms.noise_scaling(sigma, noise, torch.zeros_like(noise))

    text = mappings["LotusConditioning"].execute().args[0][0][0].float()
    zero = torch.zeros_like(text)
    weight = f"{LORA_MODULE}.weight"
    lora_weight = {weight: unet.get_parameter(weight) + LORA_ALPHA / LORA_RANK * lora["up"] @ lora["down"]}

    def denoised(context: torch.Tensor, params: dict | None = None) -> torch.Tensor:
        xc = ms.calculate_input(sigma, x)
        t = ms.timestep(sigma).float()
        with torch.no_grad():
            out = torch.func.functional_call(unet, params or {}, (xc, t), {"context": context})
        return ms.calculate_denoised(sigma, out.float(), x)

    mem = [denoised(text), denoised(torch.cat([text, zero], 1), lora_weight), denoised(0.5 * text)]
    null = [denoised(zero), denoised(zero, lora_weight), denoised(zero)]
    scale = ms.noise_scaling(sigma, torch.zeros_like(x), torch.ones_like(x))
    eps = [(x - scale * x0) / sigma for x0 in mem]
    eps_null = [(x - scale * x0) / sigma for x0 in null]
    return {mode: base.process_latent_out((x - sigma * eps_formula(mode, ALPHAS, eps, eps_null)) / scale)
            for mode in MODES}


@pytest.mark.parametrize("flow", [False, True], ids=["eps", "flow"])
def test_guider_in_the_executor_matches_the_direct_composition(comfy, tiny_files, flow, monkeypatch):
    import comfy.samplers as samplers

    mappings, out_dir = comfy
    root, lora = tiny_files
    calls = []
    original = samplers.calc_cond_batch
    monkeypatch.setattr(samplers, "calc_cond_batch", lambda model, conds, *a: calls.append(len(conds))
                        or original(model, conds, *a))
    tag = "flow" if flow else "eps"
    runs = {f"{tag}_{mode}": (mode, 1) for mode in MODES}
    if not flow:  # all steps from sigma max: the weights sum to 3 there, which an ε model allows
        runs["eps_all_steps"] = ("poce", 0)
    executor = execute_prompt(graph(flow, runs))
    assert executor.success, [d for ev, d in executor.status_messages if ev == "execution_error"]
    direct = direct_compositions(mappings, root, lora, flow)
    for name, (mode, _) in list(runs.items())[:len(MODES)]:
        got, expected = saved_latent(out_dir, f"poce_guider/{name}"), direct[mode]
        assert got.shape == expected.shape == (1, 4, SIZE // 8, SIZE // 8)
        assert torch.allclose(got, expected, atol=1e-4, rtol=1e-4), (name, (got - expected).abs().max())
    assert flow or torch.isfinite(saved_latent(out_dir, "poce_guider/eps_all_steps")).all()
    # one batched call per step for all of a run's terms; zero weights (poe's nulls, single's others) are skipped
    per_step = {"poce": 6, "poce_normalized": 6, "poe": 3, "single": 2}
    assert sorted(calls) == sorted([*per_step.values(), *([] if flow else [per_step["poce"]] * STEPS)])


def test_guider_poce_at_sigma_one_of_a_flow_model_is_an_error_naming_the_mode(comfy, tiny_files):
    executor = execute_prompt(graph(True, {"flow_full_poce": ("poce", 0)}))
    assert not executor.success
    error = next(d for ev, d in executor.status_messages if ev == "execution_error")
    assert error["node_type"] == "SamplerCustomAdvanced"
    assert error["exception_message"].startswith("mode:") and "sum to 3" in error["exception_message"]


@pytest.fixture(scope="module")
def guider_nodes(comfy):
    """The classes of PoCE Guider Expert and PoCE Guider."""
    mappings, _ = comfy
    return mappings["CoMEPoCEGuiderExpert"], mappings["CoMEPoCEGuider"]


def expert_inputs(model) -> dict:
    """Valid inputs of PoCE Guider Expert."""
    return {"model": model, "positive": [[torch.ones(1, 1, 8), {}]], "null": [[torch.zeros(1, 1, 8), {}]], "alpha": 2.0}


@pytest.fixture(scope="module")
def tiny_model(tiny_files):
    """The tiny UNet as a ComfyUI MODEL."""
    import comfy.sd
    return comfy.sd.load_diffusion_model(str(tiny_files[0] / MODEL_FILE))


@pytest.mark.parametrize("change, message", [
    ({"alpha": 0.5}, "^alpha: 0.5 is outside"),
    ({"alpha": math.nan}, "^alpha: expected a finite number"),
    ({"model": "not a model"}, "^model: expected a MODEL"),
    ({"positive": []}, r"^positive: expected a non-empty CONDITIONING .*\(empty\)"),
    ({"null": torch.zeros(1, 1, 8)}, "^null: expected a non-empty CONDITIONING"),
    ({"previous": ("x",)}, "^previous: expected experts from PoCE Guider Expert"),
])
def test_guider_expert_rejects_bad_input_naming_it(guider_nodes, tiny_model, change, message):
    expert, _ = guider_nodes
    with pytest.raises(ValueError, match=message):
        expert.execute(**{**expert_inputs(tiny_model), **change})


def test_guider_rejects_no_experts_an_unknown_mode_and_a_second_model(guider_nodes, tiny_model):
    expert, guider = guider_nodes
    experts = expert.execute(**expert_inputs(tiny_model)).args[0]
    for nothing in ((), None):
        with pytest.raises(ValueError, match="^experts: the guider has no expert"):
            guider.execute(experts=nothing, mode="poce")
    with pytest.raises(ValueError, match="^experts: expected experts from PoCE Guider Expert"):
        guider.execute(experts=[*experts], mode="poce")
    with pytest.raises(ValueError, match="^mode: 'cfg' is not one of the offered options"):
        guider.execute(experts=experts, mode="cfg")
    other = expert.execute(**{**expert_inputs(tiny_model.clone()), "previous": experts}).args[0]
    with pytest.raises(ValueError, match="^experts: expert 2's MODEL is not expert 1's.*Create Hook LoRA"):
        guider.execute(experts=other, mode="poce")
    assert guider.execute(experts=experts, mode="single").args[0].model_patcher is tiny_model


def test_guider_warns_that_the_models_cfg_patches_are_not_applied(guider_nodes, tiny_model, caplog):
    expert, guider = guider_nodes
    patched = tiny_model.clone()
    patched.set_model_sampler_post_cfg_function(lambda args: args["denoised"])
    experts = expert.execute(**expert_inputs(patched)).args[0]
    with caplog.at_level("WARNING"):
        guider.execute(experts=experts, mode="poce")
    assert "sampler_post_cfg_function" in caplog.text and "not applied" in caplog.text
