"""A scene-conditioned critic for training: predicted frames must look like frames of the scene their context shows.

Per-pixel and per-frame losses (loss.py) are all minimised by the mean of the plausible frames, a blur where the
memory leaves the frame open. A critic that sees the window's last context frame beside a target frame, true or
predicted, charges for frames that do not belong to that scene (wrong palette, no texture) without fixing where
an edge must be: hinge losses (Lim & Ye 2017) on a spectrally normalised patch critic (Miyato et al. 2018).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from .distributed import ONE_PROCESS, Ranks
from .optimizer_state import load_state, save_state

WIDTHS = (32, 64, 128)
CRITIC_LR = 1e-4
CRITIC_FILE = "critic.safetensors"


class SceneCritic(nn.Module):
    """Patch logits [N,1,H/8,W/8] of target frames [N,3,H,W] given their scene's reference frames [N,3,H,W] (in [-1,1])."""

    def __init__(self, widths: tuple[int, ...] = WIDTHS) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 6
        for width in widths:
            layers += [spectral_norm(nn.Conv2d(channels, width, 4, stride=2, padding=1)), nn.LeakyReLU(0.2)]
            channels = width
        # a 3x3 head on 8x8 patches of a 64x64 frame sees most of it: palette and texture, not one pixel
        layers.append(spectral_norm(nn.Conv2d(channels, 1, 3, padding=1)))
        self.layers = nn.Sequential(*layers)

    def forward(self, frames: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        """Higher where ``frames`` look like true frames of the scene ``reference`` shows."""
        return self.layers(torch.cat([frames, reference], 1))


def critic_hinge(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """The critic's hinge loss: true frames' logits pushed above 1, predicted ones below -1."""
    return torch.relu(1 - real).mean() + torch.relu(1 + fake).mean()


def generator_hinge(fake: torch.Tensor) -> torch.Tensor:
    """The generator's hinge loss: minus the critic's mean logit of predicted frames."""
    return -fake.mean()


class Adversary:
    """A SceneCritic with its own AdamW: :meth:`loss` trains it one step, then returns the generator's term."""

    def __init__(self, weight: float, ranks: Ranks = ONE_PROCESS, lr: float = CRITIC_LR) -> None:
        self.weight = weight
        self.ranks = ranks
        self.critic = SceneCritic().to(ranks.device)
        # the critic as the processes train it: its gradients averaged like the model's
        self.trained = ranks.parallel(self.critic)
        self.optimizer = torch.optim.AdamW(self.critic.parameters(), lr=lr, betas=(0.5, 0.999), weight_decay=0.0)
        self.last_critic_loss = float("nan")

    def loss(self, predicted: torch.Tensor, true: torch.Tensor, reference: torch.Tensor,
             scene_seen: torch.Tensor) -> torch.Tensor:
        """``weight`` × the generator's hinge on ``predicted`` [N,3,H,W], after one critic step on true vs predicted.

        ``reference`` [N,3,H,W] is each frame's scene (its window's last context frame). Frames whose network never
        saw that scene (``scene_seen`` [N] false: the null memory) train the critic but are not charged: "nothing
        remembered" has no scene to match. The generator's term flows back to ``predicted`` only.
        """
        n = predicted.shape[0]
        # true and predicted frames in one forward: a module under DistributedDataParallel runs once per backward
        logits = self.trained(torch.cat([true, predicted.detach()]), torch.cat([reference, reference]))
        objective = critic_hinge(logits[:n], logits[n:])
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        self.optimizer.step()
        self.last_critic_loss = self.ranks.mean(objective.detach()).item()  # the whole batch's
        self.critic.requires_grad_(False)
        try:
            fake = self.critic(predicted, reference).flatten(1).mean(1)
        finally:
            self.critic.requires_grad_(True)
        seen = scene_seen.to(fake.dtype)
        # normalised by the whole batch's count of charged frames, so that the processes' terms average to its term
        return self.weight * generator_hinge(fake * seen) * n / self.ranks.mean(seen.sum()).clamp(min=1)

    def save(self, folder: Path) -> None:
        """Critic weights and optimizer state into ``folder`` (one safetensors file beside the model's checkpoint)."""
        save_state(folder / CRITIC_FILE, self.optimizer, {}, self.critic.state_dict(), prefix="optimizer.")

    def load(self, folder: Path) -> None:
        """Restore what :meth:`save` wrote; a checkpoint without a critic (one started without it) is refused."""
        path = folder / CRITIC_FILE
        if not path.is_file():
            raise ValueError(f"adversarial_weight: the run's checkpoint {folder} has no {CRITIC_FILE} (it was trained "
                             "without the critic); resume it with --adversarial-weight 0, or start a new run folder.")
        weights, _ = load_state(path, self.optimizer, prefix="optimizer.")
        self.critic.load_state_dict(weights)
