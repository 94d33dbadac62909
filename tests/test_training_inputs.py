"""What the embedded model trains on besides true windows: its own rollouts, the null memory, noised context, coverage weights."""
from __future__ import annotations

import torch
from safetensors.torch import save_file

from memory.data.episode import SAMPLE_EPISODE, read_episode
from memory.train import loss as loss_module
from memory.train.loss import training_loss
from memory.train.stream import WindowStream, self_forced
from memory.train.windows import TARGET_FRAMES, make_window
from memory.world.backbones.mosaic_dit import MosaicDiT, training_schedule
from memory.world.rollout import BASE_ONLY, rollout
from memory.world.world_model import load_world_model, save_world_model


def test_self_forced_frames_are_the_base_rollout_and_nothing_else_changes():
    """The frames before a window's targets are what a rollout from the true frames before them generates."""
    episode, model = read_episode(SAMPLE_EPISODE), load_world_model()
    c, start, chunks = model.context_frames, 20, 2
    with torch.inference_mode():
        forced = self_forced(model, episode, start, chunks, seed=5)
        first = start - chunks * TARGET_FRAMES
        path = episode.cameras.slice(first, start + c)
        direct = list(rollout(model, BASE_ONLY, episode.rgb[first:first + c].float() / 255,
                              episode.depth[first:first + c], path, chunk=TARGET_FRAMES, seed=5))[1:]
    generated = slice(first + c, start + c)
    expected = (torch.cat([k.rgb for k in direct]).clamp(0, 1) * 255).round().to(torch.uint8)
    assert torch.equal(forced.rgb[generated], expected)
    assert torch.equal(forced.depth[generated], torch.cat([k.depth for k in direct]))
    assert not torch.equal(forced.rgb[generated], episode.rgb[generated])
    untouched = torch.ones(len(episode), dtype=torch.bool)
    untouched[generated] = False
    assert torch.equal(forced.rgb[untouched], episode.rgb[untouched]) and torch.equal(forced.c2w, episode.c2w)
    # a window after each chunk: context and mosaic from the generated frames, targets the true ones
    for s in (start - TARGET_FRAMES, start):
        window = make_window(forced, s, [s + c - 1], c, truth=episode)
        true_window = make_window(episode, s, [s + c - 1], c)
        assert torch.equal(window.clean[c:], true_window.clean[c:])
        assert not torch.equal(window.clean[:c], true_window.clean[:c]) and not torch.equal(window.mosaic, true_window.mosaic)
    assert not torch.equal(make_window(forced, start - TARGET_FRAMES, [start - 1], c).clean[c:],
                           make_window(episode, start - TARGET_FRAMES, [start - 1], c).clean[c:])


def test_stream_rolls_out_with_the_saved_checkpoint_and_follows_it(tmp_path, monkeypatch):
    """With a rollout model every window is self-forced at SELF_FORCED 1; without one none is."""
    from memory.train import stream as stream_module

    episode = read_episode(SAMPLE_EPISODE)
    torch.manual_seed(0)
    folder = save_world_model(MosaicDiT(hidden_size=32, depth=1, num_heads=1), tmp_path / "checkpoint")
    # a training checkpoint also holds the optimizer's state; the rollout model is read from it all the same
    save_file({"0.exp_avg": torch.zeros(3)}, str(folder / "optimizer.safetensors"))
    calls = []
    real = stream_module.self_forced
    monkeypatch.setattr(stream_module, "self_forced", lambda *a: calls.append(a[2:4]) or real(*a))
    monkeypatch.setattr(stream_module, "SELF_FORCED", 1.0)
    monkeypatch.setattr(stream_module, "SHUFFLE_BUFFER", 4)
    plain = iter(WindowStream([episode], 2, seed=1))
    for _ in range(3):
        next(plain)
    assert calls == []
    forced = iter(WindowStream([episode], 2, seed=1, rollout_model=folder))
    shapes = [tuple(t.shape) for t in next(forced)]
    assert shapes == [(6, 4, 64, 64), (6, 6, 64, 64), (6, 6, 64, 64)]
    for _ in range(5):
        next(forced)
    assert calls and all(1 <= chunks <= stream_module.MAX_FORCED_CHUNKS and start >= chunks * TARGET_FRAMES
                         for start, chunks in calls)
    calls.clear()
    shallow = iter(WindowStream([episode], 2, seed=1, rollout_model=folder, forced_chunks=1))
    for _ in range(6):
        next(shallow)
    assert calls and {chunks for _, chunks in calls} == {1}


def _batch():
    episode = read_episode(SAMPLE_EPISODE)
    windows = [make_window(episode, s, [s + 1], 2) for s in (10, 30)]
    return [torch.stack([getattr(w, k) for w in windows]) for k in ("clean", "mosaic", "rays")]


def test_null_memory_windows_lose_their_mosaic_too(monkeypatch):
    """At NULL_CONTEXT 1 and NULL_MOSAIC 1 the network reads the experts' null memory: noise context, empty mosaic."""
    clean, mosaic, rays = _batch()
    seen = {}

    class Spy(MosaicDiT):
        def forward(self, sample, timesteps, mosaic, rays, *rest):
            seen.update(timesteps=timesteps, mosaic=mosaic)
            return super().forward(sample, timesteps, mosaic, rays, *rest)

    model = Spy(hidden_size=32, depth=1, num_heads=1)
    monkeypatch.setattr(loss_module, "NULL_CONTEXT", 1.0)
    monkeypatch.setattr(loss_module, "NULL_MOSAIC", 1.0)
    training_loss(model, training_schedule(), clean, mosaic, rays, torch.Generator().manual_seed(0))
    assert (seen["timesteps"][:, :2] == 999).all() and float(seen["mosaic"].abs().sum()) == 0
    monkeypatch.setattr(loss_module, "NULL_CONTEXT", 0.0)
    monkeypatch.setattr(loss_module, "CONTEXT_NOISE", 1.0)
    training_loss(model, training_schedule(), clean, mosaic, rays, torch.Generator().manual_seed(0))
    context_t = seen["timesteps"][:, :2]
    assert ((context_t >= 1) & (context_t <= loss_module.CONTEXT_NOISE_MAX_T)).all()
    assert torch.equal(seen["mosaic"], mosaic)


def test_covered_pixels_weigh_more_in_the_loss(monkeypatch):
    """The same error costs COVERED_WEIGHT times more on a covered pixel than on a hole (normalised by the mean weight)."""
    clean, mosaic, rays = _batch()
    monkeypatch.setattr(loss_module, "DEPTH_WEIGHT", 0.0)
    monkeypatch.setattr(loss_module, "NULL_CONTEXT", 0.0)

    class Fixed(MosaicDiT):
        def forward(self, sample, timesteps, mosaic, rays, *rest):
            return clean + error

    mosaic = mosaic.clone()
    mosaic[:, 2:, 4] = 0
    mosaic[:, 2:, 4, :32] = 1
    error = torch.zeros_like(clean)
    error[:, 2:, :3, :32] = 0.1
    covered = training_loss(Fixed(hidden_size=32, depth=1, num_heads=1), training_schedule(), clean, mosaic, rays,
                            torch.Generator().manual_seed(0))
    error = torch.zeros_like(clean)
    error[:, 2:, :3, 32:] = 0.1
    hole = training_loss(Fixed(hidden_size=32, depth=1, num_heads=1), training_schedule(), clean, mosaic, rays,
                         torch.Generator().manual_seed(0))
    assert torch.isclose(covered / hole, torch.tensor(loss_module.COVERED_WEIGHT))


def test_generated_sources_cover_with_the_models_generated_confidence():
    """A mosaic warped from generated frames carries generated_confidence as coverage, observed ones 1, in training and rollouts."""
    from memory.world.experts import RolloutState

    episode = read_episode(SAMPLE_EPISODE)
    c, s = 2, 20
    observed = make_window(episode, s, [s + c - 1], c, generated=range(0), generated_confidence=0.5)
    generated = make_window(episode, s, [s + c - 1], c, generated=range(s, s + c), generated_confidence=0.5)
    mask = observed.mosaic[c:, 4]
    assert set(mask.unique().tolist()) <= {0.0, 1.0} and float(mask.sum()) > 0
    assert torch.equal(generated.mosaic[c:, 4], mask * 0.5)
    assert torch.equal(generated.mosaic[c:, :4], observed.mosaic[c:, :4])
    # a rollout: the initial frames are observed, generated frames warp at the model's confidence, the anchor at 1
    rgb, depth, c2w = episode.rgb.float() / 255, episode.depth, episode.c2w
    state = RolloutState(episode.cameras, c, 1, 4, rgb[s - 2:s], depth[s - 2:s], c2w[s - 2:s],
                         (rgb[s - 1:s], depth[s - 1:s], c2w[s - 1:s]), done=s, generated_confidence=0.25)
    targets = c2w[s + 4:s + 8]
    before = state.latest_mosaic(targets, 1).mask
    assert set(before.unique().tolist()) <= {0.0, 1.0}
    state.add(rgb[s:s + 4], depth[s:s + 4], c2w[s:s + 4], lift=False)
    after = state.latest_mosaic(targets, 1).mask
    assert {0.25} <= set(after.unique().tolist()) <= {0.0, 0.25, 1.0}


def test_training_refuses_a_generated_confidence_out_of_range_and_a_missing_init(tmp_path):
    """A coverage value the model loader would refuse, or an --init that is no model folder, is refused before any step, naming the input."""
    import pytest

    from memory.train.loop import TrainConfig, train

    for bad in (0.0, 1.5):
        with pytest.raises(ValueError, match="generated_confidence"):
            train(TrainConfig(data=tmp_path, out=tmp_path / "run", steps=1, workers=0, generated_confidence=bad))
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="init"):
        train(TrainConfig(data=tmp_path, out=tmp_path / "run", steps=1, workers=0, init=tmp_path / "no-model"))
    assert not (tmp_path / "run" / "checkpoint").exists()
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="forced_chunks"):
            train(TrainConfig(data=tmp_path, out=tmp_path / "run", steps=1, workers=0, forced_chunks=bad))
    for name, bad in (("recolour", 1.5), ("recolour", -0.1), ("gradient_weight", -1.0), ("gradient_weight", "1"),
                      ("statistics_weight", -0.5)):
        with pytest.raises(ValueError, match=name):
            train(TrainConfig(data=tmp_path, out=tmp_path / "run", steps=1, workers=0, **{name: bad}))
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_recoloured_episode_maps_every_frame_alike_and_keeps_its_geometry():
    """One colour map for all frames: equal colours stay equal across frames, depth and cameras are untouched, draws differ."""
    import random

    from memory.train.recolour import recoloured

    episode = read_episode(SAMPLE_EPISODE)
    one, again, other = (recoloured(episode, random.Random(seed)) for seed in (3, 3, 4))
    assert torch.equal(one.rgb, again.rgb) and not torch.equal(one.rgb, other.rgb)
    assert one.rgb.dtype == torch.uint8 and one.rgb.shape == episode.rgb.shape
    assert torch.equal(one.depth, episode.depth) and torch.equal(one.c2w, episode.c2w) and torch.equal(one.K, episode.K)
    assert (one.rgb.float() - episode.rgb.float()).abs().mean() > 5  # the palette moved
    # the same colour in two far-apart frames maps to the same colour
    first, last = episode.rgb[0].reshape(-1, 3), episode.rgb[-1].reshape(-1, 3)
    same = (first[:, None] == last[None]).all(-1).nonzero()
    assert len(same) > 0
    i, j = same[0]
    assert torch.equal(one.rgb[0].reshape(-1, 3)[i], one.rgb[-1].reshape(-1, 3)[j])


def test_stream_recolours_the_share_it_is_given(monkeypatch):
    """recolour=0 leaves every episode's colours as they are; recolour=1 recolours every drawn episode."""
    import itertools

    from memory.train import stream as stream_module

    episode = read_episode(SAMPLE_EPISODE)
    calls = []
    real = stream_module.recoloured
    monkeypatch.setattr(stream_module, "recoloured", lambda e, rng: calls.append(1) or real(e, rng))
    monkeypatch.setattr(stream_module, "SHUFFLE_BUFFER", 1)
    for share, expected in ((0.0, 0), (1.0, 5)):
        calls.clear()
        windows = WindowStream([episode], 2, seed=0, recolour=share)
        list(itertools.islice(iter(windows), 5))
        assert len(calls) == expected


def test_gradient_difference_costs_blur_and_speckle_but_not_the_truth():
    """Zero for the true images; positive for a blurred and for a noisier copy; the loss adds it with its weight."""
    from memory.train.loss import gradient_difference

    true = torch.rand(2, 4, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    blurred = torch.nn.functional.avg_pool2d(true.flatten(0, 1), 3, 1, 1).view_as(true)
    speckled = true + 0.3 * torch.randn(true.shape, generator=torch.Generator().manual_seed(1))
    assert gradient_difference(true, true) == 0
    assert gradient_difference(blurred, true) > 0.05 and gradient_difference(speckled, true) > 0.05
    clean, mosaic, rays = _batch()
    model = MosaicDiT(hidden_size=32, depth=1, num_heads=1)
    losses = [training_loss(model, training_schedule(), clean, mosaic, rays, torch.Generator().manual_seed(0),
                            gradient_weight=w) for w in (0.0, 1.0, 2.0)]
    assert losses[1] > losses[0] and torch.isclose(losses[2] - losses[0], 2 * (losses[1] - losses[0]), rtol=1e-4)


def test_frame_statistics_are_colour_moments_and_gradient_energy_wherever_the_texture_is():
    """Mean colour, colour covariance and gradient energy of a frame; moving the texture leaves them, flattening it does not."""
    from memory.train.loss import frame_statistics, statistics_difference

    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 16, 16, generator=generator) * 2 - 1
    stats = frame_statistics(image)
    assert stats.shape == (1, 15)
    flat = image.flatten(-2)
    assert torch.allclose(stats[0, :3], flat.mean(-1)[0])
    assert torch.allclose(stats[0, 3], flat[0, 0].var(unbiased=False), atol=1e-6)  # covariance (0, 0): red's variance
    shifted = image.roll(5, -1)  # the same texture elsewhere: only the wrap-around seam differs
    flattened = image.mean((-1, -2), keepdim=True).expand_as(image)
    assert statistics_difference(shifted, image) < 0.1 * statistics_difference(flattened, image)
    clean, mosaic, rays = _batch()
    model = MosaicDiT(hidden_size=32, depth=1, num_heads=1)
    losses = [training_loss(model, training_schedule(), clean, mosaic, rays, torch.Generator().manual_seed(0),
                            statistics_weight=w) for w in (0.0, 1.0)]
    assert losses[1] > losses[0]
