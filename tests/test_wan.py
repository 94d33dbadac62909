"""Wan through diffusers: tiny random configs of the real classes, a full rollout with every expert on the CPU."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from diffusers import UniPCMultistepScheduler
from safetensors.torch import save_file

from memory.data.episode import SAMPLE_EPISODE, read_episode
from memory.geometry.camera import CameraPath
from memory.patch_memory import PatchMemory, insert_frames
from memory.world.backbones.wan import TEXT_EMBEDDINGS, encode_video, is_wan_folder, load_wan_world_model
from memory.world.experts import BaseExpert, Composition, LongTermExpert, ShortTermExpert, SpatialExpert
from memory.world.lora import new_lora
from memory.world.wan_rollout import new_wan_lora, train_wan_lora, wan_rollout
from memory.world.world_model import load_world_model
from wan_support import TEXT_DIM, Z, write_wan_folder

@pytest.fixture(scope="module")
def wan_folder(tmp_path_factory):
    return write_wan_folder(tmp_path_factory.mktemp("wan_i2v"))


@pytest.fixture(scope="module")
def wan(wan_folder):
    return load_wan_world_model(wan_folder)


@pytest.fixture(scope="module")
def depth_model():
    return load_world_model()


@pytest.fixture(scope="module")
def episode():
    return read_episode(SAMPLE_EPISODE)


SIZE = 32  # two tokens a side: the sample episode halved, so the CPU tests stay quick


def walk(episode, initial: int, generated: int):
    """The first frames of the sample episode at SIZE (rgb 0..1, depth) and the path through them and the next cameras."""
    scale = SIZE / episode.width
    frames = F.interpolate(episode.rgb[:initial].float().permute(0, 3, 1, 2) / 255, size=(SIZE, SIZE), mode="area")
    depth = F.interpolate(episode.depth[:initial, None].float(), size=(SIZE, SIZE), mode="nearest")[:, 0]
    K = episode.K.clone()
    K[:2] *= scale
    return frames.permute(0, 2, 3, 1), depth, CameraPath(episode.c2w[:initial + generated], K, SIZE, SIZE)


def memory_of(frames, depth, path, patch):
    """A patch memory of the initial frames with ``patch``-pixel patches."""
    return insert_frames(PatchMemory.empty(patch), frames, depth, path.c2w[:len(frames)], path.K)


def test_wan_folder_is_recognised_and_loaded_with_its_own_scheduler(wan_folder, wan):
    assert is_wan_folder(wan_folder) and not is_wan_folder(wan_folder / "vae")
    assert wan.reads_mosaics and wan.token_pixels == 16 and wan.temporal_scale == 4
    assert wan.scheduler().__class__.__name__ == "FlowMatchEulerDiscreteScheduler"
    assert wan.scheduler().config.shift == 3.0


def test_rollout_with_every_expert_keeps_the_initial_frames_and_updates_every_memory(wan, depth_model, episode):
    frames, depth, path = walk(episode, 5, 9)
    memory = memory_of(frames, depth, path, wan.token_pixels)
    lora = train_wan_lora(wan, frames, depth, path.c2w[:5], path.K, new_wan_lora(wan, rank=4), 2, 1e-3, seed=0)
    composition = Composition((BaseExpert(), ShortTermExpert(frames=3), SpatialExpert(memory),
                               LongTermExpert(lora, stream_steps=1)), mode="poce")
    steps, lora_steps = [], []
    run = wan_rollout(wan, composition, frames, depth, path, chunk=4, steps=2, seed=3, depth_model=depth_model,
                      callback=steps.append, lora_callback=lora_steps.append)
    chunks = list(run)
    assert torch.equal(chunks[0].rgb, frames) and torch.equal(chunks[0].depth, depth)
    generated = torch.cat([c.rgb for c in chunks[1:]])
    assert generated.shape == (9, SIZE, SIZE, 3)  # the last chunk cut to the path
    assert torch.isfinite(generated).all() and generated.std() > 0.01
    assert all(torch.isfinite(c.depth).all() and (c.depth >= 0).all() for c in chunks[1:])
    assert len(steps) == 2 * 3  # two steps per chunk, three chunks
    assert len(lora_steps) == 2  # one streamed step after each chunk but the last
    assert run.state.lora.steps == lora.steps + 2
    assert len(run.state.memory) > len(memory)  # generated frames were lifted beside the observed ones
    assert not hasattr(wan.transformer, "peft_config")  # the loaded model is as it was


def test_compositions_share_the_null_and_weights_matter(wan, depth_model, episode):
    frames, depth, path = walk(episode, 3, 4)

    def first(composition, steps=1):
        return list(wan_rollout(wan, composition, frames, depth, path, chunk=4, steps=steps, seed=1,
                                depth_model=depth_model))[1].rgb

    base = first(Composition((BaseExpert(alpha=1.0),), mode="single"))
    # Σ w ≠ 1 takes the exact composed step, Σ w = 1 the scheduler's: two copies of one expert land where one does
    twice = first(Composition((BaseExpert(alpha=1.0), BaseExpert(alpha=1.0)), mode="poe"))
    assert torch.allclose(base, twice, atol=1e-4)
    contrasted = first(Composition((BaseExpert(alpha=2.0),), mode="single"))
    assert (contrasted - base).abs().mean() > 1e-3
    # e + e − e_null: two experts sharing one prior, against the single one's 2e − e_null at α 2
    shared = first(Composition((BaseExpert(alpha=1.0), BaseExpert(alpha=1.0)), mode="poce_normalized"))
    assert torch.allclose(shared, contrasted, atol=1e-4)


def test_text_to_video_wan_reads_the_memory_by_guidance(tmp_path, depth_model, episode, monkeypatch):
    import memory.world.wan_rollout as module

    wan = load_wan_world_model(write_wan_folder(tmp_path / "t2v", image_to_video=False))
    assert not wan.reads_mosaics
    frames, depth, path = walk(episode, 3, 4)
    memory = memory_of(frames, depth, path, wan.token_pixels)
    seen: dict[str, list] = {"condition": [], "clean": []}
    condition_video, decode_video = module.condition_video, module.decode_video
    monkeypatch.setattr(module, "condition_video", lambda *a: seen["condition"].append(condition_video(*a)) or
                        seen["condition"][-1])
    monkeypatch.setattr(module, "decode_video", lambda model, x: seen["clean"].append(x) or decode_video(model, x))

    def distance_to_memory(expert):
        """Mean distance of the first clip's clean latents to the memory's, over the latent cells it covers at least half."""
        for found in seen.values():
            found.clear()
        list(wan_rollout(wan, Composition((expert,), mode="single"), frames, depth, path, chunk=4, steps=2, seed=0,
                         depth_model=depth_model))
        condition = seen["condition"][0]
        covered = condition[:, :wan.temporal_scale].mean(1, keepdim=True) >= 0.5
        assert covered[:, :, 1:].float().mean() > 0.1  # the memory covers part of the next frames
        gap = (seen["clean"][0] - condition[:, wan.temporal_scale:]).abs()
        return gap[covered.expand_as(gap)].mean()

    # guidance g moves a cell covered c by g·c of the way: the gap left is (1 − g·c), at most 1/2 against 7/8 here
    strong = distance_to_memory(SpatialExpert(memory, alpha=1.0, guidance=1.0))
    weak = distance_to_memory(SpatialExpert(memory, alpha=1.0, guidance=0.25))
    assert strong < 0.75 * weak


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_unipc_flow_scheduler_and_half_precision(tmp_path, depth_model, episode, dtype):
    folder = write_wan_folder(tmp_path / "unipc", scheduler=UniPCMultistepScheduler(
        use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=3.0))
    wan = load_wan_world_model(folder, dtype=dtype)
    assert wan.dtype == dtype
    frames, depth, path = walk(episode, 3, 4)
    out = list(wan_rollout(wan, Composition((BaseExpert(), ShortTermExpert(frames=2)), mode="poce"), frames, depth,
                           path, chunk=4, steps=3, depth_model=depth_model))
    assert torch.isfinite(out[1].rgb).all()


def test_lora_training_and_streaming_work_inside_inference_mode(wan, depth_model, episode):
    frames, depth, path = walk(episode, 5, 5)
    start = new_wan_lora(wan, rank=2, seed=4)
    assert torch.equal(start.weights[next(iter(start.weights))], new_wan_lora(wan, rank=2, seed=4).weights[
        next(iter(start.weights))])  # seeded
    assert all(v.abs().sum() == 0 for k, v in start.weights.items() if ".lora_B." in k)
    with torch.inference_mode():
        trained = train_wan_lora(wan, frames, depth, path.c2w[:5], path.K, start, 3, 1e-2, seed=0)
        run = wan_rollout(wan, Composition((LongTermExpert(trained, stream_steps=1),), mode="single"), frames, depth,
                          path, chunk=4, steps=1, depth_model=depth_model)
        chunks = list(run)
    assert any(v.abs().sum() > 0 for k, v in trained.weights.items() if ".lora_B." in k)
    assert trained.steps == 3 and len(chunks) == 3
    assert all(k.startswith("blocks.") for k in trained.weights)
    assert {k.split(".", 2)[-1].rsplit(".lora_", 1)[0] for k in trained.weights} >= {"attn1.to_q", "ffn.net.2"}


def test_an_interrupted_rollout_keeps_its_chunks_and_memories(wan, depth_model, episode):
    frames, depth, path = walk(episode, 3, 12)
    lora = new_wan_lora(wan, rank=2)
    run = wan_rollout(wan, Composition((LongTermExpert(lora, stream_steps=1),), mode="single"), frames, depth, path,
                      chunk=4, steps=1, depth_model=depth_model, keep_memory=True)
    chunks = iter(run)
    kept = [next(chunks), next(chunks)]
    chunks.close()  # what a caller that stops early does
    assert run.state.done == 3 + 4 and len(kept[1].rgb) == 4
    assert torch.equal(run.state.rgb[-1], kept[1].rgb[-1])
    assert int(run.state.memory.frame_ids.max()) == 3 + 4 - 1  # the memory holds exactly the frames handed out


@pytest.mark.parametrize("change, message", [
    (lambda f: (f / "transformer" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"})),
     "UNet2DConditionModel"),
    (lambda f: (f / TEXT_EMBEDDINGS).unlink(), TEXT_EMBEDDINGS),
    (lambda f: save_file({"prompt_embeds": torch.randn(3, TEXT_DIM + 1)}, str(f / TEXT_EMBEDDINGS)), "text_dim"),
    (lambda f: DDIMLike.save(f), "flow sigmas"),
    (lambda f: (f / "vae" / "config.json").unlink(), "vae/config.json"),
])
def test_unsupported_or_incomplete_folders_are_refused_naming_the_model(tmp_path, change, message):
    folder = write_wan_folder(tmp_path / "bad")
    change(folder)
    with pytest.raises(ValueError, match="model") as error:
        load_wan_world_model(folder)
    assert message in str(error.value)


class DDIMLike:
    """A Wan folder whose scheduler does not use flow sigmas."""

    @staticmethod
    def save(folder):
        UniPCMultistepScheduler(use_flow_sigmas=False).save_pretrained(folder / "scheduler")


def test_bad_rollout_inputs_are_refused_naming_them(wan, depth_model, episode):
    frames, depth, path = walk(episode, 3, 6)
    base = Composition((BaseExpert(),))
    with pytest.raises(ValueError, match="chunk_size"):
        wan_rollout(wan, base, frames, depth, path, chunk=3, depth_model=depth_model)
    with pytest.raises(ValueError, match="initial_depth: holds NaN"):
        wan_rollout(wan, base, frames, depth * float("nan"), path, depth_model=depth_model)
    wrong_patch = memory_of(frames, depth, path, 8)
    with pytest.raises(ValueError, match="memory: .*16"):
        wan_rollout(wan, Composition((SpatialExpert(wrong_patch),)), frames, depth, path, depth_model=depth_model)
    other = new_lora(depth_model, rank=2)  # an episodic LoRA of the embedded model
    with pytest.raises(ValueError, match="lora: .*MosaicDiT"):
        wan_rollout(wan, Composition((LongTermExpert(other),)), frames, depth, path, depth_model=depth_model)
    odd = CameraPath(path.c2w, path.K, 24, 24)
    with pytest.raises(ValueError, match="camera_path: .*16"):
        wan_rollout(wan, base, torch.zeros(3, 24, 24, 3), None, odd, depth_model=depth_model)
    with pytest.raises(ValueError, match="frames: .*5 frames"):
        train_wan_lora(wan, frames, depth, path.c2w[:3], path.K, new_wan_lora(wan, rank=2), 1, 1e-3, seed=0)


def test_latents_are_normalised_with_the_vaes_statistics(wan, episode):
    frames = walk(episode, 5, 1)[0]
    latents = encode_video(wan, frames)
    assert latents.shape == (1, Z, 2, SIZE // 8, SIZE // 8)
    raw = wan.vae.encode(frames.permute(3, 0, 1, 2)[None] * 2 - 1).latent_dist.mode()
    mean = torch.tensor(wan.vae.config.latents_mean).view(1, Z, 1, 1, 1)
    std = torch.tensor(wan.vae.config.latents_std).view(1, Z, 1, 1, 1)
    assert torch.allclose(latents, (raw - mean) / std, atol=1e-5)


def test_a_folder_with_its_own_text_encoder_encodes_its_prompt_as_the_pipeline_does(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, UMT5Config, UMT5EncoderModel

    folder = write_wan_folder(tmp_path / "with_encoder")
    (folder / TEXT_EMBEDDINGS).unlink()
    with pytest.raises(ValueError, match="model: .*text_encoder"):
        load_wan_world_model(folder)
    words = ["<pad>", "</s>", "<unk>", "a", "red", "room", "with", "green", "door"]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(folder / "tokenizer")
    torch.manual_seed(0)
    encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(words), d_model=TEXT_DIM, d_kv=8, d_ff=32, num_layers=1,
                                          num_heads=2)).eval()
    encoder.save_pretrained(folder / "text_encoder")
    with pytest.raises(ValueError, match="model: .*prompt.txt"):
        load_wan_world_model(folder)
    (folder / "prompt.txt").write_text("a red room with a green door")
    wan = load_wan_world_model(folder)
    ids = torch.tensor([[words.index(w) for w in "a red room with a green door".split()]])
    with torch.no_grad():
        direct = encoder(ids, torch.ones_like(ids)).last_hidden_state[0]
    embeds = wan.prompt_embeds[0]
    assert embeds.shape[1] == TEXT_DIM and embeds.shape[0] >= len(direct)
    assert torch.allclose(embeds[:len(direct)], direct, atol=1e-5)
    assert embeds[len(direct):].abs().sum() == 0  # padded with zeros past the prompt, as WanPipeline does


def test_vram_benchmark_counts_the_published_configs_and_writes_json_and_plot(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    out = tmp_path / "wan_vram.json"
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "wan_vram.py"
    subprocess.run([sys.executable, str(script), "--json", str(out)], check=True, capture_output=True, timeout=600)
    rows = json.loads(out.read_text())["rows"]
    assert out.with_suffix(".png").stat().st_size > 0
    weights = {r["model"]: r["transformer_weights_mib"] for r in rows if r["dtype"] == "bf16"}
    # parameter counts of the published models: about 1.4 B, 16.4 B (with the image projection) and 5 B
    assert 1.3e9 < weights["Wan2.1-T2V-1.3B"] * 2 ** 20 / 2 < 1.5e9
    assert 15e9 < weights["Wan2.1-I2V-14B-480P"] * 2 ** 20 / 2 < 17.5e9
    assert 4.5e9 < weights["Wan2.2-TI2V-5B"] * 2 ** 20 / 2 < 5.5e9
    forward = {(r["model"], r["dtype"], r["height"], r["composition"]): r["forward_mib"] for r in rows}
    assert forward["Wan2.1-T2V-1.3B", "float32", 480, "navigate"] > forward["Wan2.1-T2V-1.3B", "bf16", 480, "navigate"]
    assert forward["Wan2.1-T2V-1.3B", "bf16", 720, "with_memory"] > forward["Wan2.1-T2V-1.3B", "bf16", 480, "navigate"]
