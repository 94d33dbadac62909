"""The world model: load and save a backbone folder (network + noise schedule), evaluate it, denoise a chunk."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..limits import MAX_JSON_CHARS, MAX_STEPS, check_count, parse_json
from . import poce
from .backbones.mosaic_dit import RGBD_CHANNELS, MosaicDiT, training_schedule
from .conditioning import Conditioning

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "weights" / "mosaic_dit"
# the settings a MosaicDiT config may hold and their ranges: far above the embedded model's, low enough
# that a typo cannot ask for a network larger than memory
CONFIG_RANGES: dict[str, tuple] = {
    "patch_size": (1, 64), "hidden_size": (1, 8192), "depth": (1, 256), "num_heads": (1, 256),
    "rope_dims": (0, 8192), "rope_theta": (1e-3, 1e9), "num_train_timesteps": (1, 100_000),
    "context_frames": (0, 64), "mosaic_frames": (0, 64), "generated_confidence": (1e-3, 1.0),
    "variance_channels": (0, 4), "refiner_channels": (0, 1024),
}
SCHEDULE_FILE = "scheduler_config.json"
WEIGHTS_NAME = "diffusion_pytorch_model"


@dataclass(frozen=True)
class WorldModel:
    """A loaded backbone (the value behind ComfyUI's COME_WORLD_MODEL socket) and where it came from."""

    network: MosaicDiT
    name: str
    schedule: DDPMScheduler

    @property
    def context_frames(self) -> int:
        """Clean frames the backbone reads before each chunk (declared in its config)."""
        return int(self.network.config.context_frames)

    @property
    def mosaic_frames(self) -> int:
        """Latest frames the base mosaic is warped from (declared in its config)."""
        return int(self.network.config.mosaic_frames)

    @property
    def generated_confidence(self) -> float:
        """Coverage value of mosaic pixels warped from generated frames (declared in its config; observed ones are 1)."""
        return float(self.network.config.generated_confidence)

    @property
    def predicts_variance(self) -> bool:
        """Whether the backbone has a variance head (how sure each clean estimate is), which PoCE then weighs by."""
        return bool(self.network.config.get("variance_channels", 0))

    @property
    def top_timestep(self) -> int:
        """The last training timestep: where sampling starts and where the null context sits."""
        return int(self.schedule.config.num_train_timesteps) - 1

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the backbone computes in."""
        return next(self.network.parameters()).dtype

    @property
    def device(self) -> torch.device:
        """The device the backbone lives on."""
        return next(self.network.parameters()).device


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
    return WorldModel(network.to(device).eval(), folder.name, read_schedule(folder, config))


def read_schedule(folder: Path, config: dict) -> DDPMScheduler:
    """The noise schedule saved with the model (``scheduler_config.json``), checked against the model's config."""
    path = folder / SCHEDULE_FILE
    if not path.is_file():
        raise ValueError(f"model: {folder} has no {SCHEDULE_FILE} (the noise schedule it was trained with); "
                         "save it with the model (DDPMScheduler.save_pretrained).")
    settings = parse_json(path.read_text(errors="replace"), f"model: {path}")
    if not isinstance(settings, dict) or settings.get("_class_name") != DDPMScheduler.__name__:
        raise ValueError(f"model: {path} must describe a {DDPMScheduler.__name__}; restore the file saved with the model.")
    try:
        schedule = DDPMScheduler.from_config(settings)
    except (TypeError, ValueError, NotImplementedError) as err:
        raise ValueError(f"model: {path} is not a usable noise schedule ({err}).") from None
    if schedule.config.num_train_timesteps != config.get("num_train_timesteps", 1000):
        raise ValueError(f"model: {path} has {schedule.config.num_train_timesteps} timesteps, the model's config "
                         f"{config.get('num_train_timesteps', 1000)}; keep the files saved together.")
    return schedule


def save_world_model(network: MosaicDiT, folder: str | Path, schedule: DDPMScheduler | None = None) -> Path:
    """Write a model folder :func:`load_world_model` reads: the network (safetensors) and its noise schedule."""
    folder = Path(folder)
    network.save_pretrained(folder, safe_serialization=True)
    (schedule or training_schedule(network.config.num_train_timesteps)).save_pretrained(folder)
    return folder


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
    """The tensors of the diffusers weights files in ``folder``: exactly the ``expected`` names and shapes, float and finite.

    Only ``diffusion_pytorch_model*.safetensors`` (one file or shards) are weights, as for diffusers, so a
    training checkpoint folder, which also holds the optimizer's state, loads as a model too.
    """
    files = sorted(folder.glob(f"{WEIGHTS_NAME}*.safetensors"))
    if not files:
        raise ValueError(f"model: {folder} has no {WEIGHTS_NAME}*.safetensors weights (pickled .bin files are not "
                         "loaded).")
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


def predict_clean(model: WorldModel, conditioning: Conditioning, x: torch.Tensor, t: float,
                  noise: torch.Tensor | None = None) -> torch.Tensor:
    """One backbone evaluation: the clean RGB-D [T,4,H,W] the network predicts for noisy targets ``x`` at timestep ``t``."""
    return predict_clean_batch(model, [conditioning], x, t, noise)[0]


def predict_clean_batch(model: WorldModel, conditionings: Sequence[Conditioning], x: torch.Tensor, t: float,
                        noise: torch.Tensor | None = None, with_variance: bool = False) -> list:
    """:func:`predict_clean` under each conditioning, in one batched forward per context length (the same numbers, fewer calls).

    ``with_variance`` (a backbone with a variance head): each item is (clean, variance), both [T,4,H,W].
    """
    out: list = [None] * len(conditionings)
    groups: dict[int, list[int]] = {}
    for i, conditioning in enumerate(conditionings):
        groups.setdefault(conditioning.context_frames, []).append(i)
    as_net = dict(device=model.device, dtype=model.dtype)
    for context, members in groups.items():
        inputs = [conditionings[i].inputs(x, t, model.top_timestep, noise) for i in members]
        sample, timesteps, mosaic, rays = (torch.cat(parts) for parts in zip(*inputs))
        with torch.no_grad():
            # timesteps stay float32: bfloat16 cannot tell 999 from 1000, and the network embeds them in float32
            predicted = model.network(sample.to(**as_net), timesteps.to(model.device), mosaic.to(**as_net),
                                      rays.to(**as_net), with_variance=with_variance)
        if with_variance:
            clean, log_variance = predicted
            shared = RGBD_CHANNELS // log_variance.shape[2]
            variance = log_variance[:, context:].float().exp().repeat_interleave(shared, dim=2).cpu()
        else:
            clean = predicted
        for row, i in enumerate(members):
            mean = clean[row, context:].float().cpu()
            out[i] = (mean, variance[row]) if with_variance else mean
    return out


def denoise(model: WorldModel, predict: Callable[[torch.Tensor, float], torch.Tensor], shape: tuple, steps: int,
            generator: torch.Generator, callback: Callable[[int], None] | None = None,
            weight: float = 1.0) -> torch.Tensor:
    """DDIM from pure noise of ``shape`` [T,4,H,W], ``predict(x, t)`` giving the clean estimate; returns the last one.

    ``weight`` is the total ε weight W of a composition of scores (PoCE): ``predict`` then returns the
    weighted mean Σ w·x0 / W of the experts' clean estimates, and each step integrates the composed
    probability-flow ODE exactly under DDIM's own assumption (the estimates held for the step), which
    is DDIM itself at W = 1.
    """
    check_count(steps, "steps", 1, MAX_STEPS)
    # trailing spacing starts at the last training timestep, where pure noise is the right input, even for one step
    scheduler = DDIMScheduler.from_config(model.schedule.config, timestep_spacing="trailing")
    scheduler.set_timesteps(steps)
    x = torch.randn(shape, generator=generator)
    prediction = x
    stride = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    for i, t in enumerate(scheduler.timesteps):
        prediction = predict(x, float(t))
        if weight == 1:
            x = scheduler.step(prediction, t, x).prev_sample
        else:
            before = scheduler.alphas_cumprod[int(t)]
            after = scheduler.alphas_cumprod[int(t) - stride] if int(t) >= stride else scheduler.final_alpha_cumprod
            x = composed_step(x, prediction, float(before), float(after), weight)
        if callback is not None:
            callback(i)
    return prediction


def composed_step(x: torch.Tensor, mean: torch.Tensor, alpha_bar: float, alpha_bar_next: float,
                  weight: float) -> torch.Tensor:
    """:func:`poce.composed_step` for x = √ᾱ·x0 + √(1−ᾱ)·ε, from ᾱ = ``alpha_bar`` to ``alpha_bar_next``."""
    return poce.composed_step(x, mean, math.sqrt(alpha_bar), math.sqrt(max(1 - alpha_bar, 0.0)),
                              math.sqrt(alpha_bar_next), math.sqrt(max(1 - alpha_bar_next, 0.0)), weight)


def sample_chunk(model: WorldModel, conditioning: Conditioning, targets: int, steps: int, generator: torch.Generator,
                 callback: Callable[[int], None] | None = None) -> torch.Tensor:
    """Encoded RGB-D [T,4,H,W] of ``targets`` frames, denoised by DDIM under one conditioning (the base model alone)."""
    height, width = conditioning.mosaic.shape[-2:]
    return denoise(model, lambda x, t: predict_clean(model, conditioning, x, t), (targets, 4, height, width), steps,
                   generator, callback)
