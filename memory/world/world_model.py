"""The world model at sampling time: load a backbone folder, denoise chunks, roll out along a camera path."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDIMScheduler
from safetensors import SafetensorError
from safetensors.torch import load_file

from .backbones.mosaic_dit import MosaicDiT, scheduler_for
from ..geometry.camera import CameraPath, plucker_rays
from ..limits import MAX_JSON_CHARS, MAX_SEED, MAX_STEPS, check_count, check_frames, parse_json
from .mosaic import Mosaic, warp_frames
from .rgbd import decode_rgbd, encode_rgbd

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "weights" / "mosaic_dit"
CONTEXT_FRAMES = 2
# The base model's mosaic: the latest frame warped (older frames measured 1 dB worse, stale view-dependent
# shading), plus the last initial frame on top of it in rollouts (see navigate).
MOSAIC_FRAMES = 1
# One DDIM step from the last timestep is the model's mean prediction: on held-out episodes it scored
# higher PSNR than 2 steps (22.5 vs 22.3 dB at training step 2300) and is the fastest. Raise it for
# sharper, more varied samples.
DEFAULT_STEPS = 1
MAX_CHUNK = 64
# the settings a MosaicDiT config may hold and their ranges: far above the embedded model's, low enough
# that a typo cannot ask for a network larger than memory
CONFIG_RANGES: dict[str, tuple] = {
    "patch_size": (1, 64), "hidden_size": (1, 8192), "depth": (1, 256), "num_heads": (1, 256),
    "rope_dims": (0, 8192), "rope_theta": (1e-3, 1e9), "num_train_timesteps": (1, 100_000),
}


@dataclass(frozen=True)
class WorldModel:
    """A loaded backbone (the value behind ComfyUI's COME_WORLD_MODEL socket) and where it came from."""

    network: MosaicDiT
    name: str

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the backbone computes in."""
        return next(self.network.parameters()).dtype

    @property
    def device(self) -> torch.device:
        """The device the backbone lives on."""
        return next(self.network.parameters()).device


@dataclass(frozen=True)
class Chunk:
    """Generated frames: ``rgb`` [T,H,W,3] 0..1 and metric ``depth`` [T,H,W]."""

    rgb: torch.Tensor
    depth: torch.Tensor


def load_world_model(folder: str | Path = DEFAULT_MODEL, dtype: torch.dtype = torch.float32,
                     device: str | torch.device = "cpu") -> WorldModel:
    """A MosaicDiT from a diffusers folder (``config.json`` + ``*.safetensors``); bad folders are refused, never half-loaded."""
    folder = Path(folder)
    config = read_config(folder)
    with torch.device("meta"):
        # built without memory, only to learn which tensors the config needs
        network = MosaicDiT.from_config(config)
    expected = {name: tuple(t.shape) for name, t in network.state_dict().items()}
    weights = {name: tensor.to(dtype) for name, tensor in read_weights(folder, expected).items()}
    network.load_state_dict(weights, strict=True, assign=True)
    return WorldModel(network.to(device).eval(), folder.name)


def read_config(folder: Path) -> dict:
    """The checked MosaicDiT settings of ``folder/config.json``: an object of known keys with values of the right type and range."""
    path = folder / "config.json"
    if not path.is_file():
        raise ValueError(f"model: {folder} has no config.json; pick a folder written by save_pretrained.")
    if path.stat().st_size > MAX_JSON_CHARS:
        raise ValueError(f"model: {path} is larger than {MAX_JSON_CHARS} bytes, not a model config; restore the file.")
    config = parse_json(path.read_text(errors="replace"), f"model: {path}")
    if not isinstance(config, dict):
        raise ValueError(f"model: {path} must hold a JSON object of settings, got {type(config).__name__}; "
                         "restore the file written by save_pretrained.")
    if config.get("_class_name") != MosaicDiT.__name__:
        raise ValueError(f"model: {path} describes a '{config.get('_class_name')}', this loader reads "
                         f"{MosaicDiT.__name__} folders.")
    for key, value in config.items():
        if key.startswith("_"):
            continue
        if key not in CONFIG_RANGES:
            raise ValueError(f"model: {path} has an unknown setting '{key}'; {MosaicDiT.__name__} takes "
                             f"{', '.join(CONFIG_RANGES)}.")
        low, high = CONFIG_RANGES[key]
        numbers = value if key == "rope_dims" else [value]
        whole = isinstance(low, int)
        if (not isinstance(numbers, list) or len(numbers) != (3 if key == "rope_dims" else 1)
                or any(isinstance(v, bool) or not isinstance(v, int if whole else (int, float)) for v in numbers)
                or not all(low <= v <= high for v in numbers)):
            kind = "3 whole numbers" if key == "rope_dims" else "a whole number" if whole else "a number"
            raise ValueError(f"model: {path} setting '{key}' must be {kind} in {low}..{high}, got {value!r}; "
                             "restore the file written by save_pretrained.")
    try:
        # the network checks how the settings fit together (e.g. rope_dims against the head size)
        with torch.device("meta"):
            MosaicDiT.from_config(config)
    except (ValueError, TypeError, ZeroDivisionError) as err:
        raise ValueError(f"model: {path} holds settings that do not fit together ({err}).") from None
    return config


def read_weights(folder: Path, expected: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """The tensors of every ``*.safetensors`` in ``folder``: exactly the ``expected`` names and shapes, float and finite."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"model: {folder} has no .safetensors weights (pickled .bin files are not loaded).")
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            part = load_file(str(file))
        except (SafetensorError, OSError, RuntimeError) as err:
            raise ValueError(f"model: {file} is not a readable safetensors file ({err}); restore it.") from None
        if set(part) & set(tensors):
            raise ValueError(f"model: {file} repeats tensors of another weights file in {folder}; keep one copy.")
        tensors |= part
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ValueError(f"model: the weights in {folder} do not match its config (missing {missing[:5]}, "
                         f"unexpected {extra[:5]}); use the config.json saved with these weights.")
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != expected[name]:
            raise ValueError(f"model: the weights in {folder} do not match its config ({name} has shape "
                             f"{list(tensor.shape)}, the config needs {list(expected[name])}).")
        if not tensor.is_floating_point():
            raise ValueError(f"model: weight {name} in {folder} is {tensor.dtype}, not a float tensor; the file is damaged.")
        if not torch.isfinite(tensor).all():
            raise ValueError(f"model: weight {name} in {folder} holds NaN or inf; the file is damaged or the "
                             "training diverged.")
    return tensors


def sample_chunk(model: WorldModel, context: torch.Tensor, context_c2w: torch.Tensor, target_c2w: torch.Tensor,
                 K: torch.Tensor, mosaic: Mosaic, steps: int, generator: torch.Generator,
                 depth_known: bool = True, callback: Callable[[int], None] | None = None) -> torch.Tensor:
    """Encoded RGB-D [T,4,H,W] of the targets, denoised by DDIM from noise given clean context [C,4,H,W] and a mosaic."""
    check_count(steps, "steps", 1, MAX_STEPS)
    net = model.network
    height, width = mosaic.mask.shape[-2:]
    c2w = torch.cat([context_c2w, target_c2w])
    rays = plucker_rays(c2w, K, c2w[len(context) - 1 if len(context) else 0], height, width)
    empty = Mosaic.empty(len(context), height, width).channels()
    cond = torch.cat([empty, mosaic.channels(depth_known)])
    # trailing spacing starts at the last training timestep, where pure noise is the right input, even for one step
    scheduler = DDIMScheduler.from_config(scheduler_for(net).config, timestep_spacing="trailing")
    scheduler.set_timesteps(steps)
    x = torch.randn(len(target_c2w), 4, height, width, generator=generator)
    as_net = dict(device=model.device, dtype=model.dtype)
    prediction = x
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            timesteps = torch.cat([torch.zeros(len(context)), torch.full((len(target_c2w),), float(t))])[None]
            sample = torch.cat([context, x])[None]
            # timesteps stay float32: bfloat16 cannot tell 999 from 1000, and the network embeds them in float32
            prediction = net(sample.to(**as_net), timesteps.to(model.device), cond[None].to(**as_net),
                             rays[None].to(**as_net))[0, len(context):].float().cpu()
            x = scheduler.step(prediction, t, x).prev_sample
            if callback is not None:
                callback(i)
    return prediction


def navigate(model: WorldModel, frames: torch.Tensor, depth: torch.Tensor | None, path: CameraPath,
             chunk: int = 4, steps: int = DEFAULT_STEPS, seed: int = 0,
             callback: Callable[[int], None] | None = None) -> Iterator[Chunk]:
    """Roll the base model out along ``path``: the first len(frames) cameras are the given frames, the rest is generated.

    Yields the given frames (with depth, predicted if ``depth`` is None) and then each generated chunk,
    so a caller that stops early keeps everything finished. Each chunk sees the last CONTEXT_FRAMES
    frames as context and, warped into its cameras, the last MOSAIC_FRAMES frames with the last initial
    frame on top: cost per chunk is constant. The initial frame is an observation, a generated frame's
    depth is partly a guess, so the initial frame takes priority wherever it is visible (and is found
    again when the camera comes back).
    """
    frames = check_frames(frames, "initial_frames")
    known = len(frames)
    if not 1 <= known < len(path):
        raise ValueError(f"camera_path: it has {len(path)} cameras but {known} initial frames; the path must be "
                         "longer than the initial frames (one camera per initial frame, then the cameras to generate).")
    if tuple(frames.shape[1:3]) != (path.height, path.width):
        raise ValueError(f"initial_frames: size {tuple(frames.shape[1:3])} differs from the camera path's "
                         f"{(path.height, path.width)}; resize the frames or build the path at their size.")
    if depth is not None:
        if tuple(depth.shape) != tuple(frames.shape[:3]):
            raise ValueError(f"initial_depth: {tuple(depth.shape)} (count, height, width) does not match "
                             f"initial_frames {tuple(frames.shape[:3])}; give one depth map per initial frame at "
                             "their size, or leave initial_depth unconnected to predict it.")
        if not torch.isfinite(depth).all() or bool((depth < 0).any()):
            raise ValueError("initial_depth: holds NaN, inf or negative values; metric depth is metres >= 0 "
                             "(0 = unknown or sky).")
    chunk = check_count(chunk, "chunk_size", 1, MAX_CHUNK, "frames")
    check_count(steps, "steps", 1, MAX_STEPS)
    check_count(seed, "seed", 0, MAX_SEED)
    patch = model.network.config.patch_size
    if path.height % patch or path.width % patch:
        raise ValueError(f"camera_path: image size {path.height}x{path.width} is not a multiple of the model's "
                         f"patch size {patch}; set the path's width and height to multiples of {patch}.")
    # checked here, not in the generator, so that bad input fails when the rollout is asked for
    return _rollout(model, frames, depth, path, chunk, steps, seed, callback)


def rollout_steps(initial: int, cameras: int, chunk: int, steps: int, depth_known: bool) -> int:
    """Denoising steps (callback calls) of a :func:`navigate` rollout: per chunk, plus a depth pass without depth."""
    return steps * (math.ceil((cameras - initial) / chunk) + (not depth_known))


def _rollout(model: WorldModel, frames: torch.Tensor, depth: torch.Tensor | None, path: CameraPath, chunk: int,
             steps: int, seed: int, callback: Callable[[int], None] | None) -> Iterator[Chunk]:
    """The rollout of :func:`navigate` on checked inputs."""
    known = len(frames)
    generator = torch.Generator().manual_seed(seed)
    if depth is None:
        first = Mosaic(frames.float(), torch.zeros(frames.shape[:3]), torch.ones(frames.shape[:3]))
        encoded = sample_chunk(model, torch.zeros(0, 4, path.height, path.width), path.c2w[:0], path.c2w[:known],
                               path.K, first, steps, generator, depth_known=False, callback=callback)
        depth = decode_rgbd(encoded)[1]
    keep = max(CONTEXT_FRAMES, MOSAIC_FRAMES)
    rgb, dep = frames.float()[-keep:], depth.float()[-keep:]
    anchor = (rgb[-1:], dep[-1:], path.c2w[known - 1:known])
    yield Chunk(frames.float(), depth.float())
    done = known
    while done < len(path):
        # only a bounded window of recent frames is kept, so a chunk costs the same however long the rollout
        targets = path.c2w[done:done + chunk]
        m, c = min(MOSAIC_FRAMES, len(rgb)), min(CONTEXT_FRAMES, len(rgb))
        sources = (rgb[-m:], dep[-m:], path.c2w[done - m:done])
        if done > known:
            # warp_frames gives the last source priority, so the observed anchor goes last
            sources = tuple(torch.cat([recent, observed]) for recent, observed in zip(sources, anchor))
        mosaic = warp_frames(*sources, path.K, targets).fill_holes(rgb[-1], dep[-1])
        encoded = sample_chunk(model, encode_rgbd(rgb[-c:], dep[-c:]), path.c2w[done - c:done], targets, path.K,
                               mosaic, steps, generator, callback=callback)
        out = Chunk(*decode_rgbd(encoded))
        rgb, dep = torch.cat([rgb, out.rgb])[-keep:], torch.cat([dep, out.depth])[-keep:]
        done += len(targets)
        yield out
