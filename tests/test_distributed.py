"""Distributed UniCL on gloo: 2 and 3 CPU processes against a float64 single-process computation."""

from __future__ import annotations

import functools
import traceback
import warnings
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from gloo_ranks import finish_rank, start_rank
from reference import assert_relative_close, reference_loss, reference_rectangular_loss, reference_sigmoid_loss

from unicl import UniCLLoss, UniCLSigmoidLoss, caption_labels, distributed_unicl_loss, unicl_loss
from unicl.loss.kernels.availability import interpreter_active

D = 6
SCALE = 7.0


def _batch(sizes: list[int], labelled: bool, seed: int = 0):
    """The global batch (float64) and its labels: classes shared across ranks, and pairs."""
    generator = torch.Generator().manual_seed(seed)
    total = sum(sizes)
    image = torch.randn(total, D, generator=generator, dtype=torch.float64)
    text = torch.randn(total, D, generator=generator, dtype=torch.float64)
    labels = torch.randint(-1, 3, (total,), generator=generator) if labelled else None
    return image, text, labels


def _check_contract(rank, world, sizes, labelled, local, backend, reduction="mean", equal_batches=False) -> None:
    image, text, labels = _batch(sizes, labelled, seed=len(sizes) * 10 + sum(sizes))
    start = sum(sizes[:rank])
    rows = slice(start, start + sizes[rank])
    # float64 for dense/chunked; the Triton kernels take float32.
    dtype = torch.float32 if backend == "triton" else torch.float64
    my_image = image[rows].to(dtype).requires_grad_()
    my_text = text[rows].to(dtype).requires_grad_()
    my_labels = None if labels is None else labels[rows]
    loss = distributed_unicl_loss(
        my_image,
        my_text,
        my_labels,
        SCALE,
        local_loss=local,
        backend=backend,
        reduction=reduction,
        equal_batches=equal_batches,
    )
    grads = torch.autograd.grad(loss, [my_image, my_text])
    mean_over_ranks = loss.detach().double().clone()
    dist.all_reduce(mean_over_ranks)
    mean_over_ranks /= world
    # The reference: one process, the concatenated batch, float64.
    ref_image, ref_text = image.clone().requires_grad_(), text.clone().requires_grad_()
    keys = None if labels is None else labels.tolist()
    expected = reference_loss(ref_image, ref_text, keys, SCALE, reduction)
    expected_grads = torch.autograd.grad(expected, [ref_image, ref_text])
    tolerance = {"rtol": 1e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-9, "atol": 1e-10}
    torch.testing.assert_close(mean_over_ranks, expected, **tolerance)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got.double(), world * want[rows], **tolerance)


def _check_sigmoid_contract(
    rank, world, sizes, labelled, local, backend, reduction="mean", equal_batches=False
) -> None:
    """The sigmoid objective under the same convention: the mean over ranks of the returned loss and of the scale's
    and bias's gradients is the global batch's, each rank's feature gradient ``W ×`` the global one of its rows."""
    image, text, labels = _batch(sizes, labelled, seed=len(sizes) * 10 + sum(sizes) + 1)
    start = sum(sizes[:rank])
    rows = slice(start, start + sizes[rank])
    dtype = torch.float32 if backend in ("triton", "triton_rowwise") else torch.float64
    leaves = [image[rows].to(dtype).requires_grad_(), text[rows].to(dtype).requires_grad_()]
    leaves += [torch.tensor(SCALE, dtype=torch.float64, requires_grad=True)]
    leaves += [torch.tensor(-3.0, dtype=torch.float64, requires_grad=True)]
    loss_fn = UniCLSigmoidLoss(
        backend=backend, reduction=reduction, gather_distributed=True, local_loss=local, equal_batches=equal_batches
    )
    loss = loss_fn(leaves[0], leaves[1], None if labels is None else labels[rows], leaves[2], leaves[3])
    grads = torch.autograd.grad(loss.sum(), leaves)
    shared = torch.stack([loss.detach().double().sum(), grads[2].double(), grads[3].double()])
    dist.all_reduce(shared)
    shared /= world
    exact = [image.clone().requires_grad_(), text.clone().requires_grad_()]
    exact += [torch.tensor(SCALE, dtype=torch.float64, requires_grad=True)]
    exact += [torch.tensor(-3.0, dtype=torch.float64, requires_grad=True)]
    keys = None if labels is None else labels.tolist()
    expected = reference_sigmoid_loss(exact[0], exact[1], keys, exact[2], exact[3], reduction)
    if reduction == "none":
        torch.testing.assert_close(loss.detach().double(), expected.detach()[rows], rtol=1e-9, atol=1e-10)
        return
    expected_grads = torch.autograd.grad(expected, exact)
    tolerance = {"rtol": 2e-4, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-9, "atol": 1e-10}
    torch.testing.assert_close(shared, torch.stack([expected, *expected_grads[2:]]).detach(), **tolerance)
    for got, want in zip(grads[:2], expected_grads[:2]):
        torch.testing.assert_close(got.double(), world * want[rows], **tolerance)


def _check_bad_bias_on_one_rank_is_an_error_everywhere(rank: int) -> None:
    features = torch.randn(3, D)
    loss_fn = UniCLSigmoidLoss(gather_distributed=True)
    if rank == 1:
        with pytest.raises(ValueError, match="logit_bias must be finite"):
            loss_fn(features, features, logit_bias=float("nan"))
    else:
        with pytest.raises(ValueError, match=r"rank\(s\) \[1\] refused their inputs"):
            loss_fn(features, features)


def _count_one_step(world: int, equal_batches: bool, local: bool) -> dict[str, int]:
    """Collectives and size exchanges (each one a host synchronisation: ``.cpu().tolist()`` of the sizes) of one
    forward and backward of the distributed loss."""
    from unicl.loss import distributed

    counts = {"all_gather": 0, "all_gather_single": 0, "reduce_scatter_single": 0, "all_reduce": 0, "exchange": 0}
    originals = {
        "all_gather": distributed.dist.all_gather,
        "_ALL_REDUCE": distributed._ALL_REDUCE,
        "_ALL_GATHER_SINGLE": distributed._ALL_GATHER_SINGLE,
        "_REDUCE_SCATTER_SINGLE": distributed._REDUCE_SCATTER_SINGLE,
        "_exchange_shapes": distributed._exchange_shapes,
    }

    def counting(name, function):
        def wrapped(*args, **kwargs):
            counts[name] += 1
            return function(*args, **kwargs)

        return wrapped

    image, text, labels = _batch([4] * world, labelled=True, seed=5)
    rank = dist.get_rank()
    rows = slice(4 * rank, 4 * rank + 4)
    my_image, my_text = image[rows].clone().requires_grad_(), text[rows].clone().requires_grad_()
    distributed.dist.all_gather = counting("all_gather", originals["all_gather"])
    distributed._ALL_REDUCE = counting("all_reduce", originals["_ALL_REDUCE"])
    distributed._ALL_GATHER_SINGLE = counting("all_gather_single", originals["_ALL_GATHER_SINGLE"])
    distributed._REDUCE_SCATTER_SINGLE = counting("reduce_scatter_single", originals["_REDUCE_SCATTER_SINGLE"])
    distributed._exchange_shapes = counting("exchange", originals["_exchange_shapes"])
    try:
        loss = distributed_unicl_loss(
            my_image, my_text, labels[rows], SCALE, local_loss=local, backend="chunked", equal_batches=equal_batches
        )
        loss.backward()
    finally:
        distributed.dist.all_gather, distributed._ALL_REDUCE = originals["all_gather"], originals["_ALL_REDUCE"]
        distributed._ALL_GATHER_SINGLE = originals["_ALL_GATHER_SINGLE"]
        distributed._REDUCE_SCATTER_SINGLE = originals["_REDUCE_SCATTER_SINGLE"]
        distributed._exchange_shapes = originals["_exchange_shapes"]
    return counts


def _check_collectives_of_one_step(world: int) -> None:
    """Equal batches: one all-gather of the features (and one of the labels) forward, one reduction backward, no
    size exchange. Uneven-capable mode: the same plus one all-gather of the sizes and its host synchronisation."""
    for local in (False, True):
        equal = _count_one_step(world, equal_batches=True, local=local)
        # gloo has no reduce-scatter of one tensor: the backward sums with one all-reduce.
        assert equal == {"all_gather": 0, "all_gather_single": 2, "reduce_scatter_single": 0, "all_reduce": 1,
                         "exchange": 0}, equal  # fmt: skip
        uneven = _count_one_step(world, equal_batches=False, local=local)
        assert uneven == {**equal, "all_gather": 1, "exchange": 1}, uneven


def _check_compiled_matches_eager(rank: int, world: int) -> None:
    """torch.compile of the distributed loss (our gather with gradient, uneven sizes) gives the eager results, with
    the traced graphs run as they are (aot_eager) and compiled (inductor). torch 2.11 lost the in-place all-reduce
    of a compiled backward: every gradient came back zero."""
    sizes = [5, 1, 3][:world]
    image, text, labels = _batch(sizes, labelled=True, seed=9)
    start = sum(sizes[:rank])
    rows = slice(start, start + sizes[rank])

    def step(u, v):
        return distributed_unicl_loss(u, v, labels[rows], SCALE, local_loss=True, backend="chunked")

    def loss_and_grads(function):
        u, v = image[rows].clone().requires_grad_(), text[rows].clone().requires_grad_()
        loss = function(u, v)
        return (loss.detach(), *torch.autograd.grad(loss, [u, v]))

    expected = loss_and_grads(step)
    assert expected[1].abs().sum() > 0
    for compiler in ("aot_eager", "inductor"):
        torch._dynamo.reset()
        got = loss_and_grads(torch.compile(step, backend=compiler))
        for got_part, want in zip(got, expected):
            torch.testing.assert_close(got_part, want, rtol=1e-12, atol=1e-12, msg=lambda m, c=compiler: f"{c}: {m}")


def _check_errors(rank: int) -> None:
    wrong_dim = torch.randn(3, D + rank)
    with pytest.raises(ValueError, match="same feature dimension D"):
        distributed_unicl_loss(wrong_dim, wrong_dim)
    wrong_dtype = torch.randn(3, D, dtype=torch.float64 if rank == 0 else torch.float32)
    with pytest.raises(ValueError, match="same feature dtype"):
        distributed_unicl_loss(wrong_dtype, wrong_dtype)
    features = torch.randn(3, D)
    labels = torch.zeros(3, dtype=torch.long) if rank == 0 else None
    with pytest.raises(ValueError, match="same labels given"):
        distributed_unicl_loss(features, features, labels)


def _check_bad_input_on_one_rank_is_an_error_everywhere(rank: int) -> None:
    """A rank whose own inputs fail their checks raises its error; the others raise a ValueError naming it, at
    once, instead of waiting in a collective (and none computes a loss)."""
    features = torch.randn(3, D)
    labels = torch.zeros(2 if rank == 1 else 3, dtype=torch.long)  # rank 1: wrong length
    if rank == 1:
        with pytest.raises(ValueError, match=r"labels must have shape \[3\]"):
            distributed_unicl_loss(features, features, labels)
    else:
        with pytest.raises(ValueError, match=r"rank\(s\) \[1\] refused their inputs"):
            distributed_unicl_loss(features, features, labels)
    # Every rank empty: the same error everywhere.
    empty = torch.randn(0, D)
    with pytest.raises(ValueError, match="every rank's batch is empty"):
        distributed_unicl_loss(empty, empty)


def _check_caption_labels_agree() -> None:
    mine = caption_labels(["a photo of a dog", "two cats", "a photo of  a dog"], first_label=10)
    everyone = [torch.empty_like(mine) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, mine)
    assert all(torch.equal(other, mine) for other in everyone)
    assert mine[0] == mine[2] and mine[0] != mine[1]


class _Towers(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.image = torch.nn.Linear(5, 4, dtype=torch.float64)
        self.text = torch.nn.Linear(3, 4, dtype=torch.float64)
        self.logit_scale = torch.nn.Parameter(torch.tensor(2.0, dtype=torch.float64))

    def forward(self, images, texts):
        return {
            "image_features": self.image(images),
            "text_features": self.text(texts),
            "logit_scale": self.logit_scale.exp(),
        }


def _train(model, loss_fn, batches) -> list[torch.Tensor]:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    for images, texts, labels in batches:
        optimizer.zero_grad()
        loss_fn(**model(images, texts), labels=labels).backward()
        optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


def _data(steps: int, sizes: list[int]):
    generator = torch.Generator().manual_seed(42)
    total = sum(sizes)
    return [
        (
            torch.randn(total, 5, generator=generator, dtype=torch.float64),
            torch.randn(total, 3, generator=generator, dtype=torch.float64),
            torch.randint(-1, 2, (total,), generator=generator),
        )
        for _ in range(steps)
    ]


def _check_ddp_matches_single_process(rank: int, local: bool) -> None:
    sizes = [4, 4]
    data = _data(3, sizes)
    rows = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
    ddp = torch.nn.parallel.DistributedDataParallel(_Towers())
    distributed_fn = UniCLLoss(backend="chunked", gather_distributed=True, local_loss=local)
    got = _train(ddp, distributed_fn, [(i[rows], t[rows], y[rows]) for i, t, y in data])
    expected = _train(_Towers(), UniCLLoss(backend="dense"), data)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def _worker(rank: int, world: int, init_file: str, result_dir: str) -> None:
    start_rank(rank, world, init_file)
    failures = []
    even, uneven = [4] * world, [5, 1, 3][:world]
    cases = [
        (sizes, labelled, local, backend)
        for sizes in (even, uneven)
        for labelled in (True, False)
        for local in (False, True)
        for backend in ("dense", "chunked")
    ]
    # An empty rank (the last, uneven batch of an epoch), in the middle and first.
    for sizes in ([4, 0, 3], [0, 5, 2]) if world == 3 else ([0, 5],):
        cases += [(sizes, True, local, "chunked") for local in (False, True)]
        cases += [(sizes, False, True, "dense")]
    if interpreter_active():  # inherited from tests/conftest.py, set before anything imported triton
        cases += [(uneven, True, False, "triton"), (uneven, True, True, "triton")]
        cases += [([0, 5, 2] if world == 3 else [0, 5], True, True, "triton")]
    checks = [(f"contract {case}", lambda case=case: _check_contract(rank, world, *case)) for case in cases]
    sigmoid_cases = [
        (sizes, labelled, local, "chunked", reduction, equal)
        for sizes, labelled, reduction, equal in (
            (uneven, True, "mean", False), (uneven, False, "sum", False), (even, True, "mean", True),
            (uneven, True, "none", False), ([4, 0, 3] if world == 3 else [0, 5], True, "mean", False),
        )
        for local in (False, True)
    ] + [(uneven, True, local, "dense", "mean", False) for local in (False, True)]  # fmt: skip
    checks += [
        (f"sigmoid {case}", lambda case=case: _check_sigmoid_contract(rank, world, *case)) for case in sigmoid_cases
    ]
    checks.append(("sigmoid bad bias on one rank", lambda: _check_bad_bias_on_one_rank_is_an_error_everywhere(rank)))
    checks.append(("sum reduction, local", lambda: _check_contract(rank, world, uneven, True, True, "chunked", "sum")))
    checks.append(("bad input", lambda: _check_errors(rank)))
    checks.append(("collectives of one step", lambda: _check_collectives_of_one_step(world)))
    checks.append(("torch.compile", lambda: _check_compiled_matches_eager(rank, world)))
    for local in (False, True):
        equal_case = functools.partial(_check_contract, rank, world, even, True, local, "chunked", equal_batches=True)
        checks.append((f"equal batches, local={local}", equal_case))
    checks.append(("bad input on one rank", lambda: _check_bad_input_on_one_rank_is_an_error_everywhere(rank)))
    checks.append(("caption labels", _check_caption_labels_agree))
    if world == 2:
        checks += [(f"ddp local={local}", lambda local=local: _check_ddp_matches_single_process(rank, local))
                   for local in (False, True)]  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name, check in checks:
            try:
                check()
            except Exception:
                failures.append(f"rank {rank}, {name}:\n{traceback.format_exc()}")
    # torch.distributed.nn.functional.all_gather printed a FutureWarning on every rank; the loss's own gather must not.
    deprecated = [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    if deprecated:
        failures.append(f"rank {rank}: FutureWarning {deprecated}")
    finish_rank(rank, result_dir, "\n".join(failures))


def _spawn_and_collect_failures(worker, world: int, tmp_path: Path) -> None:
    """Run ``worker`` on ``world`` gloo ranks and fail with every rank's report of failed checks."""
    mp.spawn(worker, args=(world, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=world, join=True)
    failures = [(tmp_path / f"rank{rank}.txt").read_text() for rank in range(world)]
    assert not any(failures), "\n".join(failures)


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_distributed_contract(world, tmp_path):
    _spawn_and_collect_failures(_worker, world, tmp_path)


def test_without_a_process_group_it_is_the_single_process_loss():
    image, text, labels = _batch([6], labelled=True)
    expected = unicl_loss(image, text, labels, SCALE)
    torch.testing.assert_close(distributed_unicl_loss(image, text, labels, SCALE, local_loss=True), expected)
    module = UniCLLoss(gather_distributed=True, local_loss=True)
    torch.testing.assert_close(module(image, text, labels, SCALE), expected)


def test_local_loss_needs_gather_distributed():
    with pytest.raises(ValueError, match="local_loss=True needs gather_distributed=True"):
        UniCLLoss(local_loss=True)


def test_caption_labels_are_stable_and_in_range():
    labels = caption_labels(["Dog", "dog ", "cat"], first_label=100, num_labels=1000)
    assert labels[0] == labels[1] != labels[2]
    assert bool(((labels >= 100) & (labels < 1100)).all())
    # A pinned value: the label must not change between processes, runs or releases (checkpoints depend on it).
    assert caption_labels(["A photo of a  dog"], first_label=0, num_labels=10**6).item() == 439413


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"first_label": -1}, ValueError, "first_label must be an int >= 0"),
        ({"num_labels": 0}, ValueError, "num_labels must be an int >= 1"),
        ({"first_label": 2**62, "num_labels": 2**62 + 1}, ValueError, "first_label + num_labels must be <= 2**63"),
        ({"captions": ["ok", 3]}, TypeError, "captions[1] must be a str"),
    ],
)
def test_caption_labels_refuse_bad_input(kwargs, error, words):
    import re

    arguments = {"captions": ["a"], "first_label": 0}
    arguments.update(kwargs)
    with pytest.raises(error, match=re.escape(words)):
        caption_labels(**arguments)


def test_the_exchange_uses_the_features_gpu_not_the_current_one(monkeypatch):
    """A script that moves its tensors to ``cuda:{local_rank}`` without ``torch.cuda.set_device`` leaves the current
    device at ``cuda:0`` on every rank; NCCL collectives must run on the features' own device."""
    from types import SimpleNamespace

    from unicl.loss import distributed

    monkeypatch.setattr(distributed.dist, "get_backend", lambda group=None: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    features = SimpleNamespace(device=torch.device("cuda", 3))
    assert distributed._exchange_device(None, features) == torch.device("cuda", 3)
    assert distributed._exchange_device(None, None) == torch.device("cuda", 0)
    monkeypatch.setattr(distributed.dist, "get_backend", lambda group=None: "gloo")
    assert distributed._exchange_device(None, features) == torch.device("cpu")


def test_equal_batches_needs_gather_distributed():
    with pytest.raises(ValueError, match="equal_batches=True needs gather_distributed=True"):
        UniCLLoss(equal_batches=True)


def _rectangular_batch(sizes: list[int], text_sizes: list[int], seed: int):
    """A global batch of ``N`` images and ``M`` texts (float64) with image labels and text labels that leave some
    images and texts without a positive (negative labels, classes only one side has)."""
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(sum(sizes), D, generator=generator, dtype=torch.float64)
    text = torch.randn(sum(text_sizes), D, generator=generator, dtype=torch.float64)
    labels = torch.randint(-1, 4, (sum(sizes),), generator=generator)
    text_labels = torch.randint(-1, 5, (sum(text_sizes),), generator=generator)
    return image, text, labels, text_labels


def _check_text_labels_contract(
    rank, world, sizes, text_sizes, objective, local, backend, reduction="mean", equal_batches=False
) -> None:
    """Each rank its own images and texts with their labels: the mean over ranks of the returned loss and of the
    scale's (and bias's) gradients is the loss of the concatenated batch, each rank's feature gradients ``W ×``
    the global ones of its images and texts; ``"none"`` gives its images' and texts' terms."""
    image, text, labels, text_labels = _rectangular_batch(sizes, text_sizes, seed=sum(sizes) * 7 + sum(text_sizes))
    rows = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
    text_rows = slice(sum(text_sizes[:rank]), sum(text_sizes[: rank + 1]))
    dtype = torch.float32 if backend.startswith("triton") else torch.float64
    sigmoid = objective == "sigmoid"
    leaves = [image[rows].to(dtype).requires_grad_(), text[text_rows].to(dtype).requires_grad_()]
    leaves += [torch.tensor(SCALE, dtype=torch.float64, requires_grad=True)]
    leaves += [torch.tensor(-3.0, dtype=torch.float64, requires_grad=True)] if sigmoid else []
    options = {"backend": backend, "reduction": reduction, "gather_distributed": True, "local_loss": local,
               "equal_batches": equal_batches}  # fmt: skip
    loss_fn = UniCLSigmoidLoss(**options) if sigmoid else UniCLLoss(**options)
    loss = loss_fn(*leaves[:2], labels[rows], *leaves[2:], text_labels=text_labels[text_rows])
    exact = [image.clone().requires_grad_(), text.clone().requires_grad_()]
    exact += [torch.tensor(SCALE, dtype=torch.float64, requires_grad=True)]
    exact += [torch.tensor(-3.0, dtype=torch.float64, requires_grad=True)] if sigmoid else []
    expected = reference_rectangular_loss(
        exact[0], exact[1], labels.tolist(), text_labels.tolist(), exact[2], exact[3] if sigmoid else None, reduction
    )
    bound = 2e-4 if dtype == torch.float32 else 1e-9
    if reduction == "none":
        mine = expected[rows] if sigmoid else torch.cat([expected[rows], expected[sum(sizes) :][text_rows]])
        assert torch.equal(loss.isnan(), mine.isnan()), (loss, mine)
        assert_relative_close(loss[~mine.isnan()], mine[~mine.isnan()], bound, "terms")
        return
    grads = torch.autograd.grad(loss, leaves)
    shared = torch.stack([loss.detach().double(), *(grad.double() for grad in grads[2:])])
    dist.all_reduce(shared)
    shared /= world
    expected_grads = torch.autograd.grad(expected, exact)
    assert_relative_close(shared, torch.stack([expected, *expected_grads[2:]]).detach(), bound, "loss, d scale, d bias")
    for name, got, want in zip(
        ("d image", "d text"), grads[:2], (expected_grads[0][rows], expected_grads[1][text_rows])
    ):
        assert got.shape == want.shape
        if want.numel():
            assert_relative_close(got.double(), world * want, bound, name)


def _check_text_labels_errors(rank: int) -> None:
    """Ranks that disagree on whether texts have labels, or hold no text at all, are refused on every rank."""
    features, labels = torch.randn(3, D), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match="same text_labels given"):
        distributed_unicl_loss(features, features, labels, text_labels=labels if rank == 0 else None)
    with pytest.raises(ValueError, match="no rank has a text"):
        distributed_unicl_loss(features, torch.randn(0, D), labels, text_labels=labels[:0])


def _text_labels_worker(rank: int, world: int, init_file: str, result_dir: str) -> None:
    start_rank(rank, world, init_file)
    # Uneven images and texts; on 3 ranks one rank has no texts, and another no images.
    shapes = [([3, 2], [5, 1]), ([0, 3], [4, 2])] if world == 2 else [([3, 1, 2], [4, 0, 6]), ([0, 3, 2], [2, 3, 1])]
    cases = [
        (sizes, text_sizes, objective, local, backend, reduction)
        for sizes, text_sizes in shapes
        for objective in ("softmax", "sigmoid")
        for local in (False, True)
        for backend, reduction in (("dense", "mean"), ("chunked", "mean"), ("chunked", "sum"), ("chunked", "none"))
    ]
    checks = [(f"text labels {case}", lambda case=case: _check_text_labels_contract(rank, world, *case))
              for case in cases]  # fmt: skip
    for objective in ("softmax", "sigmoid"):
        for local in (False, True):
            case = ([3] * world, [4] * world, objective, local, "chunked", "mean", True)
            checks.append(
                (f"text labels, equal batches {case}", lambda c=case: _check_text_labels_contract(rank, world, *c))
            )
    if interpreter_active():
        for objective in ("softmax", "sigmoid"):
            case = (*shapes[0], objective, True, "triton", "mean")
            checks.append((f"text labels {case}", lambda c=case: _check_text_labels_contract(rank, world, *c)))
    checks.append(("text labels, bad input", lambda: _check_text_labels_errors(rank)))
    failures = []
    for name, check in checks:
        try:
            check()
        except Exception:
            failures.append(f"rank {rank}, {name}:\n{traceback.format_exc()}")
    finish_rank(rank, result_dir, "\n".join(failures))


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_distributed_text_labels(world, tmp_path):
    _spawn_and_collect_failures(_text_labels_worker, world, tmp_path)
