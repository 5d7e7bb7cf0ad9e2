"""Batches of N images and M texts (``text_labels``): several captions per image, hard negatives, class-prompt banks
and orphans, for both objectives, against an independent float64 reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import assert_relative_close, reference_rectangular_loss

from unicl import UniCLLoss, UniCLSigmoidLoss, unicl_loss, unicl_sigmoid_loss
from unicl.loss.kernels.availability import interpreter_active
from unicl.loss.shapes import caption_groups, class_bank, with_hard_negatives

CPU_BACKENDS = ["dense", "chunked"]
BOUNDS = {torch.float64: 1e-7, torch.float32: 2e-4}


def shape_case(kind: str, n: int, seed: int = 0) -> tuple[list[int], list[int]]:
    """``(labels [N], text_labels [M])`` for each shape the losses take."""
    generator = torch.Generator().manual_seed(seed)
    if kind == "captions":
        labels, text_labels = caption_groups(torch.randint(1, 4, (n,), generator=generator))
    elif kind == "hard negatives":
        labels, text_labels = caption_groups(torch.ones(n, dtype=torch.long))
        text_labels = with_hard_negatives(text_labels, 2 * n)
    elif kind == "class bank":
        labels, text_labels = torch.randint(0, 7, (n,), generator=generator), class_bank(7)
    else:  # orphans: images and texts without a positive, classes shared by several of each
        labels = torch.randint(-1, 5, (n,), generator=generator)
        text_labels = torch.randint(-1, 6, (max(1, n // 2 + 1),), generator=generator)
    return labels.tolist(), text_labels.tolist()


def loss_and_grads(function, image, text, scale, bias=None):
    leaves = [image.detach().clone().requires_grad_(), text.detach().clone().requires_grad_()]
    leaves.append(torch.tensor(scale, dtype=torch.float64, requires_grad=True))
    if bias is not None:
        leaves.append(torch.tensor(bias, dtype=torch.float64, requires_grad=True))
    value = function(*leaves)
    return (value, *torch.autograd.grad(value.sum(), leaves))


def check(objective, backend, dtype, labels, text_labels, reduction="mean", d=12, seed=0, scale=9.0, chunk_size=5):
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(len(labels), d, generator=generator, dtype=torch.float64).to(dtype)
    text = torch.randn(len(text_labels), d, generator=generator, dtype=torch.float64).to(dtype)
    y, z = torch.tensor(labels), torch.tensor(text_labels)
    bias = -4.0 if objective == "sigmoid" else None
    if objective == "sigmoid":

        def ours(u, v, s, b):
            return unicl_sigmoid_loss(u, v, y, s, b, text_labels=z, backend=backend, reduction=reduction,
                                      chunk_size=chunk_size).double()  # fmt: skip
    else:

        def ours(u, v, s):
            return unicl_loss(u, v, y, s, text_labels=z, backend=backend, reduction=reduction,
                              chunk_size=chunk_size).double()  # fmt: skip

    def exact(u, v, s, b=None):
        return reference_rectangular_loss(u, v, labels, text_labels, s, b, reduction)

    got = loss_and_grads(ours, image, text, scale, bias) if reduction != "none" else None
    if reduction == "none":
        value = ours(image, text, torch.tensor(scale), *([torch.tensor(bias)] if bias is not None else []))
        want = exact(image.double(), text.double(), scale, bias)
        assert torch.equal(value.isnan(), want.isnan())
        assert_relative_close(value[~want.isnan()], want[~want.isnan()], BOUNDS[dtype], "terms")
        return
    want = loss_and_grads(exact, image.double(), text.double(), scale, bias)
    names = ("loss", "d image", "d text", "d scale", "d bias")[: len(want)]
    for name, value, expected in zip(names, got, want, strict=True):
        assert_relative_close(value, expected, BOUNDS[dtype], name)


@pytest.mark.parametrize("objective", ["softmax", "sigmoid"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("kind", ["captions", "hard negatives", "class bank", "orphans"])
@pytest.mark.parametrize("n", [1, 2, 13])
def test_matches_float64_reference(objective, backend, dtype, kind, n):
    check(objective, backend, dtype, *shape_case(kind, n, seed=n))


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["softmax", "sigmoid"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("kind", ["captions", "hard negatives", "class bank", "orphans"])
def test_matches_float64_reference_at_300(objective, backend, dtype, kind):
    check(objective, backend, dtype, *shape_case(kind, 300, seed=5), d=32)


@pytest.mark.parametrize("objective", ["softmax", "sigmoid"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@given(
    labels=st.lists(st.integers(-2, 4), min_size=1, max_size=9),
    text_labels=st.lists(st.integers(-2, 4), min_size=1, max_size=11),
    seed=st.integers(0, 2**16),
)
@settings(deadline=None, max_examples=25)
def test_any_labels_match_the_reference(objective, backend, reduction, labels, text_labels, seed):
    check(objective, backend, torch.float64, labels, text_labels, reduction, d=5, seed=seed)


def test_without_a_positive_anywhere_the_softmax_loss_is_zero_and_finite():
    image, text = torch.randn(3, 4, requires_grad=True), torch.randn(5, 4)
    loss = unicl_loss(image, text, torch.tensor([0, 1, -1]), text_labels=torch.tensor([2, 3, -1, -1, 4]))
    loss.backward()
    assert float(loss.detach()) == 0 and bool(torch.isfinite(image.grad).all())


def test_square_labels_as_text_labels_give_the_square_loss_when_every_label_is_a_class():
    image, text = torch.randn(6, 4, dtype=torch.float64), torch.randn(6, 4, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 2, 2, 2])
    for loss in (unicl_loss, unicl_sigmoid_loss):
        square = loss(image, text, labels)
        torch.testing.assert_close(loss(image, text, labels, text_labels=labels), square, rtol=1e-13, atol=0)


def test_modules_take_text_labels():
    image, text = torch.randn(4, 6), torch.randn(7, 6)
    labels, text_labels = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, 3, -1, -1, 1])
    out = {"image_features": image, "text_features": text, "logit_scale": torch.tensor(10.0)}
    torch.testing.assert_close(
        UniCLLoss(backend="chunked")(**out, labels=labels, text_labels=text_labels),
        unicl_loss(image, text, labels, 10.0, text_labels=text_labels),
    )
    torch.testing.assert_close(
        UniCLSigmoidLoss(backend="chunked")(**out, labels=labels, text_labels=text_labels, logit_bias=-3.0),
        unicl_sigmoid_loss(image, text, labels, 10.0, -3.0, text_labels=text_labels),
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"text_features": torch.randn(7, 3)}, ValueError, r"same shape \[N, D\] \(for M != N texts, give text_labels"),
        ({"text_labels": torch.zeros(6, dtype=torch.long)}, ValueError, r"text_labels must have shape \[7\]"),
        ({"text_labels": torch.zeros(7)}, TypeError, "text_labels must have an integer dtype"),
        ({"text_labels": [0] * 7}, TypeError, "text_labels must be None or an integer torch.Tensor"),
        ({"labels": None}, ValueError, "text_labels needs labels"),
        ({"text_features": torch.randn(7, 4)}, ValueError, "must have the same feature dimension D"),
    ],
)
def test_bad_shapes_are_refused_with_one_line(kwargs, error, words):
    arguments = {"labels": torch.tensor([0, 1, 2, 3]), "text_labels": torch.arange(7), **kwargs}
    if "text_features" in kwargs and "labels" not in kwargs and "text_labels" not in kwargs:
        arguments["text_labels"] = None if kwargs["text_features"].shape[1] == 3 else torch.arange(7)
    text = arguments.pop("text_features", torch.randn(7, 3))
    for loss in (unicl_loss, unicl_sigmoid_loss):
        with pytest.raises(error, match=words) as caught:
            loss(torch.randn(4, 3), text, **arguments)
        assert "\n" not in str(caught.value)


def test_shape_helpers_refuse_bad_input():
    with pytest.raises(ValueError, match="captions_per_image must be >= 0"):
        caption_groups(torch.tensor([1, -1]))
    with pytest.raises(TypeError, match=r"captions_per_image must be an integer torch\.Tensor"):
        caption_groups(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="num_negatives"):
        with_hard_negatives(torch.tensor([0]), -1)
    with pytest.raises(ValueError, match="num_classes"):
        class_bank(0)


# --- the Triton kernels under the interpreter (float32) -------------------------------------------------------------

#: ``(N, M)`` launches of the kernels: ragged against their 32-wide interpreter tiles, M ≫ N and N ≫ M (the slow tier
#: holds the sizes that take the interpreter seconds).
TRITON_SHAPES = [
    (3, 41),
    (37, 2),
    pytest.param(5, 130, marks=pytest.mark.slow),
    pytest.param(130, 6, marks=pytest.mark.slow),
    pytest.param(70, 97, marks=pytest.mark.slow),
]


def ragged_case(n: int, m: int, seed: int) -> tuple[list[int], list[int]]:
    """``(labels [N], text_labels [M])`` with classes both sides share, hard negatives and orphan images."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(-1, 4, (n,), generator=generator)
    return labels.tolist(), torch.randint(-1, 5, (m,), generator=generator).tolist()


@pytest.mark.skipif(not interpreter_active(), reason="needs TRITON_INTERPRET=1 set before importing triton")
@pytest.mark.parametrize("objective", ["softmax", "sigmoid"])
@pytest.mark.parametrize("backend", ["triton", "triton_rowwise"])
@pytest.mark.parametrize(("n", "m"), TRITON_SHAPES)
def test_triton_ragged_launches_match_the_float64_reference(objective, backend, n, m):
    check(objective, backend, torch.float32, *ragged_case(n, m, seed=n * 1000 + m), d=40, chunk_size=32)


@pytest.mark.skipif(not interpreter_active(), reason="needs TRITON_INTERPRET=1 set before importing triton")
@pytest.mark.parametrize("objective", ["softmax", "sigmoid"])
@pytest.mark.parametrize("kind", ["captions", "hard negatives", "class bank", "orphans"])
def test_triton_takes_every_shape(objective, kind):
    check(objective, "triton", torch.float32, *shape_case(kind, 13, seed=13))
