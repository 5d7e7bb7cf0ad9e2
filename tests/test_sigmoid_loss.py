"""The sigmoid objective (SigLIP with labels) against an independent float64 reference, open_clip's SigLipLoss,
invariances and bad inputs."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import assert_relative_close, reference_sigmoid_loss, reference_sigmoid_terms

from unicl import UniCLSigmoidLoss, unicl_sigmoid_loss
from unicl.loss.backends import row_terms as block_row_terms

CPU_BACKENDS = ["dense", "chunked"]
#: Relative bounds against float64 from the same rounded inputs, for the value and every gradient.
BOUNDS = {torch.float64: 1e-7, torch.float32: 2e-4}


def make_batch(n: int, d: int, dtype: torch.dtype = torch.float64, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(n, d, generator=generator, dtype=torch.float64).to(dtype)
    text = torch.randn(n, d, generator=generator, dtype=torch.float64).to(dtype)
    return image, text


def label_case(kind: str, n: int, seed: int = 0) -> list[int] | None:
    """Labels of each kind the issue names: none, all pairs, one class, and a mix of classes and pairs."""
    if kind == "none":
        return None
    if kind == "pairs":
        return [-1] * n
    if kind == "one class":
        return [4] * n
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(-2, 4, (n,), generator=generator).tolist()


def loss_and_grads(function, image, text, scale, bias, upstream=None):
    """``(value, d image, d text, d scale, d bias)`` of ``function(image, text, scale, bias)``."""
    leaves = [image.detach().clone().requires_grad_(), text.detach().clone().requires_grad_()]
    leaves += [torch.tensor(scale, dtype=torch.float64).requires_grad_()]
    leaves += [torch.tensor(bias, dtype=torch.float64).requires_grad_()]
    value = function(*leaves)
    weighted = value.sum() if upstream is None else (value * upstream).sum()
    return (value, *torch.autograd.grad(weighted, leaves))


def check_against_reference(backend, dtype, labels, n, d=24, scale=10.0, bias=-10.0, reduction="mean", seed=0):
    image, text = make_batch(n, d, dtype, seed)
    keys = None if labels is None else torch.tensor(labels)
    upstream = torch.rand(n, dtype=torch.float64) + 0.5 if reduction == "none" else None
    got = loss_and_grads(
        lambda u, v, s, b: unicl_sigmoid_loss(
            u, v, keys, s, b, backend=backend, reduction=reduction, chunk_size=7
        ).double(),
        image, text, scale, bias, upstream,
    )  # fmt: skip
    exact = loss_and_grads(
        lambda u, v, s, b: reference_sigmoid_loss(u, v, labels, s, b, reduction),
        image.double(), text.double(), scale, bias, upstream,
    )  # fmt: skip
    for name, value, want in zip(("loss", "d image", "d text", "d scale", "d bias"), got, exact, strict=True):
        assert_relative_close(value, want, BOUNDS[dtype], name)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("kind", ["none", "pairs", "one class", "mixed"])
@pytest.mark.parametrize("n", [1, 2, 9, 64])
def test_matches_float64_reference(backend, dtype, kind, n):
    check_against_reference(backend, dtype, label_case(kind, n, seed=n), n)


@pytest.mark.slow
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("kind", ["none", "pairs", "one class", "mixed"])
def test_matches_float64_reference_at_300(backend, dtype, kind):
    check_against_reference(backend, dtype, label_case(kind, 300, seed=3), 300, d=64)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@given(
    labels=st.integers(1, 12).flatmap(lambda n: st.lists(st.integers(-2, 3), min_size=n, max_size=n)),
    # d >= 2: a one-dimensional feature normalises to ±1, whose gradient is zero up to rounding on both sides.
    d=st.integers(2, 9),
    scale=st.floats(0.5, 60.0),
    bias=st.floats(-20.0, 5.0),
    seed=st.integers(0, 2**16),
)
@settings(deadline=None)
def test_any_labels_scale_and_bias_match_the_reference(backend, reduction, labels, d, scale, bias, seed):
    check_against_reference(backend, torch.float64, labels, len(labels), d, scale, bias, reduction, seed)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("n", [1, 6, 33])
def test_no_labels_is_open_clips_siglip_loss(backend, n):
    """With unique pairs the loss and every gradient equal open_clip's ``SigLipLoss`` on the normalised features."""
    from open_clip.loss import SigLipLoss

    image, text = make_batch(n, 16, seed=n)

    def open_clip_loss(u, v, s, b):
        return SigLipLoss()(F.normalize(u, dim=1), F.normalize(v, dim=1), s, b)

    def ours(u, v, s, b):
        return unicl_sigmoid_loss(u, v, None, s, b, backend=backend, chunk_size=4)

    expected = loss_and_grads(open_clip_loss, image, text, 7.5, -4.0)
    for name, value, want in zip(("loss", "d image", "d text", "d scale", "d bias"), loss_and_grads(
        ours, image, text, 7.5, -4.0), expected, strict=True):  # fmt: skip
        assert_relative_close(value, want, 1e-12, name)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradcheck_float64(backend):
    image, text = make_batch(7, 5)
    labels = torch.tensor([0, 1, 0, -1, 2, 1, -1])
    leaves = [image.requires_grad_(), text.requires_grad_()]
    leaves += [torch.tensor(3.0, dtype=torch.float64, requires_grad=True)]
    leaves += [torch.tensor(-2.0, dtype=torch.float64, requires_grad=True)]

    def fn(u, v, s, b):
        return unicl_sigmoid_loss(u, v, labels, s, b, backend=backend, reduction="none", chunk_size=2)

    assert torch.autograd.gradcheck(fn, tuple(leaves))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@given(seed=st.integers(0, 2**16), data=st.data())
@settings(deadline=None)
def test_permuting_the_batch_permutes_the_terms(backend, seed, data):
    n = data.draw(st.integers(1, 10))
    labels = torch.tensor(data.draw(st.lists(st.integers(-2, 3), min_size=n, max_size=n)))
    order = torch.tensor(data.draw(st.permutations(range(n))))
    image, text = make_batch(n, 5, seed=seed)
    terms = unicl_sigmoid_loss(image, text, labels, 6.0, -3.0, backend=backend, reduction="none")
    permuted = unicl_sigmoid_loss(
        image[order], text[order], labels[order], 6.0, -3.0, backend=backend, reduction="none"
    )
    torch.testing.assert_close(permuted, terms[order], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_reductions_agree(backend):
    image, text = make_batch(11, 8)
    labels = torch.tensor([0, 0, 1, -1, -1, 2, 2, 2, 1, -1, 3])
    terms = unicl_sigmoid_loss(image, text, labels, backend=backend, reduction="none")
    assert terms.shape == (11,) and bool((terms > 0).all())
    total = unicl_sigmoid_loss(image, text, labels, backend=backend, reduction="sum")
    mean = unicl_sigmoid_loss(image, text, labels, backend=backend, reduction="mean")
    torch.testing.assert_close(total, terms.sum(), rtol=1e-14, atol=0)
    torch.testing.assert_close(mean, terms.sum() / 11, rtol=1e-14, atol=0)


def test_a_class_shared_by_every_sample_has_no_negatives():
    """With one class every pair is positive: ``ℓ_i = Σ_j softplus(−Z_ij)``, which a large positive bias drives to 0."""
    image, text = make_batch(5, 4)
    loss = unicl_sigmoid_loss(image, text, torch.full((5,), 2), 10.0, 40.0)
    assert 0 < float(loss) < 5 * 5e-9


def test_defaults_are_siglips_initialisation():
    image, text = make_batch(6, 4)
    default = unicl_sigmoid_loss(image, text)
    torch.testing.assert_close(default, reference_sigmoid_loss(image, text, None, 10.0, -10.0), rtol=1e-12, atol=0)


def test_rows_only_blocks_are_the_per_image_terms():
    """`row_terms` of a rectangular block (distributed local mode's shape) with the sigmoid objective."""
    from unicl.loss.backends import block_terms
    from unicl.loss.objectives import SIGMOID

    image, text = make_batch(9, 6)
    keys = torch.arange(9)
    scale, bias = torch.tensor(5.0, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64)
    for backend in CPU_BACKENDS:
        rows, cols = block_terms(image[:4], text, scale, keys[:4], keys, True, backend, 3, False, SIGMOID, bias)
        assert cols.numel() == 0
        expected = reference_sigmoid_terms(image, text, None, 5.0, -2.0)[:4]
        torch.testing.assert_close(rows, expected, rtol=1e-12, atol=0)
    assert block_row_terms(image, text, scale, keys, keys, normalize=True).shape == (9,)


def test_module_matches_function_and_accepts_model_outputs():
    image, text = make_batch(8, 6)
    labels = torch.tensor([0, 0, 1, -1, -1, 2, 2, 1])
    out = {"image_features": image, "text_features": text, "logit_scale": torch.tensor(9.0),
           "logit_bias": torch.tensor(-7.0)}  # fmt: skip
    loss_fn = UniCLSigmoidLoss(backend="chunked", chunk_size=3)
    torch.testing.assert_close(loss_fn(**out, labels=labels), unicl_sigmoid_loss(image, text, labels, 9.0, -7.0))
    assert "backend='chunked'" in repr(loss_fn)
    assert "UniCLSigmoidLoss" in repr(loss_fn)


def test_second_derivatives_dense_and_a_clear_refusal_elsewhere():
    image, text = make_batch(5, 4)
    image.requires_grad_()
    loss = unicl_sigmoid_loss(image, text, None, 4.0, -1.0, backend="dense")
    (grad,) = torch.autograd.grad(loss, image, create_graph=True)
    assert grad.pow(2).sum().requires_grad
    loss = unicl_sigmoid_loss(image, text, None, 4.0, -1.0, backend="chunked")
    (grad,) = torch.autograd.grad(loss, image, create_graph=True)
    with pytest.raises(NotImplementedError, match='backend="dense"'):
        grad.pow(2).sum().backward()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_float32_features_give_the_same_loss_inside_bfloat16_autocast(backend):
    image, text = make_batch(12, 8, torch.float32)
    plain = unicl_sigmoid_loss(image, text, None, backend=backend)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = unicl_sigmoid_loss(image, text, None, backend=backend)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, plain, rtol=0, atol=0)


@pytest.mark.slow
def test_compiled_chunked_loss_matches_eager():
    """The chunked walk's ``out=`` products break the graph (as for the softmax objective); the loss compiles."""
    image, text = make_batch(10, 6, torch.float32)
    labels = torch.tensor([0, 0, 1, -1, -1, 2, 2, 1, 3, 3])

    def step(u, v, s, b):
        return unicl_sigmoid_loss(u, v, labels, s, b, backend="chunked", chunk_size=4)

    compiled = torch.compile(step, backend="aot_eager")
    eager = loss_and_grads(lambda *a: step(*[x.float() if x.ndim == 0 else x for x in a]), image, text, 8.0, -5.0)
    traced = loss_and_grads(lambda *a: compiled(*[x.float() if x.ndim == 0 else x for x in a]), image, text, 8.0, -5.0)
    for got, want in zip(traced, eager, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"logit_bias": float("nan")}, ValueError, "logit_bias must be finite"),
        ({"logit_bias": float("-inf")}, ValueError, "logit_bias must be finite"),
        ({"logit_bias": torch.tensor(float("inf"))}, ValueError, "logit_bias must be finite"),
        ({"logit_bias": torch.tensor([1.0, 2.0])}, ValueError, "logit_bias must be a scalar"),
        ({"logit_bias": torch.tensor(1)}, TypeError, "logit_bias must be a floating-point tensor"),
        ({"logit_bias": "-10"}, TypeError, "logit_bias must be a float"),
        ({"logit_scale": 0.0}, ValueError, "logit_scale must be finite and > 0"),
        ({"labels": torch.zeros(3)}, TypeError, "labels"),
        ({"reduction": "max"}, ValueError, "reduction must be one of"),
        ({"backend": "fast"}, ValueError, "backend must be one of"),
        ({"chunk_size": 0}, ValueError, "chunk_size"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(kwargs, error, words):
    image, text = make_batch(4, 3)
    arguments = {"labels": None, **kwargs}
    with pytest.raises(error, match=words) as caught:
        unicl_sigmoid_loss(image, text, **arguments)
    assert "\n" not in str(caught.value)


def test_mismatched_features_are_refused():
    image, _ = make_batch(4, 3)
    with pytest.raises(ValueError, match="text_features"):
        unicl_sigmoid_loss(image, torch.randn(5, 3, dtype=torch.float64))


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_a_second_backward_with_retained_graph_gives_the_same_gradients(reduction):
    """A mean or summed chunked loss computes its backward products in forward and spends them in the first
    backward; a second backward (``retain_graph=True``) walks the logits again and gets the same gradients."""
    image, text = make_batch(13, 6)
    image.requires_grad_()
    bias = torch.tensor(-4.0, dtype=torch.float64, requires_grad=True)
    loss = unicl_sigmoid_loss(image, text, torch.arange(13) % 4 - 1, 8.0, bias, backend="chunked", chunk_size=5,
                              reduction=reduction)  # fmt: skip
    first = torch.autograd.grad(loss, [image, bias], retain_graph=True)
    second = torch.autograd.grad(loss, [image, bias])
    for got, want in zip(second, first, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-15)
