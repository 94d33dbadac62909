"""Memory experts: values that say which memory conditions a chunk, and the rollout state that holds the memories.

An expert turns a chunk to generate into two predictions of it: with its memory and with its memory
removed (the null memory: context frames as pure noise at the maximum noise level, no mosaic, no
adapter). They differ only in where their conditioning comes from:

- ``BaseExpert``: the model alone, as Navigate runs it: its declared context and the latest frame's mosaic
- ``ShortTermExpert``: the last ``frames`` frames as clean context and as the sources of the mosaic
- ``SpatialExpert``: the 3D patch memory rendered into the target cameras as the mosaic (observed
  patches over patches lifted from generated frames); ``guidance > 0`` is the training-free variant
  that pulls the base prediction toward the rendering where it covers
- ``LongTermExpert``: the backbone with an episodic LoRA that stores the episode in its weights

Every null memory is the same evaluation (the base network, the declared context length of noise,
no mosaic), so PoCE runs it once per denoising step however many experts it combines.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..geometry.camera import CameraPath
from ..limits import MAX_LORA_STEPS, check_count
from ..patch_memory import PatchMemory, insert_frames, render
from .conditioning import Conditioning, build_conditioning
from .lora import EpisodicLoRA
from .mosaic import Mosaic, warp_frames
from .poce import DEFAULT_ALPHA, MODES, check_alpha
from .rgbd import encode_rgbd

BASE, LORA = "base", "lora"
# the backbone's trained context length (the embedded model's 2): on the held-out revisit episodes the
# short-term expert alone scored 19.24 dB at 2 frames, 19.14 at 4 (revisit PSNR, α 1; 16.19 vs 15.16 at α 2),
# and a window of the model's context batches with the other experts into one forward per step
DEFAULT_STM_FRAMES = 2
MAX_STM_FRAMES = 32
# most patches one rendered frame may retrieve (the Spatial Expert node's widget range)
MAX_RETRIEVED = 1_000_000
# generated frames are lifted into the patch memory at this voxel size (the Build node's default)
LIFT_VOXEL_M = 0.05
# what the spatial expert marks as generated in the patch memory it returns (edit group of lifted patches)
GENERATED_GROUP = 1 << 20


@dataclass(frozen=True)
class BaseExpert:
    """The backbone with its own short memory: the declared context frames and the latest frame's mosaic."""

    alpha: float = DEFAULT_ALPHA

    def __post_init__(self) -> None:
        check_alpha(self.alpha)


@dataclass(frozen=True)
class ShortTermExpert:
    """The last ``frames`` frames as clean context and as the sources of the mosaic (latest on top)."""

    frames: int = DEFAULT_STM_FRAMES
    alpha: float = DEFAULT_ALPHA

    def __post_init__(self) -> None:
        check_alpha(self.alpha)
        # frozen: a whole float (4.0) is stored as the int it stands for
        object.__setattr__(self, "frames", check_count(self.frames, "frames", 1, MAX_STM_FRAMES, "frames"))


@dataclass(frozen=True)
class SpatialExpert:
    """The patch memory rendered into the target cameras; ``guidance`` in (0, 1] pulls the base prediction there instead."""

    memory: PatchMemory
    alpha: float = DEFAULT_ALPHA
    guidance: float = 0.0
    max_patches: int = 4096

    def __post_init__(self) -> None:
        check_alpha(self.alpha)
        if not isinstance(self.memory, PatchMemory) or len(self.memory) == 0:
            raise ValueError("memory: the spatial expert needs a patch memory with patches; build one from frames "
                             "(Build Patch Memory) or load one.")
        object.__setattr__(self, "max_patches", check_count(self.max_patches, "max_patches", 16, MAX_RETRIEVED, "patches"))
        if not 0.0 <= float(self.guidance) <= 1.0:
            raise ValueError(f"guidance: must be in 0..1 (0 = a mosaic-trained backbone reads the memory), "
                             f"got {self.guidance!r}.")


@dataclass(frozen=True)
class LongTermExpert:
    """The backbone with an episodic LoRA; ``stream_steps`` LoRA steps on the latest frames after each chunk."""

    lora: EpisodicLoRA
    alpha: float = DEFAULT_ALPHA
    stream_steps: int = 0
    stream_lr: float = 1e-3

    def __post_init__(self) -> None:
        check_alpha(self.alpha)
        if not isinstance(self.lora, EpisodicLoRA):
            raise ValueError("lora: the long-term expert needs an episodic LoRA (Train or Load Episodic LoRA).")
        object.__setattr__(self, "stream_steps",
                           check_count(self.stream_steps, "stream_steps", 0, MAX_LORA_STEPS, "LoRA steps per chunk"))
        if isinstance(self.stream_lr, bool) or not isinstance(self.stream_lr, (int, float)) or not 0 < self.stream_lr < 1:
            raise ValueError(f"stream_lr: the learning rate must be a number in (0, 1), got {self.stream_lr!r}.")


Expert = BaseExpert | ShortTermExpert | SpatialExpert | LongTermExpert


@dataclass(frozen=True)
class Composition:
    """Experts combined by PoCE (the value behind the COME_COMPOSITION socket): ``mode`` one of poce.MODES."""

    experts: tuple[Expert, ...]
    mode: str = "poce"

    def __post_init__(self) -> None:
        if not self.experts:
            raise ValueError("experts: a composition needs at least one expert; connect one.")
        if self.mode not in MODES:
            raise ValueError(f"mode: {self.mode!r} is not one of {', '.join(MODES)}.")

    @property
    def alphas(self) -> list[float]:
        """Each expert's α, in order."""
        return [expert.alpha for expert in self.experts]


@dataclass(frozen=True)
class Plan:
    """How one expert predicts the current chunk: which network, under which conditioning, guided toward what."""

    network: str
    conditioning: Conditioning
    guide: Mosaic | None = None
    guidance: float = 0.0

    def apply_guidance(self, x0: torch.Tensor) -> torch.Tensor:
        """``x0`` [T,4,H,W] pulled toward the guide's RGB-D where the guide covers (training-free spatial memory)."""
        if self.guide is None or self.guidance <= 0:
            return x0
        target = encode_rgbd(self.guide.rgb, self.guide.depth)
        weight = self.guidance * self.guide.mask[:, None]
        return x0 + weight * (target - x0)


@dataclass
class RolloutState:
    """What a rollout remembers: recent frames (bounded), the last observed frame, the patch memories, the LoRA.

    ``observed`` is the memory of observations (a spatial expert's, which an artist may have edited, or
    one built from the initial frames); ``generated`` holds the patches lifted from generated frames
    with the model's own depth. They are kept apart so observed patches always win where both exist.
    """

    path: CameraPath
    context_frames: int
    mosaic_frames: int
    window: int
    rgb: torch.Tensor
    depth: torch.Tensor
    c2w: torch.Tensor
    anchor: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    observed: PatchMemory | None = None
    generated: PatchMemory | None = None
    lora: EpisodicLoRA | None = None
    done: int = 0
    generated_anything: bool = False
    generated_confidence: float = 1.0
    _chunk: dict = field(default_factory=dict)
    # frames before this index are observed (the initial frames the state starts with), later ones generated
    initial: int = field(init=False)

    def __post_init__(self) -> None:
        self.initial = self.done

    def add(self, rgb: torch.Tensor, depth: torch.Tensor, c2w: torch.Tensor, lift: bool) -> None:
        """Append generated frames: the window keeps the latest ones; with ``lift`` they enter the generated patch memory."""
        self.rgb = torch.cat([self.rgb, rgb])[-self.window:]
        self.depth = torch.cat([self.depth, depth])[-self.window:]
        self.c2w = torch.cat([self.c2w, c2w])[-self.window:]
        if lift:
            base = PatchMemory.empty(self.observed.patch_size) if self.generated is None else self.generated
            ids = torch.arange(self.done, self.done + len(rgb))
            self.generated = insert_frames(base, rgb, depth, c2w, self.path.K, frame_ids=ids, voxel_size=LIFT_VOXEL_M,
                                           group=GENERATED_GROUP)
        self.done += len(rgb)
        self.generated_anything = True
        self._chunk = {}

    @property
    def memory(self) -> PatchMemory | None:
        """The observed memory followed by the patches lifted from generated frames (an artist can edit and continue)."""
        if self.observed is None or self.generated is None:
            return self.observed if self.generated is None else self.generated
        return self.observed.concat(self.generated)

    def latest_mosaic(self, targets: torch.Tensor, frames: int) -> Mosaic:
        """The last ``frames`` frames warped into ``targets`` (latest on top, the observed anchor above all once generating)."""
        m = min(frames, len(self.rgb))
        sources = (self.rgb[-m:], self.depth[-m:], self.c2w[-m:])
        index = torch.arange(self.done - m, self.done)
        confidence = torch.where(index < self.initial, 1.0, self.generated_confidence)
        if self.generated_anything:
            # warp_frames gives the last source priority, so the observed anchor goes last
            sources = tuple(torch.cat([recent, observed]) for recent, observed in zip(sources, self.anchor))
            confidence = torch.cat([confidence, torch.ones(1)])
        return warp_frames(*sources, self.path.K, targets, confidence).fill_holes(self.rgb[-1], self.depth[-1])

    def conditioning(self, targets: torch.Tensor, frames: int, mosaic: Mosaic) -> Conditioning:
        """Conditioning on the last ``frames`` frames as context and ``mosaic``."""
        c = min(frames, len(self.rgb))
        return build_conditioning(self.rgb[-c:], self.depth[-c:], self.c2w[-c:], targets, self.path.K, mosaic)

    def base(self, targets: torch.Tensor) -> Conditioning:
        """The base model's conditioning of this chunk (computed once per chunk, shared by the experts that read it)."""
        if "base" not in self._chunk:
            self._chunk["base"] = self.conditioning(targets, self.context_frames,
                                                    self.latest_mosaic(targets, self.mosaic_frames))
        return self._chunk["base"]

    def null(self, targets: torch.Tensor) -> Conditioning:
        """The null memory of this chunk, one object for every expert so that it is evaluated once per step."""
        if "null" not in self._chunk:
            self._chunk["null"] = self.base(targets).without_memory()
        return self._chunk["null"]

    def spatial_mosaic(self, targets: torch.Tensor, memory: PatchMemory, max_patches: int) -> tuple[Mosaic, Mosaic]:
        """The patch memory in the target cameras (observed patches, then generated ones, then the base mosaic), and the memory alone."""
        mosaic = self.latest_mosaic(targets, self.mosaic_frames)
        rgb, depth, mask = mosaic.rgb.clone(), mosaic.depth.clone(), torch.zeros_like(mosaic.mask)
        for source, value in ((memory, 1.0), (self.generated, self.generated_confidence)):
            if source is None or len(source) == 0:
                continue
            for i, pose in enumerate(targets):
                view = render(source, self.path.K, pose, self.path.height, self.path.width, max_patches=max_patches)
                fill = (mask[i] <= 0) & (view.mask > 0)
                rgb[i][fill], depth[i][fill], mask[i][fill] = view.rgb[fill], view.depth[fill], value
        # where the memory has nothing, the latest frames' warp (sky included) still covers what it covers
        covered = torch.where(mask > 0, mask, mosaic.mask)
        return Mosaic(rgb, depth, covered, filled=True), Mosaic(rgb, depth, mask, filled=True)


def plan(expert: Expert, state: RolloutState, targets: torch.Tensor) -> Plan:
    """How ``expert`` predicts the chunk at cameras ``targets`` [T,4,4] from the rollout's memories."""
    if isinstance(expert, BaseExpert):
        return Plan(BASE, state.base(targets))
    if isinstance(expert, ShortTermExpert):
        return Plan(BASE, state.conditioning(targets, expert.frames, state.latest_mosaic(targets, expert.frames)))
    if isinstance(expert, SpatialExpert):
        mosaic, memory_only = state.spatial_mosaic(targets, expert.memory, expert.max_patches)
        if expert.guidance > 0:
            return Plan(BASE, state.base(targets), guide=memory_only, guidance=expert.guidance)
        return Plan(BASE, state.conditioning(targets, state.context_frames, mosaic))
    return Plan(LORA, state.base(targets))
