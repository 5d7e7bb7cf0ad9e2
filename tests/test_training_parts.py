"""The pieces of ``unicl.train``: step-addressed sampling, per-sample seeding, shard streams, the merged label
space of several ImageFolders, caption files, the schedule and the logs."""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import tarfile
import types

import numpy
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms

import unicl
from unicl.data.datasets import CaptionPairs, LabelledFolders, read_caption_file
from unicl.data.workers import worker_ignores_stop_signals
from unicl.text.prompts import LabelToPrompt
from unicl.training.config import TrainingConfig
from unicl.training.logs import RunLog
from unicl.training.mixing import batch_shares, join_batches
from unicl.training.sampling import KeyedSamples, StepBatchSampler, derive_seed, seeded_sample
from unicl.training.schedule import warmup_cosine
from unicl.training.shards import ShardedCaptions
from unicl.training.signals import StopSignals
from unicl.training.step import TrainStep, logit_learning_rate

# --- mixing sources --------------------------------------------------------------------------------------------------


@pytest.mark.slow
@given(fraction=st.floats(0.0, 1.0), batch_size=st.integers(1, 200), steps=st.integers(1, 5))
def test_every_batch_keeps_the_ratio_to_half_a_sample(fraction, batch_size, steps):
    """The trainer's way of mixing (it replaced data.MixedDataset, whose every prefix kept the ratio to one sample):
    every joined batch holds round(ratio × B) image-label samples, first, and the rest image-text pairs."""
    shares = batch_shares(batch_size, fraction)
    assert sum(shares.values()) == batch_size and all(share > 0 for share in shares.values())
    labelled = shares.get("labelled", 0)
    assert abs(labelled - fraction * batch_size) <= 0.5
    sources = {
        "labelled": itertools.repeat({"labels": torch.zeros(labelled, dtype=torch.long)}),
        "captioned": itertools.repeat({"labels": torch.full((batch_size - labelled,), -1)}),
    }
    batches = join_batches(sources[name] for name in shares)
    for _ in range(steps):
        kinds = (next(batches)["labels"] >= 0).tolist()
        assert len(kinds) == batch_size and kinds == sorted(kinds, reverse=True)
        assert abs(sum(kinds) - fraction * batch_size) <= 1


def test_mixing_bad_input():
    with pytest.raises(ValueError, match=re.escape("ratio must be a number in [0, 1]; got 1.5")):
        batch_shares(8, 1.5)
    with pytest.raises(ValueError, match=re.escape("batch_size must be an int >= 1; got 0")):
        batch_shares(0, 0.5)
    with pytest.raises(ValueError, match="sources must hold at least one iterator"):
        next(join_batches([]))
    short = iter([{"labels": torch.zeros(1)}])
    assert len(list(join_batches([short, itertools.repeat({"labels": torch.ones(1)})]))) == 1  # ends with the first


# --- step-addressed batches ------------------------------------------------------------------------------------------


@given(length=st.integers(1, 60), world_size=st.integers(1, 5), batch_size=st.integers(1, 9), seed=st.integers(0, 9))
def test_every_epoch_deals_each_sample_to_the_ranks_once_up_to_padding(length, world_size, batch_size, seed):
    samplers = [StepBatchSampler(length, batch_size, rank, world_size, seed) for rank in range(world_size)]
    per_rank = math.ceil(length / world_size)
    for epoch in (0, 1):
        keys = [s.key(p) for s in samplers for p in range(epoch * per_rank, (epoch + 1) * per_rank)]
        assert {key[0] for key in keys} == {epoch}
        indices = [key[1] for key in keys]
        assert set(indices) == set(range(length))
        assert len(indices) - length == per_rank * world_size - length < world_size  # only the padding repeats


@given(start=st.integers(0, 30), batch_size=st.integers(1, 7), length=st.integers(1, 40))
def test_a_sampler_started_at_a_step_yields_what_the_whole_stream_has_there(start, batch_size, length):
    whole = StepBatchSampler(length, batch_size, rank=1, world_size=3, seed=4)
    resumed = iter(StepBatchSampler(length, batch_size, rank=1, world_size=3, seed=4, start_step=start))
    stream = iter(whole)
    for _ in range(start):
        next(stream)
    for _ in range(3):
        assert next(resumed) == next(stream)


def test_epochs_are_shuffled_differently_and_seeds_matter():
    sampler = StepBatchSampler(50, 50, rank=0, world_size=1, seed=0)
    first, second = [k[1] for k in sampler.batch(0)], [k[1] for k in sampler.batch(1)]
    assert sorted(first) == sorted(second) == list(range(50)) and first != second
    other = [k[1] for k in StepBatchSampler(50, 50, rank=0, world_size=1, seed=1).batch(0)]
    assert other != first


def test_sampler_arguments_are_checked():
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\); got 2"):
        StepBatchSampler(10, 2, rank=2, world_size=2, seed=0)
    with pytest.raises(ValueError, match="batch_size"):
        StepBatchSampler(10, 0, rank=0, world_size=1, seed=0)


@pytest.mark.slow
def test_seeds_agree_across_processes():
    code = "from unicl.training.sampling import derive_seed; print(derive_seed('order', 3, 7))"
    printed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert int(printed) == derive_seed("order", 3, 7) and 0 <= derive_seed("x") < 2**63


# --- per-sample seeding ----------------------------------------------------------------------------------------------


def test_seeded_samples_do_not_depend_on_or_disturb_the_global_generators():
    def draw():
        return random.random(), float(numpy.random.rand()), float(torch.rand(()))

    random.seed(1), numpy.random.seed(1), torch.manual_seed(1)
    expected_after = draw()
    random.seed(1), numpy.random.seed(1), torch.manual_seed(1)
    with seeded_sample(5, 0, 3) as generator:
        inside = (*draw(), generator.random())
    assert draw() == expected_after
    random.seed(99), numpy.random.seed(99), torch.manual_seed(99)
    with seeded_sample(5, 0, 3) as generator:
        assert (*draw(), generator.random()) == inside
    with seeded_sample(5, 0, 4) as generator:
        assert (*draw(), generator.random()) != inside


class _RandomImages:
    """Samples whose image is random noise drawn by a torchvision transform (the global torch generator)."""

    def __init__(self, targets):
        self.targets = targets
        self.augment = transforms.Compose([transforms.RandomResizedCrop(4), transforms.PILToTensor()])

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, index):
        pixels = (numpy.arange(48).reshape(4, 4, 3) * 5).astype("uint8")
        return self.augment(Image.fromarray(pixels)), self.targets[index]


def test_keyed_samples_are_the_same_in_any_order_and_any_worker():
    prompts = LabelToPrompt(["cat", ["dog", "puppy"]], seed=0)
    samples = KeyedSamples(_RandomImages([0, 1, "a caption", 1, 0, 1]), seed=3, prompts=prompts)
    keys = [(epoch, index) for epoch in (0, 1) for index in range(6)]
    forward = [samples[key] for key in keys]
    backward = [samples[key] for key in reversed(keys)][::-1]
    loader = DataLoader(samples, batch_size=None, sampler=keys, num_workers=2)
    for a, b, c in zip(forward, backward, loader):
        assert torch.equal(a[0], b[0]) and torch.equal(a[0], c[0]) and a[1:] == b[1:] == tuple(c[1:])
    assert forward[2][1:] == ("a caption",)
    assert len(forward[0]) == 3 and forward[0][2] == 0 and forward[0][1].endswith("cat.")
    assert any(not torch.equal(forward[i][0], forward[i + 6][0]) for i in range(6))  # epochs augment anew


def test_keyed_class_ids_need_prompts():
    with pytest.raises(ValueError, match="has a class id but no prompts"):
        KeyedSamples(_RandomImages([0]), seed=0)[(0, 0)]


# --- WebDataset shards -----------------------------------------------------------------------------------------------


@pytest.fixture()
def shards(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (10, 20, 30)).save(buffer, format="PNG")
    for shard in range(3):
        with tarfile.open(tmp_path / f"s-{shard}.tar", "w") as archive:
            for position in range(5):
                for extension, payload in (("png", buffer.getvalue()), ("txt", f"caption {shard}/{position}".encode())):
                    member = tarfile.TarInfo(f"{position:03d}.{extension}")
                    member.size = len(payload)
                    archive.addfile(member, io.BytesIO(payload))
    return str(tmp_path / "s-{0..2}.tar")


def _captions(dataset, batches, workers):
    loader = DataLoader(dataset, batch_size=dataset.batch_size, num_workers=workers, collate_fn=list)
    stream = iter(loader)
    return [[caption for _, caption in next(stream)] for _ in range(batches)]


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2, 3])
def test_shard_streams_resume_at_any_step(shards, workers):
    def dataset(start):
        return ShardedCaptions(shards, transforms.PILToTensor(), 2, seed=1, workers=workers, start_step=start)

    whole = _captions(dataset(0), 12, workers)
    assert len({caption for batch in whole for caption in batch}) == 15  # every sample within 12 batches of 2
    for start in (1, 4, 5):
        assert _captions(dataset(start), 12 - start, workers) == whole[start:]


def test_ranks_read_disjoint_shards(shards):
    ranks = [ShardedCaptions(shards, transforms.PILToTensor(), 5, seed=0, rank=r, world_size=3) for r in range(3)]
    first = [{caption.split("/")[0] for caption in _captions(rank, 1, 0)[0]} for rank in ranks]
    assert all(len(names) == 1 for names in first) and len(set.union(*first)) == 3


def test_shard_samples_without_a_caption_are_named(tmp_path):
    with tarfile.open(tmp_path / "bad.tar", "w") as archive:
        member = tarfile.TarInfo("lonely.png")
        member.size = 3
        archive.addfile(member, io.BytesIO(b"abc"))
    with pytest.raises(ValueError, match=r"sample 'lonely' in .*bad.tar' needs an image .* it has \['png'\]"):
        next(iter(ShardedCaptions(str(tmp_path / "bad.tar"), transforms.PILToTensor(), 1, seed=0)))


# --- ImageFolders and caption files ----------------------------------------------------------------------------------


def _folder(root, classes):
    for name in classes:
        (root / name).mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(root / name / "0.png")
    return root


def test_image_folders_merge_classes_by_name(tmp_path):
    first = _folder(tmp_path / "a", ["cat", "golden_retriever"])
    second = _folder(tmp_path / "b", ["Golden Retriever", "zebra"])
    folders = LabelledFolders([first, second], transforms.PILToTensor())
    assert folders.class_names == ["cat", "golden_retriever", "zebra"]
    assert folders.class_ids == [[0, 1], [1, 2]]
    assert [target for _, target in (folders[i] for i in range(len(folders)))] == [0, 1, 1, 2]
    named = LabelledFolders([first, second], transforms.PILToTensor(), [["kitty", "dog"], None])
    assert named.class_names == ["kitty", "dog", "Golden Retriever", "zebra"]
    with pytest.raises(ValueError, match="has 2 classes but 1 class names were given"):
        LabelledFolders([first], transforms.PILToTensor(), [["cat"]])
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        LabelledFolders([tmp_path / "none"], transforms.PILToTensor())


def test_caption_files_are_read_and_checked(tmp_path):
    _folder(tmp_path, ["images"])
    (tmp_path / "pairs.tsv").write_text("filepath\ttitle\nimages/0.png\ta dark square\n")
    assert read_caption_file(tmp_path / "pairs.tsv") == [((tmp_path / "images" / "0.png").resolve(), "a dark square")]
    pairs = CaptionPairs([tmp_path / "pairs.tsv", tmp_path / "pairs.tsv"], transforms.PILToTensor())
    assert len(pairs) == 2 and pairs[1][1] == "a dark square" and pairs[1][0].shape == (3, 4, 4)
    (tmp_path / "bad.csv").write_text("path,text\nimages/0.png,x\n")
    with pytest.raises(ValueError, match="needs a header with an image column"):
        read_caption_file(tmp_path / "bad.csv")
    (tmp_path / "missing.csv").write_text("image,caption\nimages/9.png,x\n")
    with pytest.raises(FileNotFoundError, match=r"image 'images/9\.png' does not exist"):
        read_caption_file(tmp_path / "missing.csv")


# --- schedule and logs -----------------------------------------------------------------------------------------------


@given(steps=st.integers(1, 300), warmup_share=st.floats(0, 1), floor=st.floats(0, 1))
def test_the_schedule_warms_up_then_decays_to_its_floor(steps, warmup_share, floor):
    warmup = int(steps * warmup_share)
    schedule = warmup_cosine(steps, warmup, floor)
    values = [schedule(step) for step in range(steps + 1)]
    assert all(b > a for a, b in itertools.pairwise(values[:warmup]))
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(values[warmup:]))
    assert values[-1] == pytest.approx(floor) and max(values) <= 1 + 1e-12
    if warmup:
        assert values[warmup - 1] == 1.0


@given(steps=st.integers(1, 2000))
def test_the_sigmoid_runs_logit_learning_rate_lets_the_bias_travel_its_initial_distance(steps):
    """Without warm-up or floor the cosine's multipliers sum to ``(steps + 1) / 2`` (``Σ_{t<n} cos(πt/n) = 1``), so
    AdamW's reach of about one learning rate a step covers the bias's 10 at ``20 / (steps + 1)``; never below --lr
    (here 0.02, which the rule gives from 999 steps on)."""
    config = TrainingConfig(model="unicl_tiny", batch_size=8, steps=steps, output="run", loss="sigmoid", lr=0.02)
    assert logit_learning_rate(config) == pytest.approx(max(0.02, 20 / (steps + 1)), rel=1e-9)
    assert logit_learning_rate(dataclasses.replace(config, loss="softmax")) is None
    assert logit_learning_rate(dataclasses.replace(config, logit_lr=0.02)) == 0.02


@pytest.mark.parametrize("loss", ["softmax", "sigmoid"])
def test_a_run_trains_the_logit_scale_and_bias_at_their_learning_rate_on_the_runs_schedule(tmp_path, loss):
    """--loss sigmoid puts the scale and the bias in a group of their own at `logit_learning_rate`'s rate; --loss
    softmax keeps the model's two groups, the scale at --lr (its optimiser as it always was)."""
    config = TrainingConfig(model="unicl_tiny", batch_size=8, steps=40, warmup=4, output=tmp_path, loss=loss)
    model = unicl.create_model("unicl_tiny", **({"logit_bias": -10.0} if loss == "sigmoid" else {}))
    step = TrainStep(config, model, torch.nn.Identity(), torch.device("cpu"))
    groups = step.optimizer.param_groups
    scalars = [model.logit_scale] if loss == "softmax" else [model.logit_scale, model.logit_bias]
    if loss == "softmax":
        assert len(groups) == 2 and any(p is model.logit_scale for p in groups[1]["params"])
        assert step.logit_group is None
        assert [group["initial_lr"] for group in groups] == [5e-4, 5e-4]
    else:
        assert len(groups) == 3 and [id(p) for p in groups[2]["params"]] == [id(p) for p in scalars]
        assert step.logit_group == 2
        assert groups[2]["weight_decay"] == 0.0
        assert groups[2]["initial_lr"] == pytest.approx(10 / sum(warmup_cosine(40, 4)(t) for t in range(40)))
        assert all(not any(p is q for q in scalars) for group in groups[:2] for p in group["params"])
    for _ in range(7):  # the warm-up and the decay scale every group alike
        step.optimizer.step()  # no gradients: nothing moves, and the scheduler sees the order it expects
        step.scheduler.step()
        ratios = [group["lr"] / group["initial_lr"] for group in groups]
        assert ratios == pytest.approx([warmup_cosine(40, 4)(step.scheduler.last_epoch)] * len(groups), rel=1e-12)


def test_the_log_writes_jsonl_and_tensorboard_scalars(tmp_path, monkeypatch):
    scalars = []

    class Writer:
        def __init__(self, directory, purge_step):
            self.directory, self.purge_step = directory, purge_step

        def add_scalar(self, name, value, step):
            scalars.append((name, value, step))

        def close(self):
            scalars.append("closed")

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", types.SimpleNamespace(SummaryWriter=Writer))
    log = RunLog(tmp_path, total_steps=10, start_step=4, progress=False)
    log.record(5, "train", {"loss": 1.5, "lr": 0.1, "note": "text"})
    log.close()
    assert json.loads((tmp_path / "log.jsonl").read_text()) == {
        "step": 5, "kind": "train", "loss": 1.5, "lr": 0.1, "note": "text",
    }  # fmt: skip
    assert scalars == [("train/loss", 1.5, 5), ("train/lr", 0.1, 5), "closed"]


def test_without_tensorboard_the_log_is_silent_unless_it_was_asked_for(tmp_path, monkeypatch, recwarn):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails
    log = RunLog(tmp_path, total_steps=2, progress=False)
    log.record(1, "eval", {"top1": 0.5})
    log.close()
    assert [str(warning.message) for warning in recwarn] == []
    assert not (tmp_path / "tensorboard").exists()
    with pytest.raises(ImportError, match=r"^--tensorboard needs the tensorboard package: pip install tensorboard"):
        RunLog(tmp_path / "asked", total_steps=2, progress=False, tensorboard=True)
    silent = RunLog(tmp_path / "other", total_steps=2, enabled=False)
    silent.record(1, "train", {"loss": 1.0})
    assert not (tmp_path / "other").exists()


# --- docs ------------------------------------------------------------------------------------------------------------

TRAINING_MODULES = [
    "unicl.data.batches", "unicl.training.checkpoints", "unicl.training.gradient_cache", "unicl.training.mixing",
    "unicl.training.schedule", "unicl.training.step",
]  # fmt: skip


@pytest.mark.parametrize("module_name", TRAINING_MODULES)
def test_docstring_examples_render_with_their_prompts(module_name):
    """mkdocstrings (griffe's Google parser) renders an ``Examples:`` section as a console session, prompts and all;
    under any other title (``Example:``) the ``>>>`` lines become Markdown block quotes and lose their prompts, as
    `CheckpointDirectory`'s did."""
    import importlib
    import inspect
    import logging

    griffe = pytest.importorskip("griffe")
    logging.getLogger("griffe").setLevel(logging.ERROR)  # it warns of parameters documented without annotations
    module = importlib.import_module(module_name)
    objects = [module, *(value for value in vars(module).values() if getattr(value, "__module__", None) == module_name)]
    objects += [member for value in list(objects) if inspect.isclass(value) for member in vars(value).values()]
    examples = 0
    for value in objects:
        text = inspect.getdoc(value) if callable(value) or inspect.ismodule(value) else None
        if not text or ">>>" not in text:
            continue
        sections = griffe.Docstring(text).parse("google")
        rendered = [body for section in sections if section.kind.value == "examples" for _, body in section.value]
        assert any(">>>" in body for body in rendered), f"{module_name}: {getattr(value, '__qualname__', value)}"
        examples += 1
    assert examples >= 1


def test_ctrl_c_asks_for_a_checkpoint_and_a_second_one_stops_at_once():
    # Python's own Ctrl-C handler, as in a terminal: a test runner started as a background job inherits an ignored
    # SIGINT, which StopSignals rightly leaves ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.received == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            # The handler runs at the next bytecode boundary; this loop gives it some.
            for _ in range(1000):
                pass
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_signal_the_process_ignores_stays_ignored():
    previous = signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    try:
        with StopSignals() as stop:
            assert signal.getsignal(signal.SIGUSR1) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGUSR1)
        assert stop.received == 0
    finally:
        signal.signal(signal.SIGUSR1, previous)


class _Pid(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 1_000_000

    def __getitem__(self, index: int) -> int:
        return os.getpid()


@pytest.mark.skipif(not hasattr(signal, "sigwaitinfo"), reason="the workers tell senders apart by sigwaitinfo")
def test_workers_outlive_the_groups_stop_signals_and_leave_when_their_loader_stops():
    loader = DataLoader(_Pid(), batch_size=2, num_workers=2, worker_init_fn=worker_ignores_stop_signals)
    batches = iter(loader)
    workers = {int(pid) for _ in range(4) for pid in next(batches)}
    assert len(workers) == 2
    # Sent by another process, as SLURM's and a terminal's are (a SIGTERM from the loader's own process ends a worker).
    sender = (
        "import os, sys\n"
        "for number in sys.argv[1].split(','):\n"
        "    for pid in sys.argv[2:]:\n"
        "        os.kill(int(pid), int(number))"
    )
    numbers = ",".join(str(int(number)) for number in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1))
    with StopSignals() as stop:
        subprocess.run([sys.executable, "-c", sender, numbers, *map(str, workers)], check=True)
        # Served after the signals: the workers are alive (a dead one fails this with the DataLoader's error).
        assert {int(pid) for _ in range(8) for pid in next(batches)} == workers
    assert stop.received == 0  # sent to the workers only
    processes = list(batches._workers)  # type: ignore[attr-defined]
    del batches
    for process in processes:
        process.join(timeout=30)
        assert process.exitcode == 0
