"""LoRA interop with ComfyUI: a peft LoRA on a diffusers ``WanTransformer3DModel`` <-> ComfyUI's LoRA file for its native Wan.

ComfyUI's native Wan (``comfy/ldm/wan/model.py``) names its modules after the original Wan code
(``blocks.0.self_attn.q``, ``ffn.0``, ``head.head``); diffusers renames them (``blocks.0.attn1.to_q``,
``ffn.net.0.proj``, ``proj_out``), the renaming of diffusers' own ``convert_wan_transformer_to_diffusers``.
ComfyUI's core ``LoraLoaderModelOnly`` finds a Wan LoRA only under ``diffusion_model.<native module>``
(``comfy/lora.py: model_lora_keys_unet`` has no diffusers names for Wan) with ``lora_up.weight`` [out, rank],
``lora_down.weight`` [rank, in] and an optional scalar ``alpha`` (update ``alpha / rank · up @ down``;
no alpha means scale 1); it reads ``lora_B`` / ``lora_A`` names as the same halves. Core ``TrainLoraNode``
writes exactly that (``LoraDiff``: ``lora_up``, ``lora_down``, ``alpha`` 1.0) for every Linear and
convolution, plus ``.diff`` (norm weights) and ``.diff_b`` (every bias): full differences added to those
parameters, which no LoRA can carry, so they travel beside the peft weights as ``differences``.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..files import atomic_save_safetensors, load_safetensors
from ..limits import MAX_LORA_RANK, check_count

PREFIX = "diffusion_model."
COMFY_LORA_FORMAT = "come-comfyui-lora/1"
# the alpha written: core TrainLoraNode, continuing from a file (existing_lora), looks its alpha up under
# '<module>.weight.alpha', finds none and takes 1.0, so the scale goes into lora_up to mean the same to both
# core readers
EXPORT_ALPHA = 1.0
# the suffixes of a ComfyUI LoRA file this module reads, and what each one is
SUFFIXES = {".lora_up.weight": "up", ".lora_B.weight": "up", ".lora_down.weight": "down", ".lora_A.weight": "down",
            ".alpha": "alpha", ".diff": "weight", ".diff_b": "bias"}
PEFT_SUFFIXES = {"down": ".lora_A.weight", "up": ".lora_B.weight"}
DIFFERENCE_SUFFIXES = {"weight": ".diff", "bias": ".diff_b"}

_ATTENTION = {"q": "to_q", "k": "to_k", "v": "to_v", "o": "to_out.0", "norm_q": "norm_q", "norm_k": "norm_k"}
# native name inside a block -> diffusers name (native norm3, the cross-attention norm, is diffusers' norm2;
# native norm1/norm2 and diffusers norm1/norm3 have no parameters)
_BLOCK = {**{f"self_attn.{n}": f"attn1.{d}" for n, d in _ATTENTION.items()},
          **{f"cross_attn.{n}": f"attn2.{d}" for n, d in _ATTENTION.items()},
          "cross_attn.k_img": "attn2.add_k_proj", "cross_attn.v_img": "attn2.add_v_proj",
          "cross_attn.norm_k_img": "attn2.norm_added_k", "norm3": "norm2", "ffn.0": "ffn.net.0.proj",
          "ffn.2": "ffn.net.2"}
_TOP = {"patch_embedding": "patch_embedding", "head.head": "proj_out",
        "text_embedding.0": "condition_embedder.text_embedder.linear_1",
        "text_embedding.2": "condition_embedder.text_embedder.linear_2",
        "time_embedding.0": "condition_embedder.time_embedder.linear_1",
        "time_embedding.2": "condition_embedder.time_embedder.linear_2",
        "time_projection.1": "condition_embedder.time_proj",
        "img_emb.proj.0": "condition_embedder.image_embedder.norm1",
        "img_emb.proj.1": "condition_embedder.image_embedder.ff.net.0.proj",
        "img_emb.proj.3": "condition_embedder.image_embedder.ff.net.2",
        "img_emb.proj.4": "condition_embedder.image_embedder.norm2"}
_BLOCK_NAME = re.compile(r"blocks\.([0-9]{1,6})\.(.+)")


def _rename(name: str, block: dict[str, str], top: dict[str, str]) -> str | None:
    """``name`` through one direction of the tables, or None when it names no module there."""
    found = _BLOCK_NAME.fullmatch(name)
    if found and found[2] in block:
        return f"blocks.{found[1]}.{block[found[2]]}"
    return top.get(name)


def diffusers_module(native: str) -> str | None:
    """The diffusers WanTransformer3DModel module of ComfyUI's native Wan module ``native``, or None if it has none."""
    return _rename(native, _BLOCK, _TOP)


def native_module(diffusers: str) -> str | None:
    """ComfyUI's native Wan module of the diffusers WanTransformer3DModel module ``diffusers``, or None if it has none."""
    return _rename(diffusers, {d: n for n, d in _BLOCK.items()}, {d: n for n, d in _TOP.items()})


@dataclass(frozen=True, eq=False)
class PeftLoRA:
    """A LoRA in peft's names on a diffusers Wan transformer, and the parameter differences beside it.

    ``weights`` holds ``<target>.lora_A.weight`` [rank, in…] and ``<target>.lora_B.weight`` [out, rank, 1…]
    (as ``get_peft_model_state_dict`` returns them) for every module in ``targets``; the update is
    ``alpha / rank · B @ A``, i.e. ``peft.LoraConfig(r=rank, lora_alpha=alpha, target_modules=list(targets))``.
    ``differences`` maps parameter names (``<module>.weight`` / ``.bias``) to tensors added to them.
    """

    weights: dict[str, torch.Tensor]
    rank: int
    alpha: float
    targets: tuple[str, ...]
    differences: dict[str, torch.Tensor]


def _finite_float(tensor: object, key: str, name: str) -> torch.Tensor:
    """``tensor`` as float32, else a ValueError naming ``name`` and ``key``."""
    if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
        raise ValueError(f"{name}: '{key}' is not a float tensor; the LoRA is damaged, save or train it again.")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name}: '{key}' holds NaN or inf; the file is damaged or its training diverged.")
    return tensor.float()


def _check_alpha(alpha: object, name: str) -> float:
    """``alpha`` as a positive finite float, else a ValueError naming ``name``."""
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"{name}: LoRA alpha must be a positive number, got {alpha!r}; alpha = rank means scale 1.")
    return float(alpha)


def _missing_half(module: str, kinds: set[str], name: str) -> None:
    """ValueError naming ``name`` unless ``module`` has both LoRA halves (``up`` and ``down``)."""
    missing = [half for half in ("up", "down") if half not in kinds]
    if missing:
        raise ValueError(f"{name}: module '{module}' has no {' and no '.join(missing)} half; a LoRA needs both halves "
                         "of every module. The file is incomplete: save or train it again.")


def peft_lora(weights: dict[str, torch.Tensor], rank: int, alpha: float,
              differences: dict[str, torch.Tensor] | None = None, name: str = "lora") -> PeftLoRA:
    """The checked :class:`PeftLoRA` of a peft state dict on a diffusers Wan transformer; ValueErrors naming ``name``."""
    rank = check_count(rank, name, 1, MAX_LORA_RANK, "(LoRA rank)")
    alpha = _check_alpha(alpha, name)
    if not isinstance(weights, dict) or not weights:
        raise ValueError(f"{name}: holds no LoRA weights; train the LoRA first.")
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in weights.items():
        kind = next((k for k, s in PEFT_SUFFIXES.items() if isinstance(key, str) and key.endswith(s)), None)
        if kind is None:
            raise ValueError(f"{name}: '{key}' is not a peft LoRA weight (<module>.lora_A.weight / .lora_B.weight); "
                             "pass the state dict of peft's get_peft_model_state_dict.")
        halves.setdefault(key[:-len(PEFT_SUFFIXES[kind])], {})[kind] = _finite_float(tensor, key, name)
    foreign = sorted(m for m in halves if native_module(m) is None)
    if foreign:
        raise ValueError(f"{name}: adapts {len(foreign)} modules that ComfyUI's native Wan model does not have "
                         f"(e.g. '{foreign[0]}'); only a LoRA on a diffusers Wan 2.1 / 2.2 transformer has a ComfyUI "
                         "counterpart (the embedded MosaicDiT has none: keep its LoRA in Save Episodic LoRA's format).")
    for module, kinds in halves.items():
        _missing_half(module, set(kinds), name)
        down, up = kinds["down"], kinds["up"]
        if down.ndim < 2 or up.ndim < 2 or down.shape[0] != rank or up.shape[1] != rank:
            raise ValueError(f"{name}: module '{module}' has halves {list(down.shape)} and {list(up.shape)}, not "
                             f"rank {rank}; the rank given does not match the weights.")
    checked = {}
    for key, tensor in (differences or {}).items():
        if not isinstance(key, str) or native_module(key.rpartition(".")[0]) is None \
                or key.rpartition(".")[2] not in DIFFERENCE_SUFFIXES:
            raise ValueError(f"{name}: difference '{key}' names no weight or bias of ComfyUI's native Wan model.")
        checked[key] = _finite_float(tensor, key, name)
    return PeftLoRA({k: v.float() for k, v in weights.items()}, rank, alpha, tuple(sorted(halves)), checked)


def to_comfy(lora: PeftLoRA) -> dict[str, torch.Tensor]:
    """``lora`` in ComfyUI's LoRA keys for its native Wan: ``diffusion_model.<module>.lora_up/lora_down.weight``, ``.alpha`` (1)."""
    tensors = {}
    for target in lora.targets:
        key = PREFIX + native_module(target)
        tensors[f"{key}.lora_up.weight"] = lora.weights[target + PEFT_SUFFIXES["up"]] * (lora.alpha / EXPORT_ALPHA)
        tensors[f"{key}.lora_down.weight"] = lora.weights[target + PEFT_SUFFIXES["down"]]
        tensors[f"{key}.alpha"] = torch.tensor(EXPORT_ALPHA)
    for parameter, tensor in lora.differences.items():
        module, _, kind = parameter.rpartition(".")
        tensors[PREFIX + native_module(module) + DIFFERENCE_SUFFIXES[kind]] = tensor
    return tensors


def _module(transformer: nn.Module, name: str) -> nn.Module | None:
    """``transformer``'s submodule ``name`` (the layer itself where a peft adapter wraps it), or None."""
    try:
        module = transformer.get_submodule(name)
    except AttributeError:
        return None
    # a transformer that carries an adapter already has its adapted layers wrapped by peft
    while isinstance(getattr(module, "base_layer", None), nn.Module):
        module = module.base_layer
    return module


def _fits(module: nn.Module | None, kind: str, tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` (a LoRA half, alpha or difference: ``kind``) has a place of its shape in ``module``."""
    if kind in DIFFERENCE_SUFFIXES:
        parameter = getattr(module, kind, None)
        return isinstance(parameter, torch.Tensor) and tensor.shape == parameter.shape
    # TrainLoraNode puts LoRAs on every Linear and convolution (a convolution's halves flattened to 2-D)
    if not isinstance(module, (nn.Linear, nn.Conv3d)):
        return False
    if kind == "alpha":
        return tensor.numel() == 1
    if tensor.ndim < 2:
        return False
    return tensor[0].numel() == module.weight[0].numel() if kind == "down" else tensor.shape[0] == module.weight.shape[0]


def from_comfy(tensors: dict[str, torch.Tensor], transformer: nn.Module, rank: int | None = None,
               alpha: float | None = None, name: str = "lora_file") -> PeftLoRA:
    """A ComfyUI Wan LoRA (ours or core TrainLoraNode's) as a :class:`PeftLoRA` for ``transformer``; ValueErrors naming ``name``.

    ``rank``: the rank the adapter must have (None: the file's). ``alpha``: the adapter's lora_alpha (None: the
    file's, if all its modules share one scale, else the rank); every module's own scale is folded into its B.
    """
    if not tensors:
        raise ValueError(f"{name}: holds no tensors; pick a LoRA file.")
    parts: dict[str, dict[str, torch.Tensor]] = {}
    foreign = []
    for key, tensor in tensors.items():
        suffix = next((s for s in SUFFIXES if key.endswith(s)), None)
        if suffix is None:
            raise ValueError(f"{name}: '{key}' is not a LoRA tensor (lora_up/lora_down/alpha, .diff, .diff_b): LoHa, "
                             "LoKr, OFT, DoRA and lora_mid files cannot become a peft LoRA; train one with the LoRA "
                             "algorithm.")
        kind = SUFFIXES[suffix]
        target = diffusers_module(key[len(PREFIX):-len(suffix)]) if key.startswith(PREFIX) else None
        tensor = _finite_float(tensor, key, name)
        if target is None or not _fits(_module(transformer, target), kind, tensor):
            foreign.append(key)
            continue
        if kind in parts.setdefault(target, {}):
            raise ValueError(f"{name}: module '{key[:-len(suffix)]}' has its {kind} twice (lora_up and lora_B names "
                             "at once); keep one naming.")
        parts[target][kind] = tensor
    if foreign:
        raise ValueError(f"{name}: {len(foreign)} of its {len(tensors)} tensors (e.g. '{sorted(foreign)[0]}') match no "
                         f"module of this {type(transformer).__name__} (names or shapes): it is a LoRA for another "
                         "architecture or model size. Use a LoRA trained on this model.")
    pairs = {t: kinds for t, kinds in parts.items() if kinds.keys() & {"up", "down", "alpha"}}
    if not pairs:
        raise ValueError(f"{name}: holds no LoRA (no lora_up / lora_down pairs); pick a LoRA file.")
    for target, kinds in pairs.items():
        _missing_half(native_module(target), set(kinds), name)
        if kinds["up"][0].numel() != kinds["down"].shape[0]:
            raise ValueError(f"{name}: module '{native_module(target)}' has a rank-{kinds['up'][0].numel()} up and a "
                             f"rank-{kinds['down'].shape[0]} down half; the file is damaged, save or train it again.")
    ranks = {t: kinds["down"].shape[0] for t, kinds in pairs.items()}
    if len(set(ranks.values())) > 1:
        raise ValueError(f"{name}: its modules have different ranks ({sorted(set(ranks.values()))}); a peft adapter has "
                         "one rank. Use a LoRA of one rank.")
    found = next(iter(ranks.values()))
    if rank is not None and found != check_count(rank, "rank", 1, MAX_LORA_RANK):
        raise ValueError(f"{name}: a rank-{found} LoRA, but rank {rank} was asked for; use a rank-{rank} LoRA or ask "
                         f"for rank {found}.")
    # ComfyUI: scale alpha / rank per module, 1 without an alpha
    scales = {t: float(k["alpha"]) / found if "alpha" in k else 1.0 for t, k in pairs.items()}
    if alpha is None:
        alpha = next(iter(scales.values())) * found if len(set(scales.values())) == 1 else float(found)
    alpha = _check_alpha(alpha, name)
    weights = {}
    for target, kinds in pairs.items():
        shape = _module(transformer, target).weight.shape
        weights[target + PEFT_SUFFIXES["down"]] = kinds["down"].reshape(found, *shape[1:])
        # peft keeps a convolution's halves as kernels: A with the layer's kernel, B with a 1x1x1 one
        up = kinds["up"].reshape(shape[0], found, *[1] * (len(shape) - 2))
        weights[target + PEFT_SUFFIXES["up"]] = up * (scales[target] * found / alpha)
    differences = {f"{t}.{kind}": kinds[kind] for t, kinds in parts.items() for kind in DIFFERENCE_SUFFIXES
                   if kind in kinds}
    return peft_lora(weights, found, alpha, differences, name)


def save_comfy_lora(lora: PeftLoRA, path: str | os.PathLike) -> Path:
    """Write ``lora`` atomically as a safetensors file in ComfyUI's LoRA keys (core LoraLoaderModelOnly applies it)."""
    metadata = {"format": COMFY_LORA_FORMAT, "rank": str(lora.rank), "alpha": repr(float(lora.alpha)),
                "architecture": "wan"}
    return atomic_save_safetensors(to_comfy(lora), path, metadata)


def load_comfy_lora(path: str | os.PathLike, transformer: nn.Module, rank: int | None = None,
                    alpha: float | None = None, name: str = "lora_file") -> PeftLoRA:
    """Read a ComfyUI Wan LoRA file (:func:`save_comfy_lora`'s or core TrainLoraNode's) for ``transformer``; see :func:`from_comfy`."""
    tensors, _ = load_safetensors(path, name)
    return from_comfy(tensors, transformer, rank, alpha, f"{name}: {path}")


def apply_differences(transformer: nn.Module, lora: PeftLoRA) -> None:
    """Add ``lora.differences`` to ``transformer``'s parameters in place (give it a copy to keep the original)."""
    with torch.no_grad():
        for key, difference in lora.differences.items():
            module, _, kind = key.rpartition(".")
            if not _fits(_module(transformer, module), kind, difference):
                raise ValueError(f"lora: difference '{key}' {list(difference.shape)} has no parameter of its shape in "
                                 f"this {type(transformer).__name__}; load the LoRA for this transformer.")
            parameter = getattr(_module(transformer, module), kind)
            parameter.add_(difference.to(parameter))
