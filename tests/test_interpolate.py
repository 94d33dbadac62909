"""Weight-space interpolation of a finetune's start and end (memory/train/interpolate.py)."""
from __future__ import annotations

import pytest
import torch

from memory.train.interpolate import interpolate_weights, main, write_interpolation
from memory.world.backbones.mosaic_dit import MosaicDiT
from memory.world.world_model import load_world_model, save_world_model

SMALL = {"hidden_size": 32, "depth": 1, "num_heads": 1, "rope_dims": (8, 12, 12)}


def network(seed: int, **changes: object) -> MosaicDiT:
    """A small MosaicDiT with random weights drawn from ``seed`` (every tensor non-zero, so a mix is visible)."""
    torch.manual_seed(seed)
    model = MosaicDiT(**{**SMALL, **changes})
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    return model


def test_each_tensor_is_the_weighted_mix_and_the_ends_are_kept_exactly():
    start, end = network(0), network(1)
    for weight in (0.0, 0.25, 1.0):
        mixed = interpolate_weights(start, end, weight).state_dict()
        for name, a in start.state_dict().items():
            b = end.state_dict()[name]
            assert torch.allclose(mixed[name], (1 - weight) * a + weight * b, atol=1e-6), name
    assert all(torch.equal(a, b) for a, b in zip(interpolate_weights(start, end, 0).parameters(), start.parameters()))
    assert all(torch.equal(a, b) for a, b in zip(interpolate_weights(start, end, 1).parameters(), end.parameters()))
    # the inputs are left as they were
    assert all(torch.equal(a, b) for a, b in zip(start.parameters(), network(0).parameters()))


def test_a_variance_head_only_the_start_has_is_carried_over_and_the_rest_is_mixed():
    start, end = network(0, variance_channels=4), network(1)
    mixed = interpolate_weights(start, end, 0.5)
    assert mixed.config.variance_channels == 4
    for name, a in start.state_dict().items():
        if name.startswith("variance."):
            assert torch.equal(mixed.state_dict()[name], a), name
        else:
            assert torch.allclose(mixed.state_dict()[name], (a + end.state_dict()[name]) / 2, atol=1e-6), name
    with pytest.raises(ValueError, match="^--end: its network differs from --start's in variance_channels"):
        interpolate_weights(network(0), network(1, variance_channels=4), 0.5)
    with pytest.raises(ValueError, match="^--end: its network differs from --start's in variance_channels"):
        interpolate_weights(network(0, variance_channels=4), network(1, variance_channels=2), 0.5)


def test_the_folder_written_loads_as_a_world_model_with_the_starts_schedule(tmp_path):
    start = save_world_model(network(0), tmp_path / "start")
    end = save_world_model(network(1), tmp_path / "end")
    out = write_interpolation(start, end, 0.5, tmp_path / "mixed")
    mixed = load_world_model(out)
    for a, b, m in zip(load_world_model(start).network.parameters(), load_world_model(end).network.parameters(),
                       mixed.network.parameters()):
        assert torch.allclose(m, (a + b) / 2, atol=1e-6)
    assert mixed.schedule.config == load_world_model(start).schedule.config
    assert not (tmp_path / "mixed.tmp").exists()


def test_bad_inputs_are_refused_by_name_and_nothing_is_overwritten(tmp_path, capsys):
    start = save_world_model(network(0), tmp_path / "start")
    other = save_world_model(network(1, depth=2), tmp_path / "other")
    with pytest.raises(ValueError, match="^--end: its network differs from --start's in depth"):
        write_interpolation(start, other, 0.5, tmp_path / "mixed")
    with pytest.raises(ValueError, match="^--start: .*has no config.json"):
        write_interpolation(tmp_path / "missing", start, 0.5, tmp_path / "mixed")
    with pytest.raises(ValueError, match="^--end: .*has no config.json"):
        write_interpolation(start, tmp_path, 0.5, tmp_path / "mixed")
    for bad in (-0.1, 1.5, float("nan"), float("inf"), True, "0.5"):
        with pytest.raises(ValueError, match=r"^--weight: must be a number in \[0, 1\]"):
            write_interpolation(start, start, bad, tmp_path / "mixed")
    assert not (tmp_path / "mixed").exists()
    kept = (tmp_path / "start" / "config.json").read_text()
    with pytest.raises(ValueError, match="^--out: .* already exists"):
        write_interpolation(start, start, 0.5, tmp_path / "start")
    assert (tmp_path / "start" / "config.json").read_text() == kept
    with pytest.raises(SystemExit):
        main(["--start", str(start), "--end", str(other), "--weight", "0.5", "--out", str(tmp_path / "cli")])
    assert "--end: its network differs" in capsys.readouterr().err


def test_the_command_line_writes_the_folder(tmp_path, capsys):
    start = save_world_model(network(0), tmp_path / "start")
    end = save_world_model(network(1), tmp_path / "end")
    main(["--start", str(start), "--end", str(end), "--weight", "0.5", "--out", str(tmp_path / "mixed")])
    assert "wrote" in capsys.readouterr().out
    assert load_world_model(tmp_path / "mixed").network.config.depth == SMALL["depth"]
