"""Weight-space interpolation between two model folders of one network: a finetune's start and its end (WiSE-FT).

    python -m memory.train.interpolate --start FOLDER --end FOLDER --weight 0.5 --out FOLDER

Finetuning moves a model along a path in weight space. When the end stays in the start's basin, the point between
them keeps much of what the start did well where the finetune lost it, on data neither was chosen on (Wortsman et
al. 2022, "Robust fine-tuning of zero-shot models"). The weight is a setting fixed before measuring, not a pick by
score. A variance head that only the start has (the finetune trained the network without one) is carried over
as it is: it was trained on the start's frozen network, which the mix stays near.
"""
from __future__ import annotations

import argparse
import copy
import shutil
from pathlib import Path

import torch

from ..world.backbones.mosaic_dit import MosaicDiT
from ..world.world_model import WorldModel, load_world_model, save_world_model


def check_weight(weight: object) -> float:
    """``weight`` if it is a number in [0, 1], else a ValueError naming ``--weight``."""
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1:
        raise ValueError(f"--weight: must be a number in [0, 1] (0 keeps --start, 1 keeps --end), got {weight!r}.")
    return float(weight)


def interpolate_weights(start: MosaicDiT, end: MosaicDiT, weight: float) -> MosaicDiT:
    """A copy of ``start`` whose every tensor is (1 - weight)·start + weight·end, a head only ``start`` has kept as it is.

    ValueError if the networks differ in anything but that head.
    """
    weight = check_weight(weight)
    settings = {k: v for k, v in start.config.items() if not k.startswith("_")}
    other = {k: v for k, v in end.config.items() if not k.startswith("_")}
    if not other.get("variance_channels"):
        other["variance_channels"] = settings.get("variance_channels", 0)
    differ = sorted(k for k in settings.keys() | other.keys() if settings.get(k) != other.get(k))
    if differ:
        raise ValueError(f"--end: its network differs from --start's in {', '.join(differ)}; interpolate only the "
                         "start and end of one finetune (same config.json settings; only --start may have a "
                         "variance head).")
    mixed = copy.deepcopy(start)
    ends = end.state_dict()
    with torch.no_grad():
        mixed.load_state_dict({name: torch.lerp(tensor, ends[name], weight) if name in ends else tensor
                               for name, tensor in start.state_dict().items()})
    return mixed


def load_input(folder: Path, name: str) -> WorldModel:
    """The model folder given as ``name``; its loader's ValueError is raised again with that input's name first."""
    try:
        return load_world_model(folder)
    except ValueError as err:
        raise ValueError(f"{name}: {err}") from err


def write_interpolation(start: Path, end: Path, weight: float, out: Path) -> Path:
    """Interpolate two model folders and write the result as the new model folder ``out`` (all or nothing)."""
    weight = check_weight(weight)
    if out.exists():
        raise ValueError(f"--out: {out} already exists; choose a new folder (nothing is overwritten).")
    first, last = load_input(start, "--start"), load_input(end, "--end")
    mixed = interpolate_weights(first.network, last.network, weight)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_world_model(mixed, tmp, first.schedule)
    tmp.rename(out)
    return out


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: write ``--out``, the interpolation of ``--start`` and ``--end`` at ``--weight``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--start", type=Path, required=True, help="model folder the finetune started from")
    parser.add_argument("--end", type=Path, required=True, help="model folder the finetune ended at")
    parser.add_argument("--weight", type=float, required=True, help="0 keeps --start, 1 keeps --end")
    parser.add_argument("--out", type=Path, required=True, help="new model folder to write")
    args = parser.parse_args(argv)
    try:
        print(f"wrote {write_interpolation(args.start, args.end, args.weight, args.out)}")
    except ValueError as err:
        parser.error(str(err))


if __name__ == "__main__":
    main()
