"""MosaicDiT: the embedded default world model, a small RGB-D video diffusion transformer conditioned on mosaics.

Geometry first: the network is not asked to learn 3D motion; it predicts a correction of the mosaic's
RGB-D (holes pre-filled by repeating the latest frame). Each frame's tokens carry, pixel-aligned,
the noisy RGB-D, the mosaic (known frames warped into this camera: RGB-D + coverage masks) and the
camera's Plücker rays relative to a reference camera; the network fills what the mosaic does not cover,
repairs warping artefacts and predicts depth. Frames have their own noise levels (context frames clean,
or fully noised for the "null memory"), and extra clean mosaic tokens may be appended with fractional
(warped) 3D RoPE positions, the interface real backbones take the same memory through.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..mosaic import MOSAIC_CHANNELS

RGBD_CHANNELS = 4
RAY_CHANNELS = 6


def rope_angles(positions: torch.Tensor, dims: tuple[int, int, int], theta: float) -> torch.Tensor:
    """Rotation angles [B,N,sum(dims)/2] for 3D positions [B,N,3] (frame, row, column; fractional allowed)."""
    parts = []
    for axis, dim in enumerate(dims):
        inv_freq = theta ** (-torch.arange(0, dim, 2, dtype=torch.float32, device=positions.device) / dim)
        parts.append(positions[..., axis:axis + 1].float() * inv_freq)
    return torch.cat(parts, -1)


def apply_rope(x: torch.Tensor, rotation: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate feature pairs of x [B,heads,N,D] by (cos, sin) [B,1,N,D/2] of the RoPE angles."""
    cos, sin = rotation
    even, odd = x[..., 0::2], x[..., 1::2]
    return torch.stack([even * cos - odd * sin, even * sin + odd * cos], -1).flatten(-2)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding [...,dim] of (possibly fractional) timesteps [...]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[..., None] * freqs
    return torch.cat([args.cos(), args.sin()], -1)


class Block(nn.Module):
    """Transformer block with adaLN-zero modulation per noise level (each frame's own), broadcast to its tokens."""

    def __init__(self, hidden: int, heads: int, rope_dims: tuple[int, int, int]):
        super().__init__()
        self.heads, self.rope_dims = heads, rope_dims
        self.norm1 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(hidden, 3 * hidden)
        self.proj = nn.Linear(hidden, hidden)
        self.norm2 = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.fc1 = nn.Linear(hidden, 4 * hidden)
        self.fc2 = nn.Linear(4 * hidden, hidden)
        self.modulation = nn.Linear(hidden, 6 * hidden)
        nn.init.zeros_(self.modulation.weight)
        nn.init.zeros_(self.modulation.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, groups: torch.Tensor,
                rotation: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """x [B,N,hidden]; cond [B,G,hidden] per noise level, ``groups`` [N] each token's level; RoPE (cos, sin) [B,1,N,D/2]."""
        # tokens of one frame share a noise level: modulate once per level, not once per token
        shift1, scale1, gate1, shift2, scale2, gate2 = self.modulation(F.silu(cond))[:, groups].chunk(6, -1)
        h = self.norm1(x) * (1 + scale1) + shift1
        b, n, c = h.shape
        q, k, v = self.qkv(h).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k = apply_rope(q, rotation), apply_rope(k, rotation)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
        x = x + gate1 * self.proj(attn)
        h = self.norm2(x) * (1 + scale2) + shift2
        return x + gate2 * self.fc2(F.gelu(self.fc1(h), approximate="tanh"))


class MosaicDiT(ModelMixin, ConfigMixin):
    """Predicts the clean RGB-D of every frame of a chunk from noisy frames, per-frame noise levels, mosaics and rays.

    Its config also declares what it was trained to read, so every caller builds the same inputs:
    ``context_frames`` clean frames before each chunk, and a mosaic warped from the latest
    ``mosaic_frames`` frames (1 for the embedded model: warping older frames too measured 1 dB worse,
    from their stale view-dependent shading). ``generated_confidence`` is the coverage value a mosaic
    carries where it shows a generated frame rather than an observed one (1: no distinction), so the
    network can keep observed geometry and repair its own frames. ``variance_channels`` > 0 adds a
    head that predicts the log-variance of the clean estimate (one map per RGB-D channel, or one shared
    by all), trained by Gaussian likelihood on the frozen network: how sure the prediction is, which
    PoCE needs to weigh experts against each other (``poce.gaussian_product``). ``refiner_channels`` > 0
    adds a convolutional refiner at full resolution after the patch decoder (as U-ViT's last 3x3 conv):
    each 8x8 patch is decoded by one linear map from features that hold the noisy frame only through a
    linear patch embedding, so it can neither see across patch borders nor remove pixel-level noise;
    three 3x3 convolutions over the estimate, the mosaic, the noisy frame and its noise level can.
    """

    @register_to_config
    def __init__(self, patch_size: int = 8, hidden_size: int = 128, depth: int = 4, num_heads: int = 4,
                 rope_dims: tuple[int, int, int] = (8, 12, 12), rope_theta: float = 100.0,
                 num_train_timesteps: int = 1000, context_frames: int = 2, mosaic_frames: int = 1,
                 generated_confidence: float = 1.0, variance_channels: int = 0, refiner_channels: int = 0):
        super().__init__()
        head_dim = hidden_size // num_heads
        if sum(rope_dims) != head_dim or any(d % 2 for d in rope_dims):
            raise ValueError(f"rope_dims {rope_dims} must be even and sum to the head size {head_dim}.")
        p2 = patch_size * patch_size
        self.embed = nn.Linear((RGBD_CHANNELS + MOSAIC_CHANNELS + RAY_CHANNELS) * p2, hidden_size)
        self.token_embed = nn.Linear(RGBD_CHANNELS * p2, hidden_size)
        self.time_mlp = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.SiLU(), nn.Linear(hidden_size, hidden_size))
        self.blocks = nn.ModuleList(Block(hidden_size, num_heads, tuple(rope_dims)) for _ in range(depth))
        self.norm_out = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.out_modulation = nn.Linear(hidden_size, 2 * hidden_size)
        self.out = nn.Linear(hidden_size, RGBD_CHANNELS * p2)
        zeroed = [self.out_modulation, self.out]
        if variance_channels:
            if RGBD_CHANNELS % variance_channels:
                raise ValueError(f"variance_channels {variance_channels} must divide the {RGBD_CHANNELS} RGB-D channels.")
            self.variance = nn.Sequential(nn.Linear(hidden_size, hidden_size), nn.SiLU(),
                                          nn.Linear(hidden_size, variance_channels * p2))
            zeroed.append(self.variance[2])
        if refiner_channels:
            self.refiner = nn.Sequential(
                nn.Conv2d(2 * RGBD_CHANNELS + MOSAIC_CHANNELS + 1, refiner_channels, 3, padding=1), nn.SiLU(),
                nn.Conv2d(refiner_channels, refiner_channels, 3, padding=1), nn.SiLU(),
                nn.Conv2d(refiner_channels, RGBD_CHANNELS, 3, padding=1))
            # zero-initialised like the decoder: a refiner added to trained weights starts as the identity
            zeroed.append(self.refiner[4])
        for layer in zeroed:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """[B,F,C,H,W] -> tokens [B,F*h*w,C*p*p] (frame-major, then rows, then columns)."""
        p = self.config.patch_size
        b, f, c, h, w = x.shape
        x = x.reshape(b, f, c, h // p, p, w // p, p).permute(0, 1, 3, 5, 2, 4, 6)
        return x.reshape(b, f * (h // p) * (w // p), c * p * p)

    def unpatchify(self, tokens: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
        """Tokens [B,F*h*w,C*p*p] -> [B,F,C,H,W]."""
        p = self.config.patch_size
        b = tokens.shape[0]
        h, w = height // p, width // p
        x = tokens.reshape(b, frames, h, w, -1, p, p).permute(0, 1, 4, 2, 5, 3, 6)
        return x.reshape(b, frames, -1, height, width)

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor, mosaic: torch.Tensor, rays: torch.Tensor,
                mosaic_tokens: torch.Tensor | None = None, mosaic_positions: torch.Tensor | None = None,
                with_variance: bool = False) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Clean RGB-D [B,F,4,H,W] predicted from ``sample`` [B,F,4,H,W], ``timesteps`` [B,F], ``mosaic`` [B,F,6,H,W],
        ``rays`` [B,F,6,H,W]; optional clean ``mosaic_tokens`` [B,M,4*p*p] at ``mosaic_positions`` [B,M,3]
        (frame, token row, token column; fractional allowed). ``with_variance``: also its log-variance
        [B,F,variance_channels,H,W] (needs the variance head)."""
        b, f, _, height, width = sample.shape
        p = self.config.patch_size
        if height % p or width % p:
            raise ValueError(f"sample: height and width must be multiples of the patch size {p}, got {height}x{width}.")
        h, w = height // p, width // p
        x = self.embed(self.patchify(torch.cat([sample, mosaic, rays], 2)))
        grid = torch.stack(torch.meshgrid(torch.arange(f), torch.arange(h), torch.arange(w), indexing="ij"), -1)
        positions = grid.reshape(1, -1, 3).float().expand(b, -1, -1).to(x.device)
        # one noise level per frame (clean mosaic tokens: level 0) and each token's index into them
        levels = timesteps.float().to(x.device)
        groups = torch.arange(f, device=x.device).repeat_interleave(h * w)
        if mosaic_tokens is not None:
            if mosaic_positions is None or mosaic_positions.shape[:2] != mosaic_tokens.shape[:2]:
                raise ValueError("mosaic_positions: give one (frame, row, column) position per mosaic token.")
            x = torch.cat([x, self.token_embed(mosaic_tokens)], 1)
            positions = torch.cat([positions, mosaic_positions.float()], 1)
            levels = torch.cat([levels, torch.zeros(b, 1, device=x.device)], 1)
            groups = torch.cat([groups, torch.full((mosaic_tokens.shape[1],), f, device=x.device)])
        # the embedding is computed in float32 for precision, then runs in the weights' dtype (bf16/fp16 too)
        cond = self.time_mlp(timestep_embedding(levels, self.config.hidden_size).to(x.dtype))
        angles = rope_angles(positions, tuple(self.config.rope_dims), self.config.rope_theta)[:, None]
        rotation = (angles.cos().to(x.dtype), angles.sin().to(x.dtype))
        for block in self.blocks:
            x = block(x, cond, groups, rotation)
        shift, scale = self.out_modulation(F.silu(cond))[:, groups].chunk(2, -1)
        features = (self.norm_out(x) * (1 + scale) + shift)[:, : f * h * w]
        # geometry first: the prediction is a correction of the mosaic's RGB-D, so an untrained network
        # already returns the warped frames and training only has to learn what geometry cannot give
        clean = mosaic[:, :, :RGBD_CHANNELS] + self.unpatchify(self.out(features), f, height, width)
        if self.config.refiner_channels:
            level = (levels[:, :f] / self.config.num_train_timesteps).to(clean.dtype)[:, :, None, None, None]
            inputs = torch.cat([clean, mosaic, sample, level.expand(-1, -1, 1, height, width)], 2).flatten(0, 1)
            # clean (timestep 0) frames are given context whose estimate no caller reads: refining them is wasted
            noisy = (levels[:, :f] > 0).flatten()
            correction = torch.zeros_like(inputs[:, :RGBD_CHANNELS])
            # channels-last: the memory layout oneDNN's CPU convolutions run in without converting
            correction[noisy] = self.refiner(inputs[noisy].contiguous(memory_format=torch.channels_last))
            clean = clean + correction.view_as(clean)
        if not with_variance:
            return clean
        if not self.config.variance_channels:
            raise ValueError("with_variance: this backbone has no variance head (variance_channels 0).")
        # the head reads the same features without changing them: the clean estimate is the same either way
        return clean, self.unpatchify(self.variance(features), f, height, width)


def training_schedule(num_train_timesteps: int = 1000) -> DDPMScheduler:
    """The noise schedule a new MosaicDiT is trained with; training saves it in the model folder, sampling reads it there."""
    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="squaredcos_cap_v2",
                         prediction_type="sample", clip_sample=False)
