"""Safe file handling: names confined to a folder, atomic safetensors and JSON writes, checked reads."""
from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

# a saved name adds '_00001_.' and an extension of up to 11 characters to the prefix's last part (NAME_MAX 255)
MAX_NAME_BYTES = 236
MAX_PREFIX_BYTES = 1024


def confined_path(folder: str | os.PathLike, name: str, input_name: str = "filename") -> Path:
    """``folder/name`` resolved, or ``ValueError`` if ``name`` is absolute, has ``..`` or escapes ``folder`` via a symlink."""
    if not name or not str(name).strip():
        raise ValueError(f"{input_name}: empty file name; give a name such as 'scene/memory.safetensors'.")
    raw = Path(name)
    if raw.is_absolute() or name.startswith(("/", "\\")) or (raw.parts and ":" in raw.parts[0]):
        raise ValueError(f"{input_name}: '{name}' is an absolute path; give a name relative to {folder}.")
    if ".." in raw.parts:
        raise ValueError(f"{input_name}: '{name}' contains '..'; give a name inside {folder} without '..'.")
    root = Path(folder).resolve()
    target = (root / raw).resolve()
    if target != root and root not in target.parents:
        raise ValueError(
            f"{input_name}: '{name}' resolves to {target}, outside {root} (a symlink points out); "
            "choose a name inside the folder."
        )
    return target


def check_prefix(prefix: object, folder: str | os.PathLike, input_name: str = "filename_prefix") -> str:
    """``prefix`` if it names new files inside ``folder`` (e.g. ``scenes/memory``), else a ValueError naming the input.

    Refused: empty or dot-only names and parts (``.``, ``./``, ``a/../b``), absolute paths, NUL and other
    control characters, parts longer than a file system allows, and a path through an existing file.
    """
    if not isinstance(prefix, str) or not prefix.strip():
        raise ValueError(f"{input_name}: give a name such as 'scenes/memory', got {prefix!r}.")
    if any(ord(c) < 32 for c in prefix):
        raise ValueError(f"{input_name}: {prefix!r} contains a control character (e.g. NUL); use printable characters.")
    parts = prefix.replace("\\", "/").split("/")
    if len(prefix.encode()) > MAX_PREFIX_BYTES or any(len(part.encode()) > MAX_NAME_BYTES for part in parts):
        raise ValueError(f"{input_name}: {prefix[:40]!r}... is too long (each part at most {MAX_NAME_BYTES} bytes, "
                         f"all at most {MAX_PREFIX_BYTES}); use a shorter name.")
    target = confined_path(folder, prefix, input_name)
    if any(not part.strip(".").strip() for part in parts):
        raise ValueError(f"{input_name}: {prefix!r} has an empty, '.' or '..' part; give a name like 'scenes/memory' "
                         "(folders inside the output folder, then a file name).")
    for parent in target.parents:
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"{input_name}: {prefix!r} goes through {parent.name}, which is a file, not a folder; "
                             "choose another folder name.")
    return prefix


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Create ``path`` by ``write(temp_path)`` then rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        # mkstemp creates files as 0600; a saved result should be as readable as any other output
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def finite_json(value: object) -> object:
    """``value`` with every nan or infinite float as None: results stay strict JSON (null where nothing was measured)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(item) for item in value]
    return value


def write_json(path: str | os.PathLike, value: object, indent: int = 2) -> Path:
    """Write ``value`` to ``path`` as strict JSON (finite_json), atomically."""
    text = json.dumps(finite_json(value), indent=indent, allow_nan=False)
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def atomic_save_safetensors(tensors: dict[str, torch.Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> Path:
    """Write ``tensors`` with string ``metadata`` to ``path`` atomically (temp file + rename)."""
    cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(cpu, tmp, metadata=metadata))


def load_safetensors(path: str | os.PathLike, input_name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of any safetensors file (also one without metadata); a ValueError naming ``input_name`` otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{input_name}: file {path} does not exist; check the name and folder.")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise ValueError(f"{input_name}: {path} is not a readable safetensors file ({err}); it may be corrupted or of another type.") from err
    return tensors, metadata


def read_safetensors(path: str | os.PathLike, expected_format: str, input_name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file whose ``format`` metadata starts with ``expected_format``; clear errors otherwise."""
    tensors, metadata = load_safetensors(path, input_name)
    path = Path(path)
    fmt = metadata.get("format", "")
    if not fmt.startswith(expected_format.split("/")[0]):
        raise ValueError(
            f"{input_name}: {path} has format '{fmt or 'none'}', expected '{expected_format}'; "
            "pick a file written by this pack."
        )
    if fmt != expected_format:
        raise ValueError(f"{input_name}: {path} has version '{fmt}', this pack reads '{expected_format}'; update the pack.")
    return tensors, metadata
