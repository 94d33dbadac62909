"""The PoCE guider refuses experts whose concatenated latents (start frames, control video) differ from the sampled latent."""
from __future__ import annotations

import sys

import pytest
import torch


@pytest.fixture(scope="module")
def guider_module(comfy):
    """nodes/poce_guider.py as ComfyUI imported it."""
    package = comfy[0]["CoMEPoCEGuider"].__module__.split(".")[0]
    return sys.modules[f"{package}.nodes.poce_guider"]


def test_a_start_frame_latent_of_another_size_is_refused_naming_the_expert(guider_module):
    video = (1, 16, 5, 8, 8)
    fine = [("expert_1", "concat_latent_image", (1, 16, 5, 8, 8)), ("null_1", "concat_latent_image", (1, 16, 5, 8, 8))]
    guider_module.check_latent_sizes(fine, video)  # channels may differ from the latent's, sizes may not
    guider_module.check_latent_sizes([("expert_1", "concat_latent_image", (1, 20, 5, 8, 8))], video)
    with pytest.raises(ValueError, match=r"expert 2's null conditioning .*\[5, 8, 6\].*\[5, 8, 8\]"):
        guider_module.check_latent_sizes(fine + [("null_2", "concat_latent_image", (1, 16, 5, 8, 6))], video)
    with pytest.raises(ValueError, match=r"expert 1's positive"):
        guider_module.check_latent_sizes([("expert_1", "concat_latent_image", (1, 16, 3, 8, 8))], video)


def test_the_guider_checks_the_concatenated_latents_of_every_weighted_conditioning(guider_module):
    from types import SimpleNamespace

    model = SimpleNamespace(model_options={})  # the guider reads only the options until it samples
    text = torch.zeros(1, 4, 8)
    start = {"concat_latent_image": torch.zeros(1, 16, 5, 8, 8)}
    odd = {"concat_latent_image": torch.zeros(1, 16, 5, 8, 6)}
    guider = guider_module.PoCEGuider([guider_module.GuiderExpert(model, [[text, start]], [[text, {}]], 2.0),
                                       guider_module.GuiderExpert(model, [[text, odd]], [[text, {}]], 2.0)], "poce")
    assert [(key, name) for key, name, _ in guider.latent_inputs] == [("expert_1", "concat_latent_image"),
                                                                      ("expert_2", "concat_latent_image")]
    with pytest.raises(ValueError, match="expert 2's positive"):
        guider.predict_noise(torch.zeros(1, 16, 5, 8, 8), torch.ones(1))
    single = guider_module.PoCEGuider([guider_module.GuiderExpert(model, [[text, start]], [[text, {}]], 1.0),
                                       guider_module.GuiderExpert(model, [[text, odd]], [[text, {}]], 2.0)], "single")
    assert [key for key, _, _ in single.latent_inputs] == ["expert_1"]  # an unweighted expert is never evaluated
