"""The training objective of MosaicDiT, shared by the backbone's training and the episodic LoRA's."""
from __future__ import annotations

import kornia
import torch
from diffusers import DDPMScheduler
from torch.nn.parallel import DistributedDataParallel

from ..world.backbones.mosaic_dit import MosaicDiT
from ..world.rgbd import depth_loss
from .adversarial import Adversary
from .distributed import ONE_PROCESS, Ranks

NULL_CONTEXT = 0.2
# of the null-context windows, the share whose mosaic is removed too: the experts' null memory ("nothing
# remembered", Conditioning.without_memory) must be a trained input, not 1.5 % of windows by coincidence
NULL_MOSAIC = 0.5
# clean context frames are noised to a small random level this often (with that timestep given), so that
# context the model generated itself, never quite clean, is an input it has seen
CONTEXT_NOISE = 0.3
CONTEXT_NOISE_MAX_T = 100
# covered pixels weigh more: where the mosaic is right, the network must keep it (issue 10: never worse
# than its geometry), and there the residual error is small, so an unweighted loss barely notices blur
COVERED_WEIGHT = 2.0
LAST_TIMESTEP_SHARE = 0.5
# a symmetric log-depth loss blends "sky or near wall" pixels into a far guess that dominates AbsRel;
# the depth loss is the relative error instead (rgbd.depth_loss)
DEPTH_WEIGHT = 0.5
# the weight of the gradient difference of the colours (Mathieu et al. 2016, "beyond mean square error"): MSE
# alone is minimised by the mean of all plausible frames, a blur wherever the memory leaves the frame open. Off by
# default, as STATISTICS_WEIGHT: the episodic LoRA and run v5 train without them; the shipped weights' continuation
# (run v16 in the model card) gives both explicitly
GRADIENT_WEIGHT = 0.0
# the weight of the difference of each frame's colour and texture statistics (statistics_difference): per-pixel
# losses, the gradient difference included, still pay least for a flat guess where an edge's place is unknown;
# statistics without a place pay for the flatness itself, so the network may draw texture from its noise input
STATISTICS_WEIGHT = 0.0
# the weight of the scene critic's term (adversarial.Adversary): off by default like the two above
ADVERSARIAL_WEIGHT = 0.0


def noised_inputs(network: MosaicDiT, scheduler: DDPMScheduler, clean: torch.Tensor, mosaic: torch.Tensor,
                  generator: torch.Generator, ranks: Ranks = ONE_PROCESS) -> tuple[torch.Tensor, ...]:
    """(noisy frames, timesteps, mosaic) of a batch of windows as training draws them.

    Context frames are clean, slightly noised (CONTEXT_NOISE), or pure noise at rate NULL_CONTEXT, and
    then often without a mosaic as well (the null memory). Under data parallelism the windows are this
    process's rows of a global batch split evenly over ``ranks``, and the draws are the whole batch's.
    """
    b, f = clean.shape[:2]
    total, rows = b * ranks.world_size, slice(ranks.rank * b, (ranks.rank + 1) * b)

    def draw(values: torch.Tensor) -> torch.Tensor:
        """This process's rows of draws made for the whole batch: a window's noise must not depend on who trains it."""
        return values[rows].to(clean.device)

    c = network.config.context_frames
    top = scheduler.config.num_train_timesteps - 1
    uniform = draw(torch.randint(0, top + 1, (total, 1), generator=generator))
    # half the samples at the last timestep: few-step sampling starts there, and it is the pure regression
    # from mosaic and context whose mean maximises PSNR
    last = draw(torch.rand(total, 1, generator=generator) < LAST_TIMESTEP_SHARE)
    t_target = torch.where(last, top, uniform).expand(b, f - c)
    null = draw(torch.rand(total, 1, generator=generator) < NULL_CONTEXT)
    light = draw(torch.randint(1, CONTEXT_NOISE_MAX_T + 1, (total, 1), generator=generator))
    noised = draw(torch.rand(total, 1, generator=generator) < CONTEXT_NOISE)
    t_context = torch.where(null, top, torch.where(noised, light, 0)).expand(b, c)
    no_mosaic = null[:, 0] & draw(torch.rand(total, generator=generator) < NULL_MOSAIC)
    # the empty mosaic's channels are all zero (Mosaic.empty().channels())
    mosaic = torch.where(no_mosaic[:, None, None, None, None], torch.zeros_like(mosaic), mosaic)
    timesteps = torch.cat([t_context, t_target], 1)
    noise = draw(torch.randn((total, *clean.shape[1:]), generator=generator))
    noisy = scheduler.add_noise(clean.flatten(0, 1), noise.flatten(0, 1), timesteps.flatten()).view_as(clean)
    noisy = torch.where((timesteps == 0)[:, :, None, None, None], clean, noisy)
    return noisy, timesteps, mosaic


def gradient_magnitudes(images: torch.Tensor) -> torch.Tensor:
    """|∂x| and |∂y| of each channel of images [...,C,H,W], as [N,C,2,H,W] with the leading dimensions flattened."""
    return kornia.filters.spatial_gradient(images.flatten(0, -4), mode="diff", normalized=False).abs()


def gradient_difference(predicted: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the image gradients' magnitudes of images [...,C,H,W]: blur and speckle both cost."""
    return (gradient_magnitudes(predicted) - gradient_magnitudes(true)).abs().mean()


def frame_statistics(images: torch.Tensor) -> torch.Tensor:
    """Per image [...,3,H,W]: mean colour, colour covariance (6 values) and mean |∂x|, |∂y| per channel, [...,15]."""
    flat = images.flatten(-2)
    mean = flat.mean(-1)
    centred = flat - mean[..., None]
    covariance = centred @ centred.transpose(-1, -2) / flat.shape[-1]
    rows, cols = torch.triu_indices(3, 3)
    energy = gradient_magnitudes(images).mean((-1, -2)).flatten(-2).view(*images.shape[:-3], -1)
    return torch.cat([mean, covariance[..., rows, cols], energy], -1)


def statistics_difference(predicted: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of the frame_statistics of predicted and true images [...,3,H,W]."""
    return (frame_statistics(predicted) - frame_statistics(true)).abs().mean()


def training_loss(model: MosaicDiT | DistributedDataParallel, scheduler: DDPMScheduler, clean: torch.Tensor,
                  mosaic: torch.Tensor, rays: torch.Tensor, generator: torch.Generator,
                  ranks: Ranks = ONE_PROCESS, gradient_weight: float = 0.0,
                  statistics_weight: float = 0.0, adversary: Adversary | None = None) -> torch.Tensor:
    """Coverage-weighted colour MSE plus relative depth error of the predicted clean targets (inputs: noised_inputs).

    ``gradient_weight`` and ``statistics_weight`` add that many times the colours' gradient difference and
    frame-statistics difference; ``adversary`` adds its scene critic's term (and trains the critic one step).
    Averaged over the processes, the loss is the one process's loss of the whole batch.
    """
    network = model.module if isinstance(model, DistributedDataParallel) else model
    c = network.config.context_frames
    noisy, timesteps, mosaic = noised_inputs(network, scheduler, clean, mosaic, generator, ranks)
    pred = model(noisy, timesteps, mosaic, rays)
    error = pred[:, c:, :3] - clean[:, c:, :3]
    weight = 1 + (COVERED_WEIGHT - 1) * mosaic[:, c:, 4:5]
    # normalised by the whole batch's mean weight, so that the processes' losses average to the whole batch's
    loss = ((weight * error.pow(2)).mean() / ranks.mean(weight.mean())
            + DEPTH_WEIGHT * depth_loss(pred[:, c:, 3], clean[:, c:, 3]).mean())
    if gradient_weight:
        loss = loss + gradient_weight * gradient_difference(pred[:, c:, :3], clean[:, c:, :3])
    if statistics_weight:
        loss = loss + statistics_weight * statistics_difference(pred[:, c:, :3], clean[:, c:, :3])
    if adversary is not None:
        f = pred.shape[1] - c
        reference = clean[:, c - 1, :3].repeat_interleave(f, 0)
        seen = (timesteps[:, c - 1] < scheduler.config.num_train_timesteps - 1).repeat_interleave(f, 0)
        loss = loss + adversary.loss(pred[:, c:, :3].flatten(0, 1), clean[:, c:, :3].flatten(0, 1), reference, seen)
    return loss


def variance_loss(model: MosaicDiT | DistributedDataParallel, scheduler: DDPMScheduler, clean: torch.Tensor,
                  mosaic: torch.Tensor, rays: torch.Tensor, generator: torch.Generator,
                  ranks: Ranks = ONE_PROCESS) -> torch.Tensor:
    """Gaussian negative log-likelihood of the clean targets under the predicted mean (held fixed) and log-variance.

    Its minimum is the log of the expected squared error of each pixel's estimate, so the head learns
    how wrong the network tends to be there: in covered or uncovered space, on observed or generated
    mosaics, under the null memory. The same draws as training_loss.
    """
    network = model.module if isinstance(model, DistributedDataParallel) else model
    c = network.config.context_frames
    noisy, timesteps, mosaic = noised_inputs(network, scheduler, clean, mosaic, generator, ranks)
    pred, log_variance = model(noisy, timesteps, mosaic, rays, with_variance=True)
    shared = pred.shape[2] // log_variance.shape[2]
    log_variance = log_variance[:, c:].repeat_interleave(shared, dim=2)
    error = (pred[:, c:].detach() - clean[:, c:]).pow(2)
    return 0.5 * (error * torch.exp(-log_variance) + log_variance).mean()
