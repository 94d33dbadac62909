"""The scene critic of training (memory/train/adversarial.py): what it learns, what it charges, how it is saved."""
from __future__ import annotations

import json

import pytest
import torch

from memory.data.episode import SAMPLE_EPISODE
from memory.train.adversarial import CRITIC_FILE, Adversary, SceneCritic, critic_hinge, generator_hinge
from memory.train.loop import TrainConfig, train
from test_world_model import tiny_model_dir  # noqa: F401  (a fixture)


def _frames(seed: int, n: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(textured frames, the same frames blurred flat, their scene references), all [n,3,32,32] in [-1,1]."""
    generator = torch.Generator().manual_seed(seed)
    textured = torch.rand(n, 3, 32, 32, generator=generator) * 2 - 1
    flat = torch.nn.functional.avg_pool2d(textured, 9, 1, 4)
    reference = torch.rand(n, 3, 32, 32, generator=generator) * 2 - 1
    return textured, flat, reference


def test_critic_gives_patch_logits_of_an_eighth_of_the_frame():
    torch.manual_seed(0)
    logits = SceneCritic()(torch.zeros(2, 3, 64, 64), torch.zeros(2, 3, 64, 64))
    assert logits.shape == (2, 1, 8, 8)


def test_hinge_losses():
    """The critic's hinge is 0 once true logits are ≥ 1 and predicted ≤ -1; the generator's is minus the mean logit."""
    assert critic_hinge(torch.full((4,), 1.5), torch.full((4,), -2.0)) == 0
    assert critic_hinge(torch.zeros(4), torch.zeros(4)) == 2
    assert generator_hinge(torch.tensor([1.0, 3.0])) == -2


def test_critic_learns_to_tell_textured_from_blurred_frames():
    torch.manual_seed(0)
    adversary = Adversary(1.0, lr=1e-3)
    real, fake, reference = _frames(0)
    seen = torch.ones(len(real), dtype=torch.bool)
    for _ in range(60):
        adversary.loss(fake, real, reference, seen)
    held_real, held_fake, held_reference = _frames(1)
    with torch.no_grad():
        assert adversary.critic(held_real, held_reference).mean() > adversary.critic(held_fake, held_reference).mean() + 0.5
    assert adversary.last_critic_loss < 1.5  # from 2 (chance)


def test_generator_term_reaches_the_frames_only_and_spares_the_null_memory():
    """Gradient flows to the predicted frames, never into the critic; frames of unseen scenes are not charged."""
    torch.manual_seed(0)
    adversary = Adversary(0.5)
    real, fake, reference = _frames(2, n=4)
    predicted = fake.clone().requires_grad_(True)
    seen = torch.tensor([True, False, True, False])
    term = adversary.loss(predicted, real, reference, seen)
    adversary.optimizer.zero_grad(set_to_none=True)
    term.backward()
    assert all(p.grad is None for p in adversary.critic.parameters())
    assert predicted.grad[seen].abs().sum() > 0 and predicted.grad[~seen].abs().sum() == 0
    with torch.no_grad():
        logits = adversary.critic(fake, reference).flatten(1).mean(1)
    # (spectral normalisation refines its estimate at every forward in training mode, hence the tolerance)
    assert torch.isclose(term, -0.5 * logits[seen].mean(), rtol=1e-2)
    # a critic step ran before the term: its parameters were trained
    assert adversary.optimizer.state_dict()["state"]


def test_adversary_saves_and_restores_critic_and_optimizer(tmp_path):
    torch.manual_seed(0)
    adversary = Adversary(1.0)
    real, fake, reference = _frames(3, n=2)
    for _ in range(2):
        adversary.loss(fake, real, reference, torch.ones(2, dtype=torch.bool))
    adversary.save(tmp_path)
    torch.manual_seed(1)
    restored = Adversary(1.0)
    restored.load(tmp_path)
    with torch.no_grad():
        assert torch.equal(restored.critic(real, reference), adversary.critic(real, reference))
    expected, got = adversary.optimizer.state_dict()["state"], restored.optimizer.state_dict()["state"]
    assert expected.keys() == got.keys()
    assert all(torch.equal(expected[i][k], got[i][k]) for i in expected for k in expected[i])
    with pytest.raises(ValueError, match=f"adversarial_weight: .* has no {CRITIC_FILE}"):
        Adversary(1.0).load(tmp_path / "elsewhere")


def test_training_with_the_critic_saves_it_and_resumes(tmp_path, tiny_model_dir):  # noqa: F811
    data = tmp_path / "data"
    data.mkdir()
    (data / "ep.safetensors").symlink_to(SAMPLE_EPISODE)
    config = TrainConfig(data=data, out=tmp_path / "run", steps=2, batch_size=2, save_every=1, workers=0, seed=3,
                         init=tiny_model_dir, self_forcing=False, adversarial_weight=0.1)
    checkpoint = train(config)
    assert (checkpoint / CRITIC_FILE).is_file()
    train(TrainConfig(**{**config.__dict__, "steps": 3}))
    log = [json.loads(line) for line in (tmp_path / "run" / "loss.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3]
    assert all(0 <= entry["critic"] <= 10 for entry in log)
    # a run started without the critic cannot be resumed with one: there is no critic state to continue
    plain = TrainConfig(**{**config.__dict__, "out": tmp_path / "plain", "adversarial_weight": 0.0})
    train(plain)
    with pytest.raises(ValueError, match="adversarial_weight"):
        train(TrainConfig(**{**plain.__dict__, "steps": 3, "adversarial_weight": 0.1}))


def test_training_refuses_a_bad_adversarial_weight(tmp_path, tiny_model_dir):  # noqa: F811
    for bad in (-0.1, "1", True):
        with pytest.raises(ValueError, match="adversarial_weight"):
            train(TrainConfig(data=tmp_path, out=tmp_path / "run", steps=1, workers=0, adversarial_weight=bad))
    with pytest.raises(ValueError, match="adversarial_weight: the variance head"):
        train(TrainConfig(data=tmp_path, out=tmp_path / "run", steps=1, workers=0, init=tiny_model_dir,
                          variance_head=True, adversarial_weight=0.1))
    assert not (tmp_path / "run" / "checkpoint").exists()
