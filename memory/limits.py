"""Documented limits on how much work one input may ask for, and the checks of image batches entering the engine.

Every limit is far above what a navigation or scene-editing job needs on a GPU, and low enough that
a typo (``forward 1e6``, a 1e9-pixel size) is refused at once instead of freezing ComfyUI or
exhausting memory. Checks raise ``ValueError`` naming the node input (``name``) and the limit.
"""
from __future__ import annotations

import json
import re

import torch

MAX_PATH_FRAMES = 100_000          # cameras in one path (about 55 min of video at 30 fps)
MAX_IMAGE_SIDE = 4096              # pixels along either side of a frame or rendering
MAX_IMAGE_PIXELS = 4096 * 4096     # pixels of one frame
MAX_TEXT_CHARS = 1_000_000         # characters of a moves or keyframes text
MAX_COMMANDS = 10_000              # moves or keyframes in one text
MAX_JSON_CHARS = 32_000_000        # characters of a JSON document (a 100k-frame path is ~20 MB)
MAX_JSON_DEPTH = 8                 # nesting of a JSON document (a camera path needs 4)
MAX_PATCHES = 10_000_000           # patches in one memory (4.2 GB at 416 bytes each)
MAX_STEPS = 1000                   # denoising steps per chunk (the training schedule's length)
MAX_SEED = 0xFFFFFFFFFFFFFFFF      # ComfyUI's seed range is 0..2**64-1
MAX_LORA_RANK = 512                # episodic LoRA rank (the paper uses 64; 512 is already a full-rank update of the embedded model)
MAX_LORA_STEPS = 100_000           # LoRA training steps in one call (the paper trains 500)
MAX_COORDINATE_M = 100_000.0       # metres from the world origin along any axis (float32 still resolves 8 mm there)
MAX_ANGLE_DEG = 36_000.0           # degrees of a yaw or orbit angle (100 turns; float32 still resolves 0.004 deg)

_ESCAPE = re.compile(r"\\.", re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_LITERAL = re.compile(r"true|false|null|NaN|Infinity")


def check_count(value: object, name: str, low: int, high: int, what: str = "") -> int:
    """``value`` as an int within ``low..high``, else a ValueError naming ``name`` and the range."""
    if isinstance(value, bool) or not isinstance(value, int) and not (isinstance(value, float) and value.is_integer()):
        raise ValueError(f"{name}: must be a whole number{what and ' of ' + what}, got {value!r}.")
    if not low <= int(value) <= high:
        raise ValueError(f"{name}: {int(value)} is outside the allowed range {low}..{high}{what and ' ' + what}; "
                         f"choose a value in that range.")
    return int(value)


def check_image_size(height: int, width: int, name: str) -> None:
    """ValueError naming ``name`` unless height and width are positive and within the image limits."""
    for side, value in (("height", height), ("width", width)):
        check_count(value, f"{name} ({side})", 1, MAX_IMAGE_SIDE, "pixels")
    if height * width > MAX_IMAGE_PIXELS:
        raise ValueError(f"{name}: {height}x{width} pixels is more than the limit of {MAX_IMAGE_PIXELS} pixels "
                         "per frame; use a smaller size.")


def check_frames(frames: object, name: str) -> torch.Tensor:
    """An IMAGE batch [T,H,W,3] of finite values in 0..1, else a ValueError naming ``name`` and the fix."""
    if not isinstance(frames, torch.Tensor):
        raise ValueError(f"{name}: expected an IMAGE (a [T,H,W,3] tensor), got {type(frames).__name__}; "
                         "connect an IMAGE output.")
    if frames.ndim != 4 or frames.shape[0] == 0:
        raise ValueError(f"{name}: expected an IMAGE batch [T,H,W,3] with at least one frame, "
                         f"got shape {list(frames.shape)}.")
    if frames.shape[-1] != 3:
        raise ValueError(f"{name}: frames have {frames.shape[-1]} channels, 3 (RGB) are needed; drop the alpha "
                         "channel or convert the image to RGB first.")
    check_image_size(int(frames.shape[1]), int(frames.shape[2]), name)
    if not frames.is_floating_point():
        raise ValueError(f"{name}: frames must be float values in 0..1, got dtype {frames.dtype}.")
    values = frames.float()
    if not torch.isfinite(values).all():
        raise ValueError(f"{name}: frames contain NaN or inf pixels; fix the node that made them.")
    if values.min() < 0 or values.max() > 1:
        raise ValueError(f"{name}: pixel values must lie in 0..1, got {float(values.min()):.3g}.."
                         f"{float(values.max()):.3g}; clamp or normalise the frames first.")
    return values



def json_skeleton(text: str) -> str:
    """JSON ``text`` without its strings, in linear time: the brackets and literals of its structure."""
    # Escapes go first, so every quote left delimits a string; a regex for whole strings would instead
    # rescan the rest of the text from every quote of an unterminated one (quadratic time).
    return "".join(_ESCAPE.sub("", text).split('"')[::2])


def parse_json(text: object, name: str, literals: bool = True) -> object:
    """JSON ``text`` parsed after its size and nesting were checked, so a huge or deep document cannot stall a node.

    ``literals=False`` also refuses true, false, null, NaN and Infinity, for documents of numbers only
    (Python's json reads NaN, and torch would read true as 1.0).
    """
    if not isinstance(text, str):
        raise ValueError(f"{name}: expected text, got {type(text).__name__}; give the JSON text this pack writes.")
    if len(text) > MAX_JSON_CHARS:
        raise ValueError(f"{name}: {len(text)} characters is more than the limit of {MAX_JSON_CHARS}; "
                         "give a smaller document.")
    skeleton = json_skeleton(text)
    depth = 0
    for bracket in _NOT_BRACKET.sub("", skeleton):
        depth += 1 if bracket in "[{" else -1
        if depth > MAX_JSON_DEPTH:
            raise ValueError(f"{name}: brackets nest more than {MAX_JSON_DEPTH} levels deep; "
                             "give the flat document this pack writes.")
    literal = None if literals else _LITERAL.search(skeleton)
    if literal:
        raise ValueError(f"{name}: '{literal.group()}' is not a number; this document takes finite numbers only.")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{name}: not valid JSON ({err}); give the text this pack writes.") from None
