"""Wan 2.1 / 2.2 through diffusers as a world-model backbone: a local folder's transformer, VAE, scheduler and text embeddings.

A folder as diffusers writes it (``WanPipeline.save_pretrained`` or the Wan-AI ``*-Diffusers`` repositories)
under ComfyUI's ``models/world_models/``: ``transformer/`` (``WanTransformer3DModel``), ``vae/``
(``AutoencoderKLWan``), ``scheduler/`` (its own flow-matching scheduler) and the prompt's text embeddings,
precomputed in ``text_embeddings.safetensors`` (``prompt_embeds`` [L, text_dim], and ``image_embeds``
[N, image_dim] for transformers with an image projection), or encoded at load time from ``prompt.txt``
by the folder's own ``text_encoder/`` (UMT5) and ``tokenizer/`` through ``WanPipeline.encode_prompt``.

Memories reach the transformer as an image-to-video model reads its start frame: the conditioning
video (latents of the chunk's first frame, then the mosaic the memory renders for each target camera)
with a coverage mask, concatenated to the noisy latents (``in_channels`` = 2·z + 4: Wan 2.1 I2V, VACE-free
Fun-Control style). A text-to-video transformer (``in_channels`` = z) never read mosaics, so memories
guide its clean estimate toward the encoded mosaic where the mask covers (training-free).
One latent pixel is one VAE cell; one transformer token is ``patch_size`` cells, the patch memory's patch.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from safetensors import SafetensorError
from safetensors.torch import load_file

from ...limits import MAX_JSON_CHARS, parse_json

TEXT_EMBEDDINGS = "text_embeddings.safetensors"
PROMPT_FILE = "prompt.txt"  # the prompt a folder's own text encoder encodes at load time
MAX_PROMPT_CHARS = 10_000
# schedulers whose sigmas are flow-matching noise levels (x = (1 − σ)·x0 + σ·ε), as Wan's folders ship them
FLOW_SCHEDULERS = ("FlowMatchEulerDiscreteScheduler", "UniPCMultistepScheduler", "DPMSolverMultistepScheduler")
MASK_CHANNELS = 4  # the start-frame mask, one channel per frame a latent frame folds in (Wan I2V)


@dataclass(frozen=True)
class WanWorldModel:
    """A loaded Wan backbone (the value behind COME_WORLD_MODEL when the folder holds a Wan pipeline)."""

    transformer: WanTransformer3DModel
    vae: AutoencoderKLWan
    scheduler_config: dict
    prompt_embeds: torch.Tensor
    image_embeds: torch.Tensor | None
    name: str

    @property
    def latent_channels(self) -> int:
        """Channels of one latent frame (the VAE's z)."""
        return int(self.vae.config.z_dim)

    @property
    def reads_mosaics(self) -> bool:
        """Whether the transformer takes a conditioning video and mask beside its latents (image-to-video)."""
        return int(self.transformer.config.in_channels) == 2 * self.latent_channels + MASK_CHANNELS

    @property
    def spatial_scale(self) -> int:
        """Pixels per latent pixel."""
        return int(self.vae.config.scale_factor_spatial or 8)

    @property
    def temporal_scale(self) -> int:
        """Frames per latent frame (after the first, which is one frame)."""
        return int(self.vae.config.scale_factor_temporal or 4)

    @property
    def token_pixels(self) -> int:
        """Side of one transformer token in pixels: the patch memory's patch size on this backbone."""
        return self.spatial_scale * int(self.transformer.config.patch_size[1])

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the transformer computes in."""
        return self.transformer.patch_embedding.weight.dtype  # norms and time embedding stay float32 in diffusers

    @property
    def vae_device(self) -> torch.device:
        """The device the VAE computes on (where it was loaded; ComfyUI manages the transformer)."""
        return next(self.vae.parameters()).device

    @property
    def device(self) -> torch.device:
        """The device the transformer lives on."""
        return next(self.transformer.parameters()).device

    def scheduler(self):
        """A fresh instance of the folder's own scheduler (schedulers keep state while sampling)."""
        return getattr(diffusers, self.scheduler_config["_class_name"]).from_config(self.scheduler_config)


def is_wan_folder(folder: str | Path) -> bool:
    """Whether ``folder`` is laid out as a diffusers Wan pipeline (a transformer/ subfolder with a config)."""
    return (Path(folder) / "transformer" / "config.json").is_file()


def _component_config(folder: Path, sub: str, allowed: tuple[str, ...]) -> dict:
    """The config of ``folder/sub``, refused unless its ``_class_name`` is one of ``allowed``."""
    path = folder / sub / ("scheduler_config.json" if sub == "scheduler" else "config.json")
    if not path.is_file():
        raise ValueError(f"model: {folder} has no {sub}/{path.name}; a Wan folder holds transformer/, vae/ and "
                         "scheduler/ as diffusers saves them (WanPipeline.save_pretrained).")
    if path.stat().st_size > MAX_JSON_CHARS:
        raise ValueError(f"model: {path} is larger than {MAX_JSON_CHARS} bytes, not a config; restore the file.")
    config = parse_json(path.read_text(errors="replace"), f"model: {path}")
    if not isinstance(config, dict) or config.get("_class_name") not in allowed:
        found = config.get("_class_name") if isinstance(config, dict) else type(config).__name__
        raise ValueError(f"model: {path} describes a '{found}'; this loader reads {' or '.join(allowed)} there "
                         "(Wan 2.1 / 2.2 diffusers folders).")
    return config


def _encoded_prompt(folder: Path, transformer: WanTransformer3DModel, vae: AutoencoderKLWan,
                    scheduler: dict) -> dict[str, torch.Tensor]:
    """The prompt of ``folder/prompt.txt`` encoded by the folder's own text encoder and tokenizer (WanPipeline.encode_prompt)."""
    prompt_file = folder / PROMPT_FILE
    if not prompt_file.is_file():
        raise ValueError(f"model: {folder} has a text encoder but no {PROMPT_FILE}; write the prompt there (or save "
                         f"its embeddings as {TEXT_EMBEDDINGS}).")
    prompt = prompt_file.read_text(errors="replace")[:MAX_PROMPT_CHARS]
    try:
        from transformers import AutoTokenizer, UMT5EncoderModel

        pipeline = diffusers.WanPipeline(tokenizer=AutoTokenizer.from_pretrained(folder / "tokenizer"),
                                         text_encoder=UMT5EncoderModel.from_pretrained(folder / "text_encoder"),
                                         transformer=transformer, vae=vae,
                                         scheduler=getattr(diffusers, scheduler["_class_name"]).from_config(scheduler))
        with torch.no_grad():
            embeds, _ = pipeline.encode_prompt(prompt, do_classifier_free_guidance=False, device=torch.device("cpu"))
    except (OSError, ValueError, RuntimeError, ImportError) as err:
        raise ValueError(f"model: the text encoder or tokenizer in {folder} could not encode {PROMPT_FILE} ({err}); "
                         f"use the folders of the Wan pipeline, or save the embeddings as {TEXT_EMBEDDINGS}.") from None
    return {"prompt_embeds": embeds[0].float()}


def _embeddings(folder: Path, transformer: WanTransformer3DModel, vae: AutoencoderKLWan,
                scheduler: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The prompt (and image) embeddings of ``folder``, precomputed or encoded here, checked against the transformer's widths."""
    path = folder / TEXT_EMBEDDINGS
    if path.is_file():
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError, RuntimeError) as err:
            raise ValueError(f"model: {path} is not a readable safetensors file ({err}); restore it.") from None
    elif (folder / "text_encoder" / "config.json").is_file():
        tensors = _encoded_prompt(folder, transformer, vae, scheduler)
    else:
        raise ValueError(f"model: {folder} has no {TEXT_EMBEDDINGS} and no text_encoder/; save the prompt's "
                         "embeddings there (prompt_embeds [tokens, text_dim], from the pipeline's encode_prompt), or "
                         f"add the pipeline's text_encoder/ and tokenizer/ and a {PROMPT_FILE}.")
    text = tensors.get("prompt_embeds")
    width = int(transformer.config.text_dim)
    if text is None or text.ndim != 2 or text.shape[1] != width or not text.is_floating_point():
        raise ValueError(f"model: {path} must hold 'prompt_embeds' of shape [tokens, {width}] (the transformer's "
                         f"text_dim), got {None if text is None else list(text.shape)}.")
    image = tensors.get("image_embeds")
    image_dim = transformer.config.image_dim
    if image_dim and (image is None or image.ndim != 2 or image.shape[1] != image_dim):
        raise ValueError(f"model: the transformer projects image embeddings (image_dim {image_dim}), so {path} must "
                         f"hold 'image_embeds' of shape [tokens, {image_dim}] (the CLIP image encoder's output).")
    for key, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise ValueError(f"model: {path} tensor '{key}' holds NaN or inf; compute the embeddings again.")
    return text[None], (image[None] if image_dim else None)


def load_wan_world_model(folder: str | Path, dtype: torch.dtype = torch.float32,
                         device: str | torch.device = "cpu") -> WanWorldModel:
    """A Wan backbone from a diffusers folder; folders of other classes, without embeddings or weights are refused."""
    folder = Path(folder)
    _component_config(folder, "transformer", (WanTransformer3DModel.__name__,))
    _component_config(folder, "vae", (AutoencoderKLWan.__name__,))
    scheduler = _component_config(folder, "scheduler", FLOW_SCHEDULERS)
    if scheduler["_class_name"] != "FlowMatchEulerDiscreteScheduler" and not scheduler.get("use_flow_sigmas"):
        raise ValueError(f"model: {folder}/scheduler is a {scheduler['_class_name']} without use_flow_sigmas; Wan "
                         "predicts flow-matching velocities, so its scheduler must use flow sigmas.")
    try:
        transformer = WanTransformer3DModel.from_pretrained(folder / "transformer", torch_dtype=dtype)
        # the VAE stays float32 on the CPU side of precision: its decode is where fp16 overflows
        vae = AutoencoderKLWan.from_pretrained(folder / "vae", torch_dtype=torch.float32)
    except (OSError, ValueError, RuntimeError, json.JSONDecodeError) as err:
        raise ValueError(f"model: {folder} could not be loaded as a Wan pipeline ({err}).") from None
    if int(transformer.config.out_channels) != int(vae.config.z_dim):
        raise ValueError(f"model: the transformer predicts {transformer.config.out_channels} channels, the VAE has "
                         f"{vae.config.z_dim} latent channels; keep the transformer and VAE of one pipeline together.")
    in_channels, z = int(transformer.config.in_channels), int(vae.config.z_dim)
    if in_channels not in (z, 2 * z + MASK_CHANNELS):
        raise ValueError(f"model: the transformer reads {in_channels} channels; supported are text-to-video ({z}) and "
                         f"image-to-video ({2 * z + MASK_CHANNELS} = latents + start-frame mask + conditioning video).")
    prompt, image = _embeddings(folder, transformer, vae, scheduler)
    return WanWorldModel(transformer.to(device).eval(), vae.to(device).eval(), dict(scheduler), prompt, image,
                         folder.name)


def encode_video(model: WanWorldModel, rgb: torch.Tensor) -> torch.Tensor:
    """Normalised latents [1,z,T',h,w] of frames rgb [F,H,W,3] in 0..1 (F = 1 + temporal_scale·k)."""
    video = (rgb.float().permute(3, 0, 1, 2)[None] * 2 - 1).to(model.vae_device)
    with torch.no_grad():
        latents = model.vae.encode(video).latent_dist.mode()
    mean, inv_std = _latent_stats(model, latents)
    return ((latents - mean) * inv_std).float().cpu()


def decode_video(model: WanWorldModel, latents: torch.Tensor) -> torch.Tensor:
    """Frames rgb [F,H,W,3] in 0..1 of normalised latents [1,z,T',h,w]."""
    mean, inv_std = _latent_stats(model, latents)
    with torch.no_grad():
        video = model.vae.decode((latents.to(model.vae_device) / inv_std + mean).float()).sample
    return ((video[0].float().clamp(-1, 1) + 1) / 2).permute(1, 2, 3, 0).cpu()


def _latent_stats(model: WanWorldModel, latents: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE's per-channel latent mean and inverse std, shaped to broadcast over [1,z,T',h,w]."""
    shape = (1, model.latent_channels, 1, 1, 1)
    config = model.vae.config
    mean = torch.tensor(config.latents_mean, dtype=torch.float32).view(shape).to(model.vae_device)
    inv_std = 1.0 / torch.tensor(config.latents_std, dtype=torch.float32).view(shape).to(model.vae_device)
    return mean, inv_std


def transformer_inputs(model: WanWorldModel, latents: torch.Tensor, sigma: torch.Tensor | float,
                       condition: torch.Tensor | None, dtype: torch.dtype | None = None) -> tuple[tuple, dict]:
    """Positional and keyword inputs of one transformer forward on latents [B,z,T',h,w] at flow noise level ``sigma`` (0..1).

    ``condition`` [B, 4 + z, T', h, w] (mask + conditioning video) is concatenated for image-to-video
    transformers; text-to-video ones read none. ``dtype`` defaults to the transformer's.
    """
    batch = len(latents)
    sample = latents if condition is None or not model.reads_mosaics else torch.cat([latents, condition], 1)
    # Wan embeds timesteps as noise level x 1000, in float32
    timestep = (torch.as_tensor(sigma, dtype=torch.float32) * 1000).expand(batch).to(model.device)
    as_net = dict(device=model.device, dtype=dtype or model.dtype)
    image = None if model.image_embeds is None else model.image_embeds.expand(batch, -1, -1).to(**as_net)
    text = model.prompt_embeds.expand(batch, -1, -1).to(**as_net)
    return (sample.to(**as_net), timestep, text), {"encoder_hidden_states_image": image, "return_dict": False}
