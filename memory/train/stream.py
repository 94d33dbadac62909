"""The endless stream of training windows, a share of them conditioned on the model's own rollouts (self-forcing)."""
from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import torch

from ..data.episode import Episode
from ..geometry.camera import CameraPath
from ..limits import MAX_SEED
from ..world.rollout import BASE_ONLY, rollout
from ..world.world_model import WEIGHTS_NAME, WorldModel, load_world_model
from .recolour import RECOLOUR, recoloured
from .windows import DEPTH_UNKNOWN, TARGET_FRAMES, Window, make_window, mosaic_sources

# share of draws whose windows read context frames and base mosaic from the model's own rollout (self-forcing;
# with several windows per rollout, about half the windows): long walks condition on generated frames, so training
# must too, or small errors compound into colour drift and blur
SELF_FORCED = 0.2
# rollouts as deep as the drift shows up (32 frames): a window after each chunk, so the cost per window stays
# one chunk's rollout however deep they go
MAX_FORCED_CHUNKS = 8
SHUFFLE_BUFFER = 64
# windows between checks for a newer checkpoint to roll out with (the worker's copy lags training by this much)
RELOAD_EVERY = 64


def self_forced(model: WorldModel, episode: Episode, start: int, chunks: int, seed: int) -> Episode:
    """``episode`` with the ``chunks`` x TARGET_FRAMES frames before ``start + context`` replaced by the model's base rollout.

    The rollout starts from the true frames (and depth) just before them and follows the recorded
    cameras, as a long walk does; generated frames are stored as uint8, as every frame is.
    """
    c = model.context_frames
    first = start - chunks * TARGET_FRAMES
    path = CameraPath(episode.c2w[first:start + c], episode.K, *episode.rgb.shape[1:3])
    truth = slice(first, first + c)
    chunks_out = list(rollout(model, BASE_ONLY, episode.rgb[truth].float() / 255, episode.depth[truth], path,
                              chunk=TARGET_FRAMES, seed=seed))[1:]
    generated = slice(first + c, start + c)
    rgb, depth = episode.rgb.clone(), episode.depth.clone()
    rgb[generated] = (torch.cat([k.rgb for k in chunks_out]).clamp(0, 1) * 255).round().to(torch.uint8)
    depth[generated] = torch.cat([k.depth for k in chunks_out])
    return replace(episode, rgb=rgb, depth=depth)


class WindowStream(torch.utils.data.IterableDataset):
    """An endless, seeded stream of random windows from a list of episodes.

    With a ``rollout_model`` folder (the run's checkpoint, reloaded as training saves it), a share
    SELF_FORCED of the draws read context and base mosaic from the model's own rollout of 1 ..
    ``forced_chunks`` chunks, one window after each chunk; targets stay the true frames. A share
    ``recolour`` of the draws come from an episode whose colours are all mapped alike (``recoloured``).
    """

    def __init__(self, episodes: list[Episode], context_frames: int, seed: int, rollout_model: Path | None = None,
                 forced_chunks: int = MAX_FORCED_CHUNKS, recolour: float = RECOLOUR):
        super().__init__()
        self.episodes, self.context_frames, self.seed = episodes, context_frames, seed
        self.rollout_model, self.forced_chunks, self.recolour = rollout_model, forced_chunks, recolour
        self._model: WorldModel | None = None
        self._loaded_mtime = -1.0

    def _model_for_rollouts(self) -> WorldModel | None:
        """The newest saved weights (reloaded when the checkpoint changed), or None without a rollout model."""
        if self.rollout_model is None:
            return None
        weights = self.rollout_model / f"{WEIGHTS_NAME}.safetensors"
        try:
            mtime = weights.stat().st_mtime
            if mtime != self._loaded_mtime:
                self._model = load_world_model(self.rollout_model)
                self._model.network.eval()
                self._loaded_mtime = mtime
        except (OSError, ValueError):
            if self._model is None:
                raise
            # the checkpoint is being swapped in: keep rolling out with the copy we have
        return self._model

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        rng = random.Random(self.seed * 1000 + (info.id if info else 0))
        # one rollout yields up to forced_chunks windows of one walk: shuffled, so a batch mixes walks
        buffer = []
        for window in self._windows(rng):
            buffer.append(window)
            if len(buffer) >= SHUFFLE_BUFFER:
                window = buffer.pop(rng.randrange(len(buffer)))
                yield window.clean, window.mosaic, window.rays

    def _windows(self, rng: random.Random) -> Iterator[Window]:
        """Windows in the order they are made: a self-forced rollout's windows one after another."""
        count = 0
        model = self._model_for_rollouts()
        while True:
            episode = rng.choice(self.episodes)
            if rng.random() < self.recolour:
                episode = recoloured(episode, rng)
            c = self.context_frames
            start = rng.randrange(0, len(episode) - c - TARGET_FRAMES + 1)
            depth_known = rng.random() > DEPTH_UNKNOWN
            chunks = min(self.forced_chunks, start // TARGET_FRAMES)
            if model is not None and chunks and rng.random() < SELF_FORCED:
                chunks = rng.randint(1, chunks)
                with torch.inference_mode():
                    generated = self_forced(model, episode, start, chunks, rng.randrange(MAX_SEED + 1))
                # one rollout serves a window after each of its chunks: 1 .. chunks deep into the walk
                starts = [start - k * TARGET_FRAMES for k in reversed(range(chunks))]
                made = range(start - chunks * TARGET_FRAMES + c, start + c)
                windows = [make_window(generated, s, mosaic_sources(generated, s, c, rng), c, depth_known, truth=episode,
                                       generated=made, generated_confidence=model.generated_confidence)
                           for s in starts]
            else:
                windows = [make_window(episode, start, mosaic_sources(episode, start, c, rng), c, depth_known)]
            for window in windows:
                count += 1
                if count % RELOAD_EVERY == 0:
                    model = self._model_for_rollouts()
                yield window
