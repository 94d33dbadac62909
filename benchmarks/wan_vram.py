"""Estimated VRAM of Wan backbones in rollouts: weights counted from the real classes' configs, forwards estimated.

    python benchmarks/wan_vram.py --json OUT

No Wan weights can be downloaded here, so nothing is measured on a GPU: each published configuration
(Wan 2.1 T2V 1.3B, Wan 2.1 I2V 14B 480P, Wan 2.2 TI2V 5B) is built on the meta device from the real
diffusers classes, which counts its parameters exactly; the largest forward of a rollout is
``wan_forward_bytes`` (memory/world/wan_rollout.py, what Navigate asks ComfyUI to free), an estimate
from activation sizes. Writes OUT (MiB per model, resolution, dtype and composition) and a bar plot
next to it (.png).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from diffusers.utils import logging as diffusers_logging

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import plots  # noqa: E402

from memory.files import write_json  # noqa: E402
from memory.world.backbones.wan import WanWorldModel  # noqa: E402
from memory.world.wan_rollout import wan_forward_bytes  # noqa: E402

# the transformer and VAE settings of the Wan-AI *-Diffusers folders that differ from the classes' defaults
MODELS = {
    "Wan2.1-T2V-1.3B": ({"num_attention_heads": 12, "ffn_dim": 8960, "num_layers": 30}, {}),
    "Wan2.1-I2V-14B-480P": ({"in_channels": 36, "image_dim": 1280, "added_kv_proj_dim": 5120}, {}),
    "Wan2.2-TI2V-5B": ({"num_attention_heads": 24, "ffn_dim": 14336, "num_layers": 30, "in_channels": 48,
                        "out_channels": 48},
                       {"z_dim": 48, "base_dim": 160, "decoder_base_dim": 256, "is_residual": True, "patch_size": 2,
                        "in_channels": 12, "out_channels": 12, "scale_factor_spatial": 16,
                        "latents_mean": [0.0] * 48, "latents_std": [1.0] * 48}),
}
RESOLUTIONS = ((480, 832), (720, 1280))
CHUNK = 16  # frames per chunk: four latent frames after the anchor
# samples one step batches on the base transformer: Navigate (base alone); with memory (base, short-term,
# spatial and the null memory; the long-term expert's LoRA transformer is a forward of its own)
COMPOSITIONS = {"navigate": 1, "with_memory": 4}
DTYPES = {"bf16": torch.bfloat16, "float32": torch.float32}
MIB = 2 ** 20


def meta_model(transformer: dict, vae: dict, dtype: torch.dtype) -> WanWorldModel:
    """A Wan backbone of these settings on the meta device: real classes, no memory."""
    with torch.device("meta"):
        network = WanTransformer3DModel(**transformer).to(dtype)
        autoencoder = AutoencoderKLWan(**vae)
    return WanWorldModel(network, autoencoder, {}, torch.zeros(1, 1, 1), None, "meta")


def estimate() -> dict:
    """MiB of weights and of the largest forward for every model, resolution, dtype and composition."""
    rows = []
    for name, (transformer, vae) in MODELS.items():
        for label, dtype in DTYPES.items():
            model = meta_model(transformer, vae, dtype)
            weights = sum(p.numel() for p in model.transformer.parameters()) * dtype.itemsize
            vae_weights = sum(p.numel() for p in model.vae.parameters()) * 4
            for height, width in RESOLUTIONS:
                # the last latent pixel row rounds down to whole tokens, as a path of that size must
                for composition, batch in COMPOSITIONS.items():
                    forward = wan_forward_bytes(model, batch, CHUNK, height, width)
                    rows.append({"model": name, "dtype": label, "height": height, "width": width,
                                 "composition": composition, "transformer_weights_mib": weights / MIB,
                                 "vae_weights_mib": vae_weights / MIB, "forward_mib": forward / MIB,
                                 "total_mib": (weights + vae_weights + forward) / MIB})
    return {"rows": rows, "chunk_frames": CHUNK, "samples_per_step": COMPOSITIONS,
            "note": "weights counted from the real diffusers classes on the meta device; forwards estimated by "
                    "wan_forward_bytes; the VAE in float32; CUDA context, workspaces and the text encoder excluded"}


def plot(result: dict, path: Path) -> None:
    """Total MiB in bf16 at 480x832 per model and composition, as bars."""
    rows = [r for r in result["rows"] if r["dtype"] == "bf16" and r["height"] == 480]
    fig = plots.figure(8, 3.5)
    ax = fig.add_subplot()
    plots.bars(ax, [f"{r['model']}\n{r['composition']}" for r in rows], [r["total_mib"] / 1024 for r in rows],
               "{:.1f}", ["#4a90d9" if r["composition"] == "navigate" else "#d9904a" for r in rows])
    ax.set_ylabel("GiB (estimated)")
    ax.set_title(f"Wan rollouts, bf16, 480x832, chunks of {result['chunk_frames']} frames", fontsize=9)
    ax.tick_params(axis="x", labelsize=7)
    plots.save(fig, path)


def main() -> None:
    """Parse the command line, estimate, write the JSON and the plot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, type=plots.json_output, help=plots.JSON_HELP)
    args = parser.parse_args()
    # diffusers warns that a cast moves its float32 norms too: on the meta device only sizes are read
    diffusers_logging.set_verbosity_error()
    result = estimate()
    write_json(args.json, result, indent=1)
    plot(result, args.json.with_suffix(".png"))
    for r in result["rows"]:
        print(f"{r['model']:22s} {r['dtype']:7s} {r['height']}x{r['width']} {r['composition']:11s} "
              f"transformer {r['transformer_weights_mib']:9.0f} MiB, forward {r['forward_mib']:7.0f} MiB, "
              f"total {r['total_mib']:9.0f} MiB")


if __name__ == "__main__":
    main()
