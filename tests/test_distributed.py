"""Data parallelism under torchrun: 2 processes on the CPU (gloo) train and run the benchmark sweeps as one process does."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from memory.data.episode import SAMPLE_EPISODE, read_episode, write_episode
from memory.train import stream as stream_module
from memory.train.distributed import Ranks
from memory.train.loop import TrainConfig, check_shards, shard_seed, train

# the untrained-model fixture and the in-process script runner of the benchmarks' smoke tests
from test_world_model_benchmarks import MINIWORLD, ROOT, run_script, untrained_model  # noqa: F401

# seed 4: among the first windows of both shards is a self-forced one, so each process's rollout worker
# reads the checkpoint rank 0 wrote
TRAINING = {"steps": 2, "batch_size": 2, "save_every": 1, "workers": 0, "seed": 4, "lr": 0.01}
WEIGHTS = ("diffusion_pytorch_model.safetensors", "optimizer.safetensors")


def torchrun(*args: str) -> None:
    """``args`` (a script, or ``-m`` and a module, and its options) as 2 processes on the CPU under torchrun."""
    # --standalone: the rendezvous on localhost at a free port; no GPU visible, so the backend is gloo
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]


def train_on_two(data: Path, out: Path, init: Path, steps: int, **extra) -> None:
    """``python -m memory.train`` with TRAINING's settings (and ``extra``) on 2 processes (one shard of each batch each)."""
    options = {**TRAINING, "steps": steps, **extra}
    torchrun("-m", "memory.train", "--data", str(data), "--out", str(out), "--init", str(init),
             *[text for key, value in options.items() for text in (f"--{key.replace('_', '-')}", str(value))])


def train_on_one(data: Path, out: Path, init: Path, steps: int, shards: int | None = 2, **extra) -> int:
    """:func:`train` with TRAINING's settings (and ``extra``) in this process drawing ``shards`` shards; returns its self-forced rollouts."""
    calls, self_forced = [], stream_module.self_forced

    def counted(*args, **kwargs):
        calls.append(1)
        return self_forced(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(stream_module, "self_forced", counted)
        train(TrainConfig(data=data, out=out, init=init, shards=shards, **{**TRAINING, "steps": steps, **extra}))
    return len(calls)


def losses(run: Path) -> list[tuple[int, float]]:
    """(step, loss) of each line of a run's loss.jsonl."""
    return [(entry["step"], entry["loss"]) for entry in map(json.loads, (run / "loss.jsonl").read_text().splitlines())]


def assert_same_run(one: Path, two: Path) -> None:
    """Two run folders hold the same loss log and checkpoint (model and optimizer state) within float tolerance."""
    assert [step for step, _ in losses(two)] == [step for step, _ in losses(one)]
    assert [loss for _, loss in losses(two)] == pytest.approx([loss for _, loss in losses(one)], rel=1e-5)
    for name in WEIGHTS:
        a, b = load_file(one / "checkpoint" / name), load_file(two / "checkpoint" / name)
        assert a.keys() == b.keys(), name
        for key in a:
            torch.testing.assert_close(b[key], a[key], rtol=1e-4, atol=1e-8, msg=f"{name} {key}")


@pytest.fixture(scope="module")
def runs(untrained_model, tmp_path_factory):  # noqa: F811
    """Folder of 2-step runs from the untrained model: "two" on 2 processes, "one" on 1 drawing the same 2 shards."""
    root = tmp_path_factory.mktemp("training")
    (root / "data").mkdir()
    (root / "data" / "ep.safetensors").symlink_to(SAMPLE_EPISODE)
    train_on_two(root / "data", root / "two", untrained_model, 2)
    forced = train_on_one(root / "data", root / "one", untrained_model, 2)
    assert forced > 0, "no window of the run was self-forced: pick another TRAINING seed"
    return root


def test_distributed_training_equals_one_process_on_the_same_global_batch(runs, untrained_model, tmp_path):  # noqa: F811
    assert_same_run(runs / "one", runs / "two")
    start = load_file(untrained_model / WEIGHTS[0])
    trained = load_file(runs / "two" / "checkpoint" / WEIGHTS[0])
    # the weights moved far beyond the tolerance: the comparison above is not vacuous
    assert max(float((trained[key] - start[key]).abs().max()) for key in start) > 1e-5
    # the second process drew its own windows: one process with one shard of 2 trains on others
    train_on_one(runs / "data", tmp_path / "one_shard", untrained_model, 2, shards=None)
    assert losses(tmp_path / "one_shard")[1][1] != pytest.approx(losses(runs / "two")[1][1], rel=1e-3)


def test_distributed_training_resumes(runs, untrained_model, tmp_path):  # noqa: F811
    one, two, moved = (shutil.copytree(runs / name, tmp_path / copy, symlinks=True)
                       for name, copy in (("one", "one"), ("two", "two"), ("two", "moved")))
    train_on_two(runs / "data", two, untrained_model, 3)
    train_on_one(runs / "data", one, untrained_model, 3)
    # rank 0 alone appended the resumed step to the log
    assert [step for step, _ in losses(two)] == [1, 2, 3]
    assert_same_run(one, two)
    # the 2-process run resumed on one process drawing its 2 shards goes on as it would have
    train_on_one(runs / "data", moved, untrained_model, 3)
    assert_same_run(two, moved)


def test_distributed_training_with_the_scene_critic_equals_one_process(runs, untrained_model, tmp_path):  # noqa: F811
    """A 2-process run with the critic logs the losses of a 1-process run drawing the same 2 shards, and saves its critic."""
    from memory.train.adversarial import CRITIC_FILE

    train_on_two(runs / "data", tmp_path / "two", untrained_model, 2, adversarial_weight=0.5)
    train_on_one(runs / "data", tmp_path / "one", untrained_model, 2, adversarial_weight=0.5)

    def logged(run: Path, key: str) -> list[float]:
        return [json.loads(line)[key] for line in (run / "loss.jsonl").read_text().splitlines()]

    # not to 1e-5 as without the critic: its first AdamW steps are ±lr wherever its gradient is below AdamW's eps,
    # so float noise of 1e-7 between one batch and two halves moves some of its weights by a whole lr
    for key in ("loss", "critic"):
        assert logged(tmp_path / "two", key) == pytest.approx(logged(tmp_path / "one", key), abs=1e-4), key
    one, two = (load_file(run / "checkpoint" / CRITIC_FILE) for run in (tmp_path / "one", tmp_path / "two"))
    assert one.keys() == two.keys() and any(key.startswith("optimizer.") for key in one)


def test_distributed_shards_split_the_batch_evenly_over_the_processes(tmp_path):
    config = TrainConfig(data=tmp_path, out=tmp_path, batch_size=6, seed=2)
    assert check_shards(config, Ranks()) == 1 and check_shards(config, Ranks(1, 2)) == 2
    assert check_shards(dataclasses.replace(config, shards=6), Ranks(2, 3)) == 6
    with pytest.raises(ValueError, match="shards: 3 shards cannot be split evenly over 2 processes"):
        check_shards(dataclasses.replace(config, shards=3), Ranks(0, 2))
    with pytest.raises(ValueError, match="batch_size: the global batch of 6 windows"):
        check_shards(dataclasses.replace(config, shards=4), Ranks(0, 2))
    # shard 0 draws the stream a one-process run always drew; the others their own
    assert shard_seed(config, 7, 0) == 2 * 100003 + 7
    assert len({shard_seed(config, step, shard) for step in range(3) for shard in range(4)}) == 12


@pytest.fixture(scope="module")
def episodes(tmp_path_factory):
    """Two episodes of two environments with revisits: the sample, and frames 24..99 of it relabelled MiniWorld."""
    folder = tmp_path_factory.mktemp("episodes")
    (folder / "sample.safetensors").symlink_to(SAMPLE_EPISODE)
    sample = read_episode(SAMPLE_EPISODE)
    frames = slice(24, 100)
    write_episode(dataclasses.replace(sample, rgb=sample.rgb[frames], depth=sample.depth[frames], c2w=sample.c2w[frames],
                                      actions=sample.actions[frames], context_frames=40, source=MINIWORLD),
                  folder / "part.safetensors")
    return folder


def figures(result):
    """A benchmark's JSON without what differs between runs of the same figures: timings, machine, process count."""
    if isinstance(result, dict):
        return {key: figures(value) for key, value in result.items()
                if "seconds" not in key and key not in ("machine", "processes")}
    if isinstance(result, list):
        return [figures(value) for value in result]
    return result


def assert_same_figures(one, two, where: str = "result") -> None:
    """Two JSON values are equal, their floats within float tolerance (nan equal to nan)."""
    if isinstance(one, dict):
        assert one.keys() == two.keys(), where
        for key in one:
            assert_same_figures(one[key], two[key], f"{where}.{key}")
    elif isinstance(one, list):
        assert len(one) == len(two), where
        for index, (a, b) in enumerate(zip(one, two)):
            assert_same_figures(a, b, f"{where}[{index}]")
    elif isinstance(one, float):
        assert two == pytest.approx(one, rel=1e-5, abs=1e-7, nan_ok=True), where
    else:
        assert one == two, where


def sweep_on_one_and_two(monkeypatch, tmp_path, script: str, *options: str) -> tuple[dict, dict]:
    """The JSON of a benchmark ``script`` run in this process and on 2 processes under torchrun."""
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    run_script(monkeypatch, script, "--json", str(one), "--threads", "1", *options)
    torchrun(str(ROOT / "benchmarks" / script), "--json", str(two), "--threads", "1", *options)
    assert two.with_suffix(".png").is_file()
    return json.loads(one.read_text()), json.loads(two.read_text())


def test_distributed_next_chunk_equals_one_process(untrained_model, episodes, tmp_path, monkeypatch):  # noqa: F811
    one, two = sweep_on_one_and_two(monkeypatch, tmp_path, "next_chunk.py", "--episodes", str(episodes), "--model",
                                    str(untrained_model), "--quick")
    assert (one["processes"], two["processes"], two["windows"]) == (1, 2, 2)
    assert len(two["by_environment"]) == 2
    assert_same_figures(figures(one), figures(two))


def test_distributed_drift_equals_one_process(untrained_model, episodes, tmp_path, monkeypatch):  # noqa: F811
    one, two = sweep_on_one_and_two(monkeypatch, tmp_path, "drift.py", "--episodes", str(episodes), "--model",
                                    str(untrained_model), "--max-frames", "8", "--bin", "4", "--steps", "2")
    assert (one["processes"], two["processes"], len(two["episodes"])) == (1, 2, 2)
    assert_same_figures(figures(one), figures(two))


def test_distributed_revisit_equals_one_process(untrained_model, episodes, tmp_path, monkeypatch):  # noqa: F811
    one, two = sweep_on_one_and_two(monkeypatch, tmp_path, "revisit.py", "--episodes", str(episodes), "--model",
                                    str(untrained_model), "--methods", "base,ltm,spatial,come,oracle", "--max-frames", "4",
                                    "--lora-steps", "2", "--lora-rank", "2")
    assert (one["processes"], two["processes"], len(two["episodes"])) == (1, 2, 2)
    assert two["revisit_frames"] > 0
    assert_same_figures(figures(one), figures(two))
