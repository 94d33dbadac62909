"""PoCE as a core GUIDER: experts given as (MODEL, positive, null conditioning, α) for SamplerCustomAdvanced."""
from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import comfy.model_patcher
import comfy.samplers
import torch
from comfy_api.latest import io

from ..memory.world.poce import MODES, mix_denoised, weights
from .experts import alpha_input
from .types import CATEGORY, GuiderExpertsType, check_options, check_widgets

SUBCATEGORY = f"{CATEGORY}/guiders"
# model patches that change CFG assume one positive/negative pair, which a PoCE composition does not have
CFG_PATCHES = ("sampler_cfg_function", "sampler_pre_cfg_function", "sampler_post_cfg_function",
               "sampler_calc_cond_batch_function")
# conditioning entries holding a latent the model concatenates to the sampled one (Wan I2V / Fun control and others)
LATENT_INPUTS = ("concat_latent_image",)


@dataclass(frozen=True)
class GuiderExpert:
    """One expert of the PoCE guider: its MODEL, its conditioning with and without its memory, and its α."""

    model: comfy.model_patcher.ModelPatcher
    positive: list
    null: list
    alpha: float


def check_conditioning(value: object, name: str) -> list:
    """``value`` if it is a non-empty CONDITIONING (a list of [tensor or None, dict] pairs), else a ValueError naming ``name``."""
    if not isinstance(value, list) or not value or not all(
            isinstance(c, (list, tuple)) and len(c) == 2 and (c[0] is None or isinstance(c[0], torch.Tensor))
            and isinstance(c[1], dict) for c in value):
        raise ValueError(f"{name}: expected a non-empty CONDITIONING (e.g. from CLIP Text Encode), "
                         f"got {type(value).__name__}{' (empty)' if isinstance(value, list) and not value else ''}.")
    return value


def check_experts(value: object, name: str, allow_empty: bool = False) -> tuple[GuiderExpert, ...]:
    """``value`` (None = none) as a tuple of guider experts on one model, else a ValueError naming ``name``."""
    experts = () if value is None else value
    if not isinstance(experts, tuple) or not all(isinstance(e, GuiderExpert) for e in experts):
        raise ValueError(f"{name}: expected experts from PoCE Guider Expert, got {type(value).__name__}.")
    if not experts and not allow_empty:
        raise ValueError(f"{name}: the guider has no expert; connect a PoCE Guider Expert.")
    for k, expert in enumerate(experts[1:], start=2):
        if expert.model is not experts[0].model:
            raise ValueError(f"{name}: expert {k}'s MODEL is not expert 1's. The guider runs every expert on one "
                             "model: wire the same MODEL output into every expert, and give an expert its own LoRA "
                             "on its conditioning (Create Hook LoRA + Cond Set Props on its positive and null).")
    return experts


def check_latent_sizes(latent_inputs: Sequence[tuple[str, str, tuple]], shape: tuple) -> None:
    """ValueError naming the expert whose concatenated latent (start frames, control video) differs in size from the sampled ``shape``."""
    for key, name, found in latent_inputs:
        if found[2:] != shape[2:]:
            expert, k = key.split("_")
            side = "positive" if expert == "expert" else "null"
            raise ValueError(f"experts: expert {k}'s {side} conditioning carries a {name} of size {list(found[2:])} "
                             f"(frames, height, width), the latent being sampled is {list(shape[2:])}; give every "
                             "expert's start frames or control video the latent's width, height and length (e.g. "
                             "the same sizes in WanImageToVideo and the empty latent).")


class PoCEGuider(comfy.samplers.CFGGuider):
    """Composes the experts' denoised predictions with a PoCE mode; every expert runs on the first expert's model.

    ComfyUI's samplers take the denoised x0 from a guider, so the ε mixture of the mode is converted to
    x0 at the sampler's noisy x (``mix_denoised``) with the x0 coefficient of the model's own noise
    scaling (1 for ε and v models, 1 − σ for flow matching). All terms go through one
    ``calc_cond_batch``, which batches the conditionings and runs hooked ones (hook LoRAs) with their
    own weights.
    """

    def __init__(self, experts: Sequence[GuiderExpert], mode: str):
        w_memory, w_null = weights(mode, [e.alpha for e in experts])
        super().__init__(experts[0].model)
        conds, self.terms = {}, []
        for k, (expert, w, w0) in enumerate(zip(experts, w_memory, w_null), start=1):
            # the null memory plays the unconditional part; models that read prompt_type treat it as a negative
            null = [[c, {"prompt_type": "negative", **d}] for c, d in expert.null]
            for key, cond, weight in ((f"expert_{k}", expert.positive, w), (f"null_{k}", null, w0)):
                if weight != 0:  # a zero weight (single, poe) costs no evaluation
                    conds[key] = cond
                    self.terms.append((key, weight))
        self.inner_set_conds(conds)
        # latents that conditionings concatenate to the sampled one (start frames, control video) must match it
        self.latent_inputs = [(key, name, tuple(d[name].shape)) for key, cond in conds.items() for _, d in cond
                              for name in LATENT_INPUTS if isinstance(d.get(name), torch.Tensor)]
        ignored = [k for k in CFG_PATCHES if k in self.model_options]
        if ignored:
            logging.warning("CoME PoCE Guider: the model's CFG patches (%s) are not applied; they are written for one "
                            "positive/negative pair.", ", ".join(ignored))

    def predict_noise(self, x: torch.Tensor, timestep: torch.Tensor, model_options: dict | None = None,
                      seed: int | None = None) -> torch.Tensor:
        """The composed denoised prediction at noisy ``x`` and sigma ``timestep``."""
        check_latent_sizes(self.latent_inputs, tuple(x.shape))
        keys, ws = zip(*self.terms)
        out = comfy.samplers.calc_cond_batch(self.inner_model, [self.conds[k] for k in keys], x, timestep,
                                             model_options or {})
        x0_scale = self.inner_model.model_sampling.noise_scaling(timestep, torch.zeros_like(x), torch.ones_like(x))
        return mix_denoised(list(zip(ws, out)), x, x0_scale)


class PoCEGuiderExpert(io.ComfyNode):
    """One expert for the PoCE Guider: a model with conditioning with and without its memory."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CoMEPoCEGuiderExpert", display_name="PoCE Guider Expert (CoME)", category=SUBCATEGORY,
            description="An expert for the PoCE Guider: `positive` is the conditioning with the expert's memory "
            "(e.g. start frames, a rendered mosaic as control or reference frames), `null` the same without it. "
            "Chain experts through `previous` for any number. Every expert of a guider must use the same MODEL; "
            "give one expert its own LoRA through its conditioning (Create Hook LoRA + Cond Set Props on both "
            "positive and null).",
            inputs=[io.Model.Input("model", tooltip="The model; the same MODEL output for every expert of a guider."),
                    io.Conditioning.Input("positive", tooltip="Conditioning with the expert's memory."),
                    io.Conditioning.Input("null", tooltip="The same conditioning with the memory removed (the null "
                                          "memory), e.g. the empty prompt or Conditioning Zero Out."),
                    alpha_input(),
                    GuiderExpertsType.Input("previous", optional=True,
                                            tooltip="Experts chained before this one (single mode uses the first).")],
            outputs=[GuiderExpertsType.Output("experts", display_name="experts",
                                              tooltip="The chained experts, for PoCE Guider or the next expert.")])

    @classmethod
    def execute(cls, model: comfy.model_patcher.ModelPatcher, positive: list, null: list, alpha: float,
                previous: tuple[GuiderExpert, ...] | None = None) -> io.NodeOutput:
        check_widgets(cls, alpha=alpha)
        if not isinstance(model, comfy.model_patcher.ModelPatcher):
            raise ValueError(f"model: expected a MODEL (e.g. from Load Checkpoint), got {type(model).__name__}.")
        expert = GuiderExpert(model, check_conditioning(positive, "positive"), check_conditioning(null, "null"),
                              float(alpha))
        return io.NodeOutput((*check_experts(previous, "previous", allow_empty=True), expert))


class PoCEGuiderNode(io.ComfyNode):
    """A GUIDER for SamplerCustomAdvanced that composes guider experts with a PoCE mode."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="CoMEPoCEGuider", display_name="PoCE Guider (CoME)", category=SUBCATEGORY,
            description="Composes the experts at every sampling step of SamplerCustomAdvanced, in ε as PoCE Combine: "
            "poce (paper): Σ α·ε + (1−α)·ε_null; poce_normalized: one shared prior + Σ α(ε − ε_null); poe: Σ ε; "
            "single: the first expert alone. All conditionings go through one batched model call per step. poce "
            "with several experts and poe weight ε by more than 1 in total, which on a flow-matching model has no "
            "clean estimate at sigma 1 (an error names it): there use poce_normalized, or sigmas starting below 1. "
            "The model's CFG patches (e.g. RescaleCFG) are not applied.",
            inputs=[GuiderExpertsType.Input("experts", tooltip="The experts (from PoCE Guider Expert)."),
                    io.Combo.Input("mode", options=list(MODES), default="poce",
                                   tooltip="How the experts' scores are combined.")],
            outputs=[io.Guider.Output("guider", display_name="guider",
                                      tooltip="The guider, for SamplerCustomAdvanced.")])

    @classmethod
    def execute(cls, experts: tuple[GuiderExpert, ...], mode: str) -> io.NodeOutput:
        check_options(cls, mode=mode)
        return io.NodeOutput(PoCEGuider(check_experts(experts, "experts"), mode))
