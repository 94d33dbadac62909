"""The training run's moving average of the weights: saved as a model folder, continued exactly when a run resumes."""
from __future__ import annotations

import pytest
import torch

from memory.data.episode import SAMPLE_EPISODE
from memory.train.average import AVERAGE_FOLDER
from memory.train.loop import TrainConfig, train
from memory.world.backbones.mosaic_dit import MosaicDiT
from memory.world.world_model import load_world_model, save_world_model


@pytest.fixture()
def run_config(tmp_path):
    """A tiny run on the sample episode that keeps an average with decay 0.5."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "ep.safetensors").symlink_to(SAMPLE_EPISODE)
    torch.manual_seed(0)
    init = save_world_model(MosaicDiT(hidden_size=32, depth=1, num_heads=1, rope_dims=(8, 12, 12)), tmp_path / "init")
    return TrainConfig(data=data, out=tmp_path / "run", steps=1, batch_size=2, save_every=1, workers=0, seed=3,
                       lr=1e-2, init=init, self_forcing=False, ema_decay=0.5)


def weights(folder) -> list[torch.Tensor]:
    """The parameters of the model folder ``folder``, in order."""
    return [p.detach().clone() for p in load_world_model(folder).network.parameters()]


def test_the_average_starts_at_the_weights_and_each_resumed_step_blends_in_the_new_ones(run_config):
    checkpoint = train(run_config)
    raw, average = weights(checkpoint), weights(checkpoint / AVERAGE_FOLDER)
    # diffusers' EMAModel takes the first update whole
    assert all(torch.equal(a, r) for a, r in zip(average, raw))
    for steps in (2, 3):
        previous = average
        train(TrainConfig(**{**run_config.__dict__, "steps": steps}))
        raw, average = weights(checkpoint), weights(checkpoint / AVERAGE_FOLDER)
        # its warm-up decay (1 + k) / (10 + k) after k updates, capped at the run's 0.5: the resumed run continues
        # the saved average and its count of updates, or this fails
        decay = min(0.5, steps / (9 + steps))
        assert any(not torch.equal(a, r) for a, r in zip(average, raw))
        for a, p, r in zip(average, previous, raw):
            assert torch.allclose(a, decay * p + (1 - decay) * r, atol=1e-6)


def test_a_run_keeps_no_average_unless_asked_and_refuses_to_switch_it_on_or_off_when_resumed(run_config, tmp_path):
    plain = TrainConfig(**{**run_config.__dict__, "out": tmp_path / "plain", "ema_decay": 0.0})
    assert not (train(plain) / AVERAGE_FOLDER).exists()
    with pytest.raises(ValueError, match="^ema_decay: the run .* was started without an average"):
        train(TrainConfig(**{**plain.__dict__, "steps": 2, "ema_decay": 0.5}))
    train(run_config)
    with pytest.raises(ValueError, match="^ema_decay: the run .* keeps an average"):
        train(TrainConfig(**{**run_config.__dict__, "steps": 2, "ema_decay": 0.0}))
    for bad in (1.0, -0.1, True, "0.9"):
        with pytest.raises(ValueError, match=r"^ema_decay: must be a number in \[0, 1\)"):
            train(TrainConfig(**{**run_config.__dict__, "out": tmp_path / "bad", "ema_decay": bad}))
    assert not (tmp_path / "bad").exists()
