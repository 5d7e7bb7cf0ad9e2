"""Gradient caching (unicl.training.cached_backward) against plain full-batch backward passes, float32 on the CPU."""

from __future__ import annotations

import copy
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from gloo_ranks import finish_rank, start_rank
from torch import nn

import unicl
import unicl.loss.distributed
from unicl import UniCLLoss, UniCLSigmoidLoss
from unicl.loss.shapes import caption_groups, with_hard_negatives
from unicl.training import cached_backward

TOLERANCE = 1e-5
LABELS = torch.tensor([0, 0, 1, -1, -1, 2, 1, -1, 0, 3, -1])
B = len(LABELS)


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got - want).norm() / want.norm().clamp_min(1e-30))


def _assert_same_grads(cached: nn.Module, plain: nn.Module) -> None:
    checked = 0
    for (name, got), (_, want) in zip(cached.named_parameters(), plain.named_parameters()):
        if want.grad is None:
            assert got.grad is None or not got.grad.any(), name
            continue
        assert got.grad is not None, f"{name} has no gradient"
        error = _relative_error(got.grad, want.grad)
        assert error <= TOLERANCE, f"{name}: relative error {error:.2e}"
        checked += 1
    assert checked > 0


def _tiny(drop_path: float = 0.0, checkpointing: bool = False) -> nn.Module:
    torch.manual_seed(0)
    image = {"timm_kwargs": {"patch_size": 8, "depth": 2, "embed_dim": 64, "num_heads": 2, "drop_path_rate": drop_path}}
    if checkpointing:
        image["grad_checkpointing"] = True
    text = {"layers": 2, "grad_checkpointing": checkpointing}
    return unicl.create_model("unicl_tiny", image=image, text=text).train()


def _tiny_inputs():
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(B, 3, 32, 32, generator=generator)
    ids = torch.randint(1, 1000, (B, 16), generator=generator)
    mask = torch.ones(B, 16, dtype=torch.long)
    mask[::3, 10:] = 0
    return images, {"input_ids": ids, "attention_mask": mask}


def _per_micro_batch_step(model, images, texts, labels, loss_fn, micro_batch, seed) -> torch.Tensor:
    """The plain step whose model sees the same micro-batches (and random stream) as the cached one: per-micro-batch
    forwards with a graph, concatenated, one loss, one backward."""
    torch.manual_seed(seed)
    outs = []
    for start in range(0, images.shape[0], micro_batch):
        rows = slice(start, start + micro_batch)
        text_rows = {k: v[rows] for k, v in texts.items()} if isinstance(texts, dict) else texts[rows]
        outs.append(model(images[rows], **text_rows) if isinstance(texts, dict) else model(images[rows], text_rows))
    loss = loss_fn(
        image_features=torch.cat([o["image_features"] for o in outs]),
        text_features=torch.cat([o["text_features"] for o in outs]),
        logit_scale=outs[-1]["logit_scale"],
        labels=labels,
    )
    loss.backward()
    return loss.detach()


def test_unicl_tiny_matches_the_plain_full_batch_step():
    model = _tiny()
    plain = copy.deepcopy(model)
    images, texts = _tiny_inputs()
    loss_fn = UniCLLoss(backend="dense")
    expected = loss_fn(**plain(images, **texts), labels=LABELS)
    expected.backward()
    loss = cached_backward(model, images, texts, LABELS, loss_fn=loss_fn, micro_batch=4)  # 4 + 4 + 3 rows
    assert not loss.requires_grad
    assert _relative_error(loss, expected.detach()) <= TOLERANCE
    _assert_same_grads(model, plain)
    assert model.logit_scale.grad is not None and model.logit_scale.grad.abs() > 0


@pytest.mark.slow
def test_the_trainers_loss_without_renormalising_matches_the_plain_step_and_the_normalising_loss():
    """The trainer's loss takes the model's unit features as they are (normalize=False): gradient caching agrees with
    the plain step, and both with a loss that normalises again (normalising a unit row changes it only by rounding,
    and the model's own normalisation already projects the gradient onto the sphere's tangent)."""
    model = _tiny()
    plain, renormalised = copy.deepcopy(model), copy.deepcopy(model)
    images, texts = _tiny_inputs()
    loss_fn = UniCLLoss(backend="dense", normalize=False)
    expected = loss_fn(**plain(images, **texts), labels=LABELS)
    expected.backward()
    again = UniCLLoss(backend="dense", normalize=True)(**renormalised(images, **texts), labels=LABELS)
    again.backward()
    loss = cached_backward(model, images, texts, LABELS, loss_fn=loss_fn, micro_batch=4)
    assert _relative_error(loss, expected.detach()) <= TOLERANCE
    assert _relative_error(again.detach(), expected.detach()) <= TOLERANCE
    _assert_same_grads(model, plain)
    _assert_same_grads(renormalised, plain)


@pytest.mark.slow
def test_drop_path_masks_are_replayed_and_checkpointing_works():
    """Drop-path on, train mode: pass 2 must draw pass 1's masks, or the cached gradients belong to other masks."""
    model = _tiny(drop_path=0.5, checkpointing=True)
    plain = copy.deepcopy(model)
    images, texts = _tiny_inputs()
    loss_fn = UniCLLoss(backend="dense")
    expected = _per_micro_batch_step(plain, images, texts, LABELS, loss_fn, 5, seed=7)
    after_plain = torch.get_rng_state()
    torch.manual_seed(7)
    loss = cached_backward(model, images, texts, LABELS, loss_fn=loss_fn, micro_batch=5)
    assert torch.equal(torch.get_rng_state(), after_plain)  # the generator ends as pass 1 left it
    assert _relative_error(loss, expected) <= TOLERANCE
    _assert_same_grads(model, plain)
    # And the masks really are random: another seed gives another loss.
    torch.manual_seed(8)
    assert float(cached_backward(model, images, texts, LABELS, loss_fn=loss_fn, micro_batch=5)) != float(loss)


@pytest.mark.slow
def test_open_clip_tiny_clip_matches_the_plain_step():
    open_clip = pytest.importorskip("open_clip")
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    torch.manual_seed(0)
    vision = CLIPVisionCfg(layers=1, width=32, head_width=16, patch_size=8, image_size=32)
    text = CLIPTextCfg(context_length=12, vocab_size=100, width=32, heads=2, layers=1)
    generator = torch.Generator().manual_seed(2)
    images = torch.randn(B, 3, 32, 32, generator=generator)
    ids = torch.randint(1, 100, (B, 12), generator=generator)
    loss_fn = UniCLLoss(backend="dense")
    for output_dict in (True, False):
        model = CLIP(embed_dim=16, vision_cfg=vision, text_cfg=text, output_dict=output_dict).train()
        plain = copy.deepcopy(model)
        plain.output_dict = True
        expected = loss_fn(**plain(images, ids), labels=LABELS)
        expected.backward()
        loss = cached_backward(model, images, ids, LABELS, loss_fn=loss_fn, micro_batch=3)
        assert _relative_error(loss, expected.detach()) <= TOLERANCE
        _assert_same_grads(model, plain)
    assert open_clip is not None


class _ResNetStyle(nn.Module):
    """A small residual CNN with BatchNorm, a bag-of-words text tower, and CLIP's log-space temperature."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(
            nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
            nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8),
        )  # fmt: skip
        self.image_head = nn.Linear(8, 16)
        self.embedding = nn.EmbeddingBag(50, 16)
        self.text_head = nn.Sequential(nn.Linear(16, 16), nn.BatchNorm1d(16, momentum=None))  # cumulative average
        self.logit_scale = nn.Parameter(torch.tensor(2.0))

    def encode_image(self, images):
        x = self.stem(images)
        x = torch.relu(x + self.block(x))
        return nn.functional.normalize(self.image_head(x.mean((2, 3))), dim=-1)

    def encode_text(self, ids):
        return nn.functional.normalize(self.text_head(self.embedding(ids)), dim=-1)

    def forward(self, images, ids):
        return {
            "image_features": self.encode_image(images),
            "text_features": self.encode_text(ids),
            "logit_scale": self.logit_scale.exp().clamp(max=100),
        }


def test_batch_norm_sees_micro_batches_and_updates_running_stats_once_per_micro_batch():
    torch.manual_seed(0)
    model = _ResNetStyle().train()
    plain = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(B, 3, 8, 8, generator=generator)
    ids = torch.randint(0, 50, (B, 5), generator=generator)
    loss_fn = UniCLLoss(backend="dense")
    expected = _per_micro_batch_step(plain, images, ids, LABELS, loss_fn, 4, seed=0)
    loss = cached_backward(model, images, ids, LABELS, loss_fn=loss_fn, micro_batch=4)
    assert _relative_error(loss, expected) <= TOLERANCE
    _assert_same_grads(model, plain)
    for (name, got), (_, want) in zip(model.named_buffers(), plain.named_buffers()):
        if name.endswith("num_batches_tracked"):
            assert int(got) == int(want) == 3, name  # three micro-batches, one update each
        else:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)


def test_gradient_scaler_scales_the_gradients():
    model = _ResNetStyle().train()
    plain = copy.deepcopy(model)
    images, ids = torch.randn(6, 3, 8, 8), torch.randint(0, 50, (6, 5))
    loss_fn = UniCLLoss(backend="dense")
    expected = _per_micro_batch_step(plain, images, ids, None, loss_fn, 3, seed=0)
    scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    loss = cached_backward(model, images, ids, loss_fn=loss_fn, micro_batch=3, scaler=scaler)
    assert _relative_error(loss, expected) <= TOLERANCE  # the returned loss is not scaled
    for got, want in zip(model.parameters(), plain.parameters()):
        assert want.grad is not None and got.grad is not None
        assert _relative_error(got.grad, 256.0 * want.grad) <= TOLERANCE


@pytest.mark.slow
def test_under_bf16_autocast():
    """Under autocast both passes and the loss run in bf16 as in the plain step. The reference disables autocast's
    weight cache: with it, the plain step's micro-batches share one bf16 copy of each weight and sum their weight
    gradients in bf16 (about 3e-3 apart here), whereas each of pass 2's backwards adds its own into the fp32 .grad."""
    torch.manual_seed(0)
    model = _ResNetStyle().train()
    plain = copy.deepcopy(model)
    images, ids = torch.randn(8, 3, 8, 8), torch.randint(0, 50, (8, 5))
    loss_fn = UniCLLoss(backend="dense")
    with torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False):
        expected = _per_micro_batch_step(plain, images, ids, None, loss_fn, 3, seed=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model(images[:3], ids[:3])["image_features"].dtype == torch.bfloat16
        loss = cached_backward(model, images, ids, loss_fn=loss_fn, micro_batch=3)
    assert _relative_error(loss, expected) <= TOLERANCE
    _assert_same_grads(model, plain)


@pytest.mark.parametrize("micro_batch", [0, -2, 2.0, True, None, "4"])
def test_micro_batch_must_be_a_positive_int(micro_batch):
    model = _ResNetStyle()
    with pytest.raises(ValueError, match="micro_batch"):
        cached_backward(model, torch.randn(2, 3, 8, 8), torch.zeros(2, 5, dtype=torch.long),
                        loss_fn=UniCLLoss(), micro_batch=micro_batch)  # fmt: skip


def test_texts_must_have_the_images_rows():
    with pytest.raises(ValueError, match="texts"):
        cached_backward(_ResNetStyle(), torch.randn(3, 3, 8, 8), torch.zeros(2, 5, dtype=torch.long),
                        loss_fn=UniCLLoss(), micro_batch=2)  # fmt: skip


@pytest.mark.parametrize(
    ("num_images", "captions", "negatives", "loss_fn"),
    [
        (4, [3, 1, 0, 4], 5, UniCLLoss(backend="dense")),  # M = 13 > N: micro-batches with no image rows
        (4, [3, 1, 0, 4], 5, UniCLSigmoidLoss(backend="chunked")),
        (7, [1, 0, 0, 1, 0, 0, 0], 0, UniCLLoss(backend="chunked")),  # M = 2 < N: micro-batches with no texts
    ],
    ids=["more texts, softmax", "more texts, sigmoid", "fewer texts, softmax"],
)
def test_text_labels_match_the_plain_full_batch_step(num_images, captions, negatives, loss_fn):
    """N images and M != N texts with labels of their own: images and texts go through the towers in separate
    micro-batches, and the gradients are those of the plain full-batch step."""
    model = _tiny()
    plain = copy.deepcopy(model)
    labels, text_labels = caption_groups(torch.tensor(captions))
    text_labels = with_hard_negatives(text_labels, negatives)
    generator = torch.Generator().manual_seed(3)
    images = torch.randn(num_images, 3, 32, 32, generator=generator)
    texts = {
        "input_ids": torch.randint(1, 1000, (len(text_labels), 16), generator=generator),
        "attention_mask": torch.ones(len(text_labels), 16, dtype=torch.long),
    }
    expected = loss_fn(**plain(images, **texts), labels=labels, text_labels=text_labels)
    expected.backward()
    loss = cached_backward(model, images, texts, labels, loss_fn=loss_fn, micro_batch=3, text_labels=text_labels)
    assert _relative_error(loss, expected.detach()) <= TOLERANCE
    _assert_same_grads(model, plain)


def test_text_tensors_must_agree_in_rows_with_text_labels():
    texts = {"input_ids": torch.zeros(5, 4, dtype=torch.long), "attention_mask": torch.ones(4, 4, dtype=torch.long)}
    with pytest.raises(ValueError, match=r"texts must be \[M, \.\.\.\] tensors with the same M = 5 rows each"):
        cached_backward(_ResNetStyle(), torch.randn(3, 3, 8, 8), texts, torch.arange(3), loss_fn=UniCLLoss(),
                        micro_batch=2, text_labels=torch.arange(5))  # fmt: skip


# --- DDP on 2 gloo ranks, with the global-batch loss ---------------------------------------------------------------

LOCAL = 5  # rows per rank: micro-batches of 2 + 2 + 1


def _ddp_worker(rank: int, world: int, init_file: str, result_dir: str) -> None:
    start_rank(rank, world, init_file)
    failure = ""
    try:
        torch.manual_seed(0)
        base = unicl.create_model(
            "unicl_tiny", embed_dim=32, text={"layers": 1},
            image={"timm_kwargs": {"patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2}},
        ).train()  # fmt: skip
        cached = nn.parallel.DistributedDataParallel(copy.deepcopy(base))
        plain = nn.parallel.DistributedDataParallel(copy.deepcopy(base))
        generator = torch.Generator().manual_seed(5)
        images = torch.randn(world * LOCAL, 3, 32, 32, generator=generator)
        ids = torch.randint(1, 1000, (world * LOCAL, 16), generator=generator)
        labels = torch.randint(-1, 3, (world * LOCAL,), generator=generator)
        rows = slice(rank * LOCAL, (rank + 1) * LOCAL)
        loss_fn = UniCLLoss(backend="dense", gather_distributed=True, equal_batches=True)
        calls = {"n": 0}
        original = unicl.loss.distributed._gather_rows
        expected = loss_fn(**plain(images[rows], ids[rows]), labels=labels[rows])
        expected.backward()

        def counting(*args, **kwargs):
            calls["n"] += 1
            return original(*args, **kwargs)

        unicl.loss.distributed._gather_rows = counting
        try:
            loss = cached_backward(cached, images[rows], ids[rows], labels[rows], loss_fn=loss_fn, micro_batch=2)
        finally:
            unicl.loss.distributed._gather_rows = original
        assert _relative_error(loss, expected.detach()) <= TOLERANCE
        _assert_same_grads(cached.module, plain.module)
        # All-reduced: both ranks hold the same gradients.
        for parameter in cached.module.parameters():
            assert parameter.grad is not None
            other = parameter.grad.clone()
            dist.broadcast(other, 0)
            assert _relative_error(parameter.grad, other) <= 1e-6
        # And they are the single-process gradients of the global batch.
        if rank == 0:
            single = copy.deepcopy(base)
            UniCLLoss(backend="dense")(**single(images, ids), labels=labels).backward()
            _assert_same_grads(cached.module, single)
        # One loss call: one gather of the features (image and text together) and one of the labels.
        assert calls["n"] == 2, f"{calls['n']} gathers (the features gathered more than once?)"
    except Exception:
        failure = f"rank {rank}:\n{traceback.format_exc()}"
    finish_rank(rank, result_dir, failure)


@pytest.mark.slow
def test_ddp_on_two_gloo_ranks_with_the_global_loss(tmp_path):
    world = 2
    mp.spawn(_ddp_worker, args=(world, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=world, join=True)
    failures = [(tmp_path / f"rank{rank}.txt").read_text() for rank in range(world)]
    assert not any(failures), "\n".join(failures)


def _unequal_texts_worker(rank: int, world: int, init_file: str, result_dir: str, kind: str) -> None:
    """Rank ``r`` holds 5 images and ``6 + 2r`` texts, so with micro-batches of 2 rank 0 runs 3 and rank 1 runs 4
    (text labels: a rank's text count sets its count, as a class bank or hard negatives make it in training); every
    text micro-batch has 2 rows, as the text tower's BatchNorm1d of the batch-norm model needs."""
    start_rank(rank, world, init_file)
    failure = ""
    try:
        transformer = kind == "transformer"
        base = _tiny() if transformer else _ResNetStyle().train()
        cached = nn.parallel.DistributedDataParallel(copy.deepcopy(base))
        generator = torch.Generator().manual_seed(11 + rank)
        texts = LOCAL + 1 + 2 * rank
        side = 32 if transformer else 8
        images = torch.randn(LOCAL, 3, side, side, generator=generator)
        ids = torch.randint(1, 50, (texts, 16), generator=generator)
        text_input = {"input_ids": ids, "attention_mask": torch.ones_like(ids)} if transformer else ids
        labels = torch.randint(-1, 3, (LOCAL,), generator=generator)
        text_labels = torch.randint(-1, 3, (texts,), generator=generator)
        loss_fn = UniCLLoss(backend="dense", gather_distributed=True)
        for _ in range(2):  # a second step: DDP's buffer broadcast at its first forward pairs up on both ranks
            loss = cached_backward(
                cached, images, text_input, labels, loss_fn=loss_fn, micro_batch=2, text_labels=text_labels
            )
        assert bool(torch.isfinite(loss))
        # All-reduced: both ranks hold the same gradients.
        for parameter in cached.module.parameters():
            assert parameter.grad is not None
            other = parameter.grad.clone()
            dist.broadcast(other, 0)
            assert _relative_error(parameter.grad, other) <= 1e-6
        if transformer:
            # Without BatchNorm, micro-batching changes nothing: two plain DDP steps leave the same gradients.
            plain = nn.parallel.DistributedDataParallel(copy.deepcopy(base))
            for _ in range(2):
                outputs = plain(images, **text_input)
                loss_fn(**outputs, labels=labels, text_labels=text_labels).backward()
            _assert_same_grads(cached.module, plain.module)
    except Exception:
        failure = f"rank {rank}:\n{traceback.format_exc()}"
    finish_rank(rank, result_dir, failure)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["transformer", "batch-norm"])
def test_ddp_ranks_may_run_different_numbers_of_micro_batches(tmp_path, kind):
    """DDP all-reduces the gradients in each rank's last backward and broadcasts buffers at a step's first forward,
    so ranks whose text counts differ may split their batches into different numbers of micro-batches."""
    world = 2
    mp.spawn(
        _unequal_texts_worker, args=(world, str(tmp_path / "rendezvous"), str(tmp_path), kind), nprocs=world,
        join=True,
    )  # fmt: skip
    failures = [(tmp_path / f"rank{rank}.txt").read_text() for rank in range(world)]
    assert not any(failures), "\n".join(failures)
