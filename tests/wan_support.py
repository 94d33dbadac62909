"""Tiny random Wan folders of the real diffusers classes, for the tests of the Wan route."""
from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan, FlowMatchEulerDiscreteScheduler, WanTransformer3DModel
from safetensors.torch import save_file

from memory.world.backbones.wan import TEXT_EMBEDDINGS

Z = 4  # latent channels of the tiny VAE
TEXT_DIM = 16


def write_wan_folder(folder, image_to_video: bool = True, scheduler=None, seed: int = 0):
    """A diffusers Wan folder of tiny random real classes: transformer/, vae/, scheduler/ and text embeddings."""
    torch.manual_seed(seed)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=2 * Z + 4 if image_to_video else Z,
        out_channels=Z, text_dim=TEXT_DIM, freq_dim=32, ffn_dim=48, num_layers=2, rope_max_seq_len=64)
    vae = AutoencoderKLWan(base_dim=8, z_dim=Z, dim_mult=[1, 2, 2, 2], num_res_blocks=1,
                           latents_mean=[0.1, -0.2, 0.0, 0.3], latents_std=[1.5, 0.8, 1.0, 1.2])
    transformer.save_pretrained(folder / "transformer")
    vae.save_pretrained(folder / "vae")
    (scheduler or FlowMatchEulerDiscreteScheduler(shift=3.0)).save_pretrained(folder / "scheduler")
    save_file({"prompt_embeds": torch.randn(6, TEXT_DIM)}, str(folder / TEXT_EMBEDDINGS))
    return folder
