"""Rollouts under compositions of memory experts (memory/world/experts.py, rollout.py) on the embedded model."""
from __future__ import annotations

import pytest
import torch

import memory.world.rollout as rollout_module
from memory.data.episode import SAMPLE_EPISODE, read_episode, revisit_frames
from memory.patch_memory import PatchMemory, insert_frames
from memory.world.experts import (
    GENERATED_GROUP, BaseExpert, Composition, ShortTermExpert, SpatialExpert,
)
from memory.world.rollout import navigate, rollout
from memory.world.world_model import load_world_model


@pytest.fixture(scope="module")
def model():
    """The embedded default model."""
    return load_world_model()


@pytest.fixture(scope="module")
def episode():
    """The committed sample episode (Memory Maze 9x9, 64 context frames, revisits after them)."""
    return read_episode(SAMPLE_EPISODE)


@pytest.fixture(scope="module")
def memory(episode):
    """The patch memory of the sample's context frames with their true depth."""
    c = episode.context_frames
    return insert_frames(PatchMemory.empty(8), episode.rgb[:c], episode.depth[:c], episode.c2w[:c], episode.K)


def generate(model, episode, composition, frames=None, **extra):
    """Frames generated after the context along the recorded cameras, from the last two context frames."""
    c = episode.context_frames
    stop = len(episode) if frames is None else c + frames
    run = rollout(model, composition, episode.rgb[c - 2:c].float() / 255, episode.depth[c - 2:c].float(),
                  episode.cameras.slice(c - 2, stop), **extra)
    chunks = list(run)
    return torch.cat([chunk.rgb for chunk in chunks[1:]]), run


def psnr(a, b):
    """PSNR in dB of two image batches in 0..1."""
    return float(10 * torch.log10(1 / ((a - b) ** 2).mean()))


def test_the_base_expert_alone_is_navigate(model, episode):
    c = episode.context_frames
    path = episode.cameras.slice(c - 1, c + 9)
    start = episode.rgb[c - 1:c].float() / 255
    direct = torch.cat([chunk.rgb for chunk in navigate(model, start, None, path, steps=2, seed=5)])
    composed = rollout(model, Composition((BaseExpert(alpha=1.0),), "single"), start, None, path, steps=2, seed=5)
    assert torch.equal(torch.cat([chunk.rgb for chunk in composed]), direct)


def test_a_product_of_copies_of_one_expert_is_that_expert_at_one_step_and_stays_sane_at_more(model, episode):
    """Weights summing to 2 (poe of two experts) are integrated, not multiplied by 1/√ᾱ at the first step from noise."""
    truth = episode.rgb[episode.context_frames:episode.context_frames + 8].float() / 255
    single, _ = generate(model, episode, Composition((BaseExpert(1.0),), "single"), frames=8)
    twice, _ = generate(model, episode, Composition((BaseExpert(1.0), BaseExpert(1.0)), "poe"), frames=8)
    # the Gaussian product of two copies is the copy up to the likelihood at the last timestep (ᾱ 2e-9) and float
    # rounding: the first chunk to within half an 8-bit level; later chunks re-warp it, where a rounding can flip
    # which surface wins a pixel
    assert torch.allclose(twice[:4], single[:4], atol=0.5 / 255)
    assert psnr(twice, single) > 40.0
    sharper, _ = generate(model, episode, Composition((BaseExpert(1.0), BaseExpert(1.0)), "poe"), frames=8, steps=4)
    # the square of the base distribution at 4 steps: within a few dB of the base model, far from the 5 dB of noise
    assert psnr(sharper, truth) > psnr(single, truth) - 3.0


def test_the_spatial_expert_finds_observed_places_again(model, episode, memory):
    """Revisit frames look like what the context saw: the spatial memory beats the base model there."""
    revisits = torch.tensor(revisit_frames(episode)) - episode.context_frames
    truth = episode.rgb[episode.context_frames:].float() / 255
    base, _ = generate(model, episode, Composition((BaseExpert(1.0),), "single"))
    spatial, _ = generate(model, episode, Composition((SpatialExpert(memory, 1.0),), "single"))
    # measured on the sample: 21.1 dB against 19.0 dB for the base model
    assert psnr(spatial[revisits], truth[revisits]) > psnr(base[revisits], truth[revisits]) + 1.0


def test_one_null_evaluation_per_step_for_every_expert(model, episode, memory, monkeypatch):
    calls = []
    real = rollout_module.predict_clean_batch
    monkeypatch.setattr(rollout_module, "predict_clean_batch", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    composition = Composition((BaseExpert(), ShortTermExpert(4), SpatialExpert(memory)), "poce")
    generate(model, episode, composition, frames=8, steps=2, chunk=4)
    evaluated = [c for batch in calls for c in batch]
    # 2 chunks x 2 steps x (3 experts + 1 shared null), in one call per step
    assert len(calls) == 2 * 2 and len(evaluated) == 2 * 2 * 4
    assert sum(c.null for c in evaluated) == 2 * 2
    # the walk starts from 2 frames, so the short-term window holds 2 in the first chunk and 4 in the second:
    # one forward per context length
    contexts = [sorted(c.context_frames for c in batch) for batch in calls]
    assert contexts == [[2, 2, 2, 2]] * 2 + [[2, 2, 2, 4]] * 2


def test_a_batched_evaluation_equals_the_lone_ones(model, episode, memory):
    """Batching conditionings of one context length into one forward changes no prediction beyond float rounding."""
    from memory.world.world_model import predict_clean, predict_clean_batch
    _, run = generate(model, episode, Composition((SpatialExpert(memory, 1.0),), "single"), frames=4)
    state = run.state
    targets = state.path.c2w[2:6]
    conditionings = [state.base(targets), state.conditioning(targets, 4, state.latest_mosaic(targets, 4)),
                     state.null(targets)]
    x, noise = torch.randn(4, 4, *episode.rgb.shape[1:3]), torch.randn(2, 4, *episode.rgb.shape[1:3])
    batched = predict_clean_batch(model, conditionings, x, 500.0, noise)
    for conditioning, together in zip(conditionings, batched):
        assert torch.allclose(together, predict_clean(model, conditioning, x, 500.0, noise), atol=1e-5)


def test_generated_frames_join_the_memory_behind_the_observed_ones(model, episode, memory):
    _, run = generate(model, episode, Composition((SpatialExpert(memory, 1.0),), "single"), frames=8)
    state = run.state
    assert state.observed is memory and state.done == 2 + 8  # cameras of the path covered: 2 given, 8 generated
    assert len(state.generated) > 0 and bool((state.generated.groups == GENERATED_GROUP).all())
    combined = state.memory
    assert len(combined) == len(memory) + len(state.generated)
    assert torch.equal(combined.rgb[:len(memory)], memory.rgb)


def test_the_window_stays_bounded_however_long_the_walk(model, episode):
    _, run = generate(model, episode, Composition((ShortTermExpert(6, 1.0),), "single"), frames=40, chunk=4)
    assert len(run.state.rgb) == run.state.window == 6


def test_stopping_early_keeps_a_state_consistent_with_the_frames_handed_out(model, episode, memory):
    c = episode.context_frames
    run = rollout(model, Composition((SpatialExpert(memory, 1.0),), "single"), episode.rgb[c - 2:c].float() / 255,
                  episode.depth[c - 2:c].float(), episode.cameras.slice(c - 2, c + 20), chunk=4)
    handed = 0
    for i, chunk in enumerate(run):
        handed += len(chunk.rgb)
        if i == 2:
            break
    assert run.state.done == handed
    assert int(run.state.generated.frame_ids.max()) < run.state.done


def test_bad_compositions_name_the_input(model, episode):
    with pytest.raises(ValueError, match="^alpha: "):
        BaseExpert(alpha=0.5)
    with pytest.raises(ValueError, match="^memory: "):
        SpatialExpert(PatchMemory.empty(8))
    with pytest.raises(ValueError, match="^frames: "):
        ShortTermExpert(0)
    with pytest.raises(ValueError, match="^experts: "):
        Composition(())
    other = insert_frames(PatchMemory.empty(16), episode.rgb[:2], episode.depth[:2], episode.c2w[:2], episode.K)
    with pytest.raises(ValueError, match="^memory: .*16-pixel patches"):
        generate(model, episode, Composition((SpatialExpert(other),), "single"))
    with pytest.raises(ValueError, match="^composition: "):
        rollout(model, [BaseExpert()], episode.rgb[:1].float() / 255, None, episode.cameras.slice(0, 4))


@pytest.mark.parametrize("make, name", [
    (lambda: ShortTermExpert(10 ** 6), "frames"), (lambda: ShortTermExpert(2.5), "frames"),
    (lambda m: SpatialExpert(m, max_patches=0), "max_patches"), (lambda m: SpatialExpert(m, guidance=float("nan")), "guidance"),
])
def test_expert_settings_out_of_range_name_the_setting(memory, make, name):
    with pytest.raises(ValueError, match=f"^{name}: "):
        make(memory) if make.__code__.co_argcount else make()
    assert ShortTermExpert(4.0).frames == 4 and isinstance(ShortTermExpert(4.0).frames, int)


def test_an_expert_whose_head_claims_more_than_the_null_is_held_to_the_nulls_variance(model, episode, memory,
                                                                                        monkeypatch):
    """A variance head far out of its training windows (here made to claim 10^4 times its variance) cannot widen an expert past its null."""
    real = rollout_module.predict_clean_batch
    nulls, products = [], []

    def inflated(network, conditionings, *args, **kwargs):
        """The real predictions, with every memory's variance made 10^4 times wider and the null's kept."""
        out = real(network, conditionings, *args, **kwargs)
        nulls.extend(variance for c, (_, variance) in zip(conditionings, out) if c.null)
        return [(mean, variance if c.null else variance * 1e4) for c, (mean, variance) in zip(conditionings, out)]

    monkeypatch.setattr(rollout_module, "predict_clean_batch", inflated)
    real_product = rollout_module.gaussian_product
    monkeypatch.setattr(rollout_module, "gaussian_product",
                        lambda terms, *a: products.append(terms) or real_product(terms, *a))
    generate(model, episode, Composition((SpatialExpert(memory, 2.0),), "single"), frames=8, chunk=4)
    assert len(nulls) == len(products) == 2
    for null_variance, terms in zip(nulls, products):
        (weight, _, variance), _ = terms
        assert weight == 2.0 and torch.all(variance <= null_variance)
