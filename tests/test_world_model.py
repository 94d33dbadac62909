"""The embedded world model's pieces: RGB-D encoding, rays, mosaics, the backbone, training and sampling."""
from __future__ import annotations

import json

import pytest
import torch

from memory.world.backbones.mosaic_dit import MosaicDiT, apply_rope, rope_angles
from memory.geometry.camera import plucker_rays
from memory.data.episode import SAMPLE_EPISODE, read_episode
from memory.world.mosaic import Mosaic, warp_frames
from memory.world.rgbd import FAR_M, decode_rgbd, depth_loss, encode_rgbd
from memory.train.loop import TrainConfig, train, with_added_modules
from memory.world.rollout import navigate
from memory.world.world_model import load_world_model, save_world_model


@pytest.fixture(scope="module")
def episode():
    """The committed sample episode."""
    return read_episode(SAMPLE_EPISODE)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    """An untrained MosaicDiT saved as a diffusers folder."""
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    save_world_model(MosaicDiT(hidden_size=32, depth=1, num_heads=1, rope_dims=(8, 12, 12)), folder)
    return folder


def test_rgbd_round_trip_keeps_colour_depth_and_sky():
    rgb = torch.rand(2, 8, 8, 3)
    depth = torch.rand(2, 8, 8) * 10 + 0.2
    depth[0, 0, 0] = 0.0
    x = encode_rgbd(rgb, depth)
    assert x.shape == (2, 4, 8, 8) and float(x.abs().max()) <= 1.0
    back_rgb, back_depth = decode_rgbd(x)
    assert torch.allclose(back_rgb, rgb, atol=1e-5)
    assert float(back_depth[0, 0, 0]) == 0.0
    assert torch.allclose(back_depth[depth > 0], depth[depth > 0], rtol=1e-4)
    assert float(decode_rgbd(torch.ones(1, 4, 1, 1))[1].max()) == 0.0 and FAR_M > 10


def test_depth_loss_is_relative_error_and_leans_near():
    def encoded(metres):
        depth = torch.tensor(metres).view(-1, 1, 1)
        return encode_rgbd(torch.zeros(len(metres), 1, 1, 3), depth)[:, 3, 0, 0]

    truth = encoded([2.0, 2.0, 2.0, 2.0, 0.0])
    pred = encoded([2.0, 1.0, 4.0, 39.0, 5.0]).requires_grad_(True)
    loss = depth_loss(pred, truth)
    scale = float(loss[2] / 1.0)  # 4 m for 2 m: AbsRel 1
    assert float(loss[0]) == pytest.approx(0.0, abs=1e-6)
    assert float(loss[1]) == pytest.approx(0.5 * scale, rel=1e-4)  # 1 m for 2 m: AbsRel 0.5
    assert float(loss[3]) > 5 * float(loss[2])  # too far costs far more than too near by the same factor
    assert float(loss[4]) == pytest.approx(float((pred[4] - truth[4]).abs()), rel=1e-6)  # sky: L1 of the encoding
    loss.sum().backward()
    assert torch.isfinite(pred.grad).all() and float(pred.grad[3]) > float(pred.grad[2]) > 0 > float(pred.grad[1])


def test_plucker_rays_of_the_reference_camera_start_at_its_origin(episode):
    rays = plucker_rays(episode.c2w[3:5], episode.K, episode.c2w[3], 64, 64)
    assert rays.shape == (2, 6, 64, 64)
    assert float(rays[0, :3].abs().max()) < 1e-5  # zero moment: rays through the origin
    centre = rays[0, 3:, 31:33, 31:33].mean((1, 2))
    assert torch.allclose(centre, torch.tensor([0.0, 0.0, 1.0]), atol=1e-2)
    assert torch.allclose(rays[:, 3:].norm(dim=1), torch.ones(2, 64, 64), atol=1e-5)


def test_rays_do_not_depend_on_world_coordinates(episode):
    shift = torch.eye(4)
    shift[:3, 3] = torch.tensor([5.0, -3.0, 1.0])
    a = plucker_rays(episode.c2w[:4], episode.K, episode.c2w[1], 16, 16)
    b = plucker_rays(shift @ episode.c2w[:4], episode.K, shift @ episode.c2w[1], 16, 16)
    assert torch.allclose(a, b, atol=1e-4)


def test_warp_frames_reproduces_a_source_frame_in_its_own_camera(episode):
    rgb = episode.rgb[:2].float() / 255
    mosaic = warp_frames(rgb, episode.depth[:2], episode.c2w[:2], episode.K, episode.c2w[1:2])
    covered = mosaic.mask[0] > 0
    assert float(covered.float().mean()) > 0.6
    assert float((mosaic.rgb[0][covered] - rgb[1][covered]).abs().mean()) < 0.03


def test_warp_frames_keeps_sky_at_infinity_behind_surfaces():
    K = torch.tensor([[32.0, 0, 32], [0, 32.0, 32], [0, 0, 1]])
    source = torch.eye(4)
    forward = torch.eye(4)
    forward[:3, 3] = source[:3, 2]  # one metre along the optical axis
    rgb = torch.rand(1, 64, 64, 3)
    depth = torch.zeros(1, 64, 64)
    depth[0, 32:] = 3.0  # a wall in the lower half, sky above
    mosaic = warp_frames(rgb, depth, source[None], K, forward[None])
    sky, wall = (slice(0, 28), slice(None)), (slice(38, 64), slice(8, 56))
    # directions at infinity do not move when the camera translates: same pixels, same colours, depth 0 = sky
    assert float(mosaic.mask[0][sky].min()) == 1.0 and float(mosaic.depth[0][sky].abs().max()) == 0.0
    assert torch.allclose(mosaic.rgb[0][sky], rgb[0][sky])
    # the wall, now 2 m away, still wins over the sky wherever it is seen
    assert torch.allclose(mosaic.depth[0][wall], torch.full((26, 48), 2.0), atol=1e-3)


def test_mosaic_channels_zero_out_unknown_depth():
    m = Mosaic(torch.rand(1, 8, 8, 3), torch.full((1, 8, 8), 2.0), torch.ones(1, 8, 8))
    known, unknown = m.channels(True), m.channels(False)
    assert known.shape == (1, 6, 8, 8)
    assert float(unknown[:, 3].abs().max()) == 0.0 and float(unknown[:, 5].max()) == 0.0
    assert torch.equal(known[:, :3], unknown[:, :3])
    assert float(Mosaic.empty(2, 8, 8).channels().abs().max()) == 0.0


def rotation(angles):
    """(cos, sin) of RoPE angles [B,N,D/2] shaped for apply_rope."""
    return angles.cos()[:, None], angles.sin()[:, None]


def test_rope_rotation_preserves_norms_and_relative_positions():
    x = torch.randn(1, 2, 3, 32)
    pos = torch.tensor([[[0.0, 1.0, 2.0], [1.0, 0.5, 3.25], [2.0, 2.0, 0.0]]])
    rotated = apply_rope(x, rotation(rope_angles(pos, (8, 12, 12), 100.0)))
    assert torch.allclose(rotated.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
    q, k = torch.randn(1, 1, 1, 32), torch.randn(1, 1, 1, 32)
    def score(p, r):
        a = apply_rope(q, rotation(rope_angles(torch.tensor([[p]]), (8, 12, 12), 100.0)))
        b = apply_rope(k, rotation(rope_angles(torch.tensor([[r]]), (8, 12, 12), 100.0)))
        return float((a * b).sum())
    assert score([1.0, 2.0, 3.0], [0.0, 1.5, 1.0]) == pytest.approx(score([3.0, 4.0, 5.0], [2.0, 3.5, 3.0]), rel=1e-4)


def test_backbone_shapes_extra_tokens_and_folder_round_trip(tmp_path):
    model = MosaicDiT(hidden_size=32, depth=1, num_heads=1, rope_dims=(8, 12, 12))
    x = torch.randn(1, 3, 4, 16, 16)
    args = (x, torch.tensor([[0, 500, 500]]), torch.randn(1, 3, 6, 16, 16), torch.randn(1, 3, 6, 16, 16))
    out = model(*args)
    assert out.shape == x.shape
    with_tokens = model(*args, mosaic_tokens=torch.randn(1, 5, 256), mosaic_positions=torch.rand(1, 5, 3) * 2)
    assert with_tokens.shape == x.shape
    with pytest.raises(ValueError, match="mosaic_positions"):
        model(*args, mosaic_tokens=torch.randn(1, 5, 256))
    model.save_pretrained(tmp_path)
    loaded = MosaicDiT.from_pretrained(tmp_path)
    assert torch.allclose(loaded(*args), out, atol=1e-6)
    with pytest.raises(ValueError, match="rope_dims"):
        MosaicDiT(hidden_size=32, num_heads=1, rope_dims=(8, 8, 8))


def test_training_runs_a_few_steps_saves_and_resumes(tmp_path, episode):
    data = tmp_path / "data"
    data.mkdir()
    (data / "ep.safetensors").symlink_to(SAMPLE_EPISODE)
    config = TrainConfig(data=data, out=tmp_path / "run", steps=2, batch_size=1, save_every=1, workers=0, seed=3)
    checkpoint = train(config)
    assert (checkpoint / "config.json").is_file() and (checkpoint / "optimizer.safetensors").is_file()
    train(TrainConfig(**{**config.__dict__, "steps": 3}))
    log = [json.loads(line) for line in (tmp_path / "run" / "loss.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3]
    assert all(entry["loss"] == entry["loss"] and entry["loss"] > 0 for entry in log)


def test_resuming_drops_the_steps_an_interrupted_run_logged_after_its_checkpoint(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "ep.safetensors").symlink_to(SAMPLE_EPISODE)
    config = TrainConfig(data=data, out=tmp_path / "run", steps=2, batch_size=1, save_every=2, workers=0, seed=3)
    train(config)
    log_file = tmp_path / "run" / "loss.jsonl"
    # what a run stopped at step 4 leaves: two steps past its checkpoint and half a line
    with log_file.open("a") as log:
        log.write('{"step": 3, "loss": 9.0}\n{"step": 4, "loss": 9.0}\n{"step": 5, "lo')
    train(TrainConfig(**{**config.__dict__, "steps": 3}))
    log = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert [entry["step"] for entry in log] == [1, 2, 3] and log[2]["loss"] != 9.0


def test_variance_head_leaves_the_clean_estimate_as_it_is(tmp_path):
    torch.manual_seed(4)
    model = MosaicDiT(hidden_size=32, depth=1, num_heads=1, rope_dims=(8, 12, 12), variance_channels=4)
    for parameter in model.parameters():
        torch.nn.init.normal_(parameter, std=0.1)  # a trained-looking head, not the zero-initialised one
    x = torch.randn(1, 3, 4, 16, 16)
    args = (x, torch.tensor([[0, 500, 500]]), torch.randn(1, 3, 6, 16, 16), torch.randn(1, 3, 6, 16, 16))
    clean, log_variance = model(*args, with_variance=True)
    assert torch.equal(clean, model(*args)) and log_variance.shape == x.shape
    with pytest.raises(ValueError, match="^with_variance: this backbone has no variance head"):
        MosaicDiT(hidden_size=32, depth=1, num_heads=1, rope_dims=(8, 12, 12))(*args, with_variance=True)
    with pytest.raises(ValueError, match="variance_channels 3"):
        MosaicDiT(hidden_size=32, depth=1, num_heads=1, rope_dims=(8, 12, 12), variance_channels=3)


def test_variance_head_training_keeps_the_network_and_learns_its_error(tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    data.mkdir()
    (data / "ep.safetensors").symlink_to(SAMPLE_EPISODE)
    config = TrainConfig(data=data, out=tmp_path / "run", steps=30, batch_size=2, save_every=10, workers=0, seed=1,
                         lr=1e-2, init=tiny_model_dir, variance_head=True, self_forcing=False)
    checkpoint = train(config)
    before, after = load_world_model(tiny_model_dir), load_world_model(checkpoint)
    assert after.predicts_variance and not before.predicts_variance
    trunk = after.network.state_dict()
    assert all(torch.equal(trunk[name], value) for name, value in before.network.state_dict().items())
    log = [json.loads(line)["loss"] for line in (tmp_path / "run" / "loss.jsonl").read_text().splitlines()]
    # Gaussian likelihood of the frozen network's errors: falls as the head learns their size (0 at log-variance 0)
    assert sum(log[-5:]) / 5 < sum(log[:5]) / 5 - 0.05


def test_refiner_starts_as_the_identity_and_repairs_across_patch_borders():
    torch.manual_seed(5)
    plain = MosaicDiT(hidden_size=32, depth=1, num_heads=1, rope_dims=(8, 12, 12))
    for parameter in plain.parameters():
        torch.nn.init.normal_(parameter, std=0.1)
    refined = with_added_modules(plain, refiner_channels=8)
    args = (torch.randn(1, 3, 4, 16, 16), torch.tensor([[0, 500, 500]]), torch.randn(1, 3, 6, 16, 16),
            torch.randn(1, 3, 6, 16, 16))
    assert torch.equal(refined(*args), plain(*args))  # zero-initialised: added to trained weights, changes nothing
    torch.nn.init.normal_(refined.refiner[4].weight, std=0.1)
    change = (refined(*args) - plain(*args)).abs()
    # one 3x3 layer sees a neighbour pixel: the change is not constant over an 8x8 patch as a patch decoder's would be
    assert change.amax() > 0 and (change[..., :8, :8] - change[..., :1, :1]).abs().amax() > 0
    # the clean context frame (timestep 0) is given, not predicted: the refiner leaves its estimate alone
    assert torch.equal(change[:, 0], torch.zeros_like(change[:, 0])) and change[:, 1:].amax() > 0


def test_training_adds_a_refiner_to_an_init_model_and_refuses_changing_it(tmp_path, tiny_model_dir):
    data = tmp_path / "data"
    data.mkdir()
    (data / "ep.safetensors").symlink_to(SAMPLE_EPISODE)
    config = TrainConfig(data=data, out=tmp_path / "run", steps=3, batch_size=1, save_every=1, workers=0, seed=2,
                         lr=1e-2, init=tiny_model_dir, refiner_channels=4, self_forcing=False)
    checkpoint = train(config)
    model = load_world_model(checkpoint).network
    assert model.config.refiner_channels == 4 and model.refiner[4].weight.abs().sum() > 0
    with pytest.raises(ValueError, match="^refiner_channels: the model already has 4"):
        train(TrainConfig(**{**config.__dict__, "steps": 4, "refiner_channels": 8}))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="^refiner_channels: must be a whole number"):
            train(TrainConfig(**{**config.__dict__, "out": tmp_path / "bad", "refiner_channels": bad}))
        assert not (tmp_path / "bad").exists()  # refused before the run folder is made


def test_load_world_model_rejects_bad_folders(tmp_path, tiny_model_dir):
    with pytest.raises(ValueError, match="no config.json"):
        load_world_model(tmp_path)
    (tmp_path / "config.json").write_text('{"_class_name": "UNet2DModel"}')
    with pytest.raises(ValueError, match="UNet2DModel"):
        load_world_model(tmp_path)
    (tmp_path / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="safetensors"):
        load_world_model(tmp_path)
    other = MosaicDiT(hidden_size=64, depth=1, num_heads=2, rope_dims=(8, 12, 12))
    save_world_model(other, tmp_path / "other")
    (tmp_path / "other" / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    with pytest.raises(ValueError, match="do not match"):
        load_world_model(tmp_path / "other")


def test_navigate_yields_initial_then_generated_chunks(tiny_model_dir, episode):
    model = load_world_model(tiny_model_dir)
    path = episode.cameras.slice(0, 11)
    chunks = list(navigate(model, episode.rgb[:3].float() / 255, episode.depth[:3], path, chunk=4, steps=2))
    assert [len(c.rgb) for c in chunks] == [3, 4, 4]
    assert all(c.rgb.shape[1:] == (64, 64, 3) and c.depth.shape[1:] == (64, 64) for c in chunks)
    assert torch.equal(chunks[0].depth, episode.depth[:3].float())
    no_depth = list(navigate(model, episode.rgb[:1].float() / 255, None, path.slice(0, 3), chunk=4, steps=2))
    assert [len(c.rgb) for c in no_depth] == [1, 2] and float(no_depth[0].depth.max()) >= 0


def test_navigate_rejects_a_path_no_longer_than_the_initial_frames(tiny_model_dir, episode):
    model = load_world_model(tiny_model_dir)
    with pytest.raises(ValueError, match="camera_path"):
        next(navigate(model, episode.rgb[:4].float() / 255, episode.depth[:4], episode.cameras.slice(0, 4)))
    with pytest.raises(ValueError, match="initial_frames"):
        next(navigate(model, torch.zeros(1, 32, 32, 3), None, episode.cameras.slice(0, 4)))


def test_training_windows_and_sampling_read_one_conditioning(episode):
    """make_window assembles its mosaic and rays with the builder the sampler uses, from the model's declared context."""
    from memory.train.windows import TARGET_FRAMES, make_window
    from memory.world.conditioning import build_conditioning
    from memory.world.mosaic import warp_frames

    model = load_world_model()
    c = model.context_frames
    assert (c, model.mosaic_frames) == (2, 1) and model.top_timestep == 999
    window = make_window(episode, 10, [10 + c - 1], c)
    frames = slice(10, 10 + c + TARGET_FRAMES)
    rgb, depth, c2w = episode.rgb[frames].float() / 255, episode.depth[frames], episode.c2w[frames]
    warped = warp_frames(rgb[c - 1:c], depth[c - 1:c], c2w[c - 1:c], episode.K, c2w[c:]).fill_holes(rgb[c - 1], depth[c - 1])
    built = build_conditioning(rgb[:c], depth[:c], c2w[:c], c2w[c:], episode.K, warped)
    assert torch.equal(window.mosaic, built.mosaic) and torch.equal(window.rays, built.rays)
    assert torch.equal(window.clean[:c], built.context)
    null = built.without_memory()
    assert null.null and float(null.mosaic.abs().sum()) == 0 and torch.equal(null.rays, built.rays)
    sample, timesteps, _, _ = null.inputs(torch.zeros(TARGET_FRAMES, 4, 64, 64), 500.0, model.top_timestep)
    assert timesteps[0, :c].tolist() == [999.0] * c and not torch.equal(sample[0, :c], built.context)
