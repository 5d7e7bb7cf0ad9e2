"""The UniCL loss against an independent float64 reference, gradcheck, invariances and bad inputs."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from reference import assert_matches_float64, clip_loss, float64_loss_and_grads, reference_loss, reference_terms

from unicl import UniCLLoss, unicl_loss
from unicl.loss.kernels.availability import interpreter_active

CPU_BACKENDS = ["dense", "chunked"]


def make_batch(n: int, d: int, dtype: torch.dtype = torch.float64, seed: int = 0, requires_grad: bool = True):
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(n, d, generator=generator, dtype=torch.float64).to(dtype).requires_grad_(requires_grad)
    text = torch.randn(n, d, generator=generator, dtype=torch.float64).to(dtype).requires_grad_(requires_grad)
    return image, text


label_lists = st.integers(1, 12).flatmap(lambda n: st.lists(st.integers(-2, 3), min_size=n, max_size=n))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@given(labels=label_lists, d=st.integers(1, 9), scale=st.floats(0.5, 60.0), seed=st.integers(0, 2**16))
def test_matches_independent_reference_forward_and_backward(backend, reduction, labels, d, scale, seed):
    image, text = make_batch(len(labels), d, seed=seed)
    logit_scale = torch.tensor(scale, dtype=torch.float64, requires_grad=True)
    upstream = torch.rand(len(labels), dtype=torch.float64) + 0.5 if reduction == "none" else torch.tensor(1.7)
    loss = unicl_loss(
        image, text, torch.tensor(labels), logit_scale, backend=backend, reduction=reduction, chunk_size=3
    )
    grads = torch.autograd.grad((loss * upstream).sum(), [image, text, logit_scale])
    expected = reference_loss(image, text, labels, logit_scale, reduction)
    expected_grads = torch.autograd.grad((expected * upstream).sum(), [image, text, logit_scale])
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("normalize", [True, False])
def test_gradcheck_float64(backend, normalize):
    image, text = make_batch(7, 5)
    scale = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 0, -1, 2, 1, -1])

    def fn(u, v, s):
        return unicl_loss(u, v, labels, s, backend=backend, reduction="none", normalize=normalize, chunk_size=2)

    assert torch.autograd.gradcheck(fn, (image, text, scale))


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 12, 13, 100, None])
@pytest.mark.parametrize(
    "labels",
    [
        [5] * 12,
        [-1] * 12,
        None,
        [0, 0, 1, -1, 2, 2, 2, -3, 1, 0, -1, 7],
    ],
    ids=["all-equal", "all-pairs", "none", "mixed"],
)
def test_chunked_equals_dense(chunk_size, labels):
    image, text = make_batch(12, 6, dtype=torch.float32)
    scale = torch.tensor(20.0, requires_grad=True)
    y = None if labels is None else torch.tensor(labels)
    results = []
    for backend in CPU_BACKENDS:
        loss = unicl_loss(image, text, y, scale, backend=backend, reduction="none", chunk_size=chunk_size)
        results.append((loss, *torch.autograd.grad(loss.sum(), [image, text, scale])))
    for dense_value, chunked_value in zip(*results):
        torch.testing.assert_close(chunked_value, dense_value, rtol=1e-5, atol=1e-5)


def test_single_sample_batch():
    image, text = make_batch(1, 4)
    for backend in CPU_BACKENDS:
        loss = unicl_loss(image, text, torch.tensor([3]), 10.0, backend=backend)
        torch.testing.assert_close(loss, torch.zeros((), dtype=torch.float64))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_low_precision_matches_float64_within_fixed_bounds(backend, dtype):
    """Against float64 from the same rounded inputs: float32 loss 1e-5 and gradients 1e-4, half precision 1e-4
    and 1e-2 (relative Frobenius), whatever the backend."""
    image, text = make_batch(64, 48, dtype=dtype, seed=3)
    labels = torch.randint(-1, 6, (64,), generator=torch.Generator().manual_seed(1))
    scale = torch.tensor(50.0, requires_grad=True)
    loss = unicl_loss(image, text, labels, scale, backend=backend)
    grads = torch.autograd.grad(loss, [image, text, scale])
    assert loss.dtype == torch.float32
    assert_matches_float64((loss, *grads), float64_loss_and_grads(image, text, labels, scale), dtype)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_strided_inputs(backend):
    image, text = make_batch(10, 12, dtype=torch.float32)
    labels = torch.tensor([0, 1, 1, -1, 2, 0, -1, 2, 2, 3])
    strided = unicl_loss(image[:, ::2], text.T.contiguous().T[:, 1::2], labels, backend=backend)
    contiguous = unicl_loss(image[:, ::2].contiguous(), text[:, 1::2].contiguous(), labels, backend=backend)
    torch.testing.assert_close(strided, contiguous)


# --- invariances -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@given(labels=label_lists, seed=st.integers(0, 2**16), data=st.data())
def test_permuting_the_batch_permutes_the_terms(backend, labels, seed, data):
    image, text = make_batch(len(labels), 5, seed=seed, requires_grad=False)
    y = torch.tensor(labels)
    perm = torch.tensor(data.draw(st.permutations(range(len(labels)))))
    terms = unicl_loss(image, text, y, 7.0, backend=backend, reduction="none")
    permuted = unicl_loss(image[perm], text[perm], y[perm], 7.0, backend=backend, reduction="none")
    torch.testing.assert_close(permuted, terms[perm])


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@given(labels=label_lists, seed=st.integers(0, 2**16), offset=st.integers(0, 1000), data=st.data())
def test_injective_relabelling_of_classes_changes_nothing(backend, labels, seed, offset, data):
    image, text = make_batch(len(labels), 5, seed=seed, requires_grad=False)
    classes = sorted({label for label in labels if label >= 0})
    new_ids = data.draw(st.permutations(range(offset, offset + len(classes))))
    relabel = dict(zip(classes, new_ids))
    pair_ids = data.draw(st.lists(st.integers(-50, -1), min_size=len(labels), max_size=len(labels)))
    relabelled = [relabel[label] if label >= 0 else pair for label, pair in zip(labels, pair_ids)]
    loss = unicl_loss(image, text, torch.tensor(labels), 9.0, backend=backend, reduction="none")
    again = unicl_loss(image, text, torch.tensor(relabelled), 9.0, backend=backend, reduction="none")
    torch.testing.assert_close(again, loss)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@given(labels=label_lists, seed=st.integers(0, 2**16))
def test_swapping_images_and_texts_changes_nothing(backend, labels, seed):
    image, text = make_batch(len(labels), 5, seed=seed, requires_grad=False)
    y = torch.tensor(labels)
    forward = unicl_loss(image, text, y, 11.0, backend=backend, reduction="none")
    swapped = unicl_loss(text, image, y, 11.0, backend=backend, reduction="none")
    torch.testing.assert_close(swapped, forward)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@given(n=st.integers(1, 12), scale=st.floats(0.1, 100.0), seed=st.integers(0, 2**16))
def test_no_labels_is_the_clip_loss(backend, n, scale, seed):
    image, text = make_batch(n, 6, seed=seed, requires_grad=False)
    loss = unicl_loss(image, text, None, scale, backend=backend)
    torch.testing.assert_close(loss, clip_loss(image, text, scale))
    pairs = unicl_loss(image, text, torch.full((n,), -1), scale, backend=backend)
    torch.testing.assert_close(pairs, loss)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@given(labels=label_lists, seed=st.integers(0, 2**16), scale=st.floats(0.1, 100.0))
def test_each_term_is_at_least_log_of_its_positive_count(backend, labels, seed, scale):
    image, text = make_batch(len(labels), 4, seed=seed, requires_grad=False)
    y = torch.tensor(labels)
    i2t, t2i = reference_terms(image, text, labels, scale)
    loss = unicl_loss(image, text, y, scale, backend=backend, reduction="none")
    torch.testing.assert_close(loss, (i2t + t2i) / 2)
    counts = ((y[:, None] == y[None, :]) & (y[:, None] >= 0)) | torch.eye(len(labels), dtype=torch.bool)
    # The mean of the positive logits is at most their log-sum-exp minus log(count): Jensen's inequality.
    bound = torch.log(counts.sum(1).double())
    assert bool((i2t >= bound - 1e-9).all() and (t2i >= bound - 1e-9).all())


def test_large_scale_with_small_cosines_stays_finite():
    """A fixed shift by s would underflow here; the running-max log-sum-exp must not."""
    image = torch.zeros(16, 8)
    image[:, 0] = 1.0
    text = torch.zeros(16, 8)
    text[:, 0] = 0.05
    text[:, 1:] = torch.randn(16, 7, generator=torch.Generator().manual_seed(0))
    for backend in CPU_BACKENDS:
        loss = unicl_loss(image, text, None, 100.0, backend=backend)
        assert torch.isfinite(loss)


def test_module_matches_function_and_accepts_model_outputs():
    image, text = make_batch(6, 4, dtype=torch.float32)
    labels = torch.tensor([1, 1, -1, 2, 2, -1])
    outputs = {"image_features": image, "text_features": text, "logit_scale": torch.tensor(12.0)}
    module = UniCLLoss(backend="chunked", reduction="sum", chunk_size=4)
    expected = unicl_loss(image, text, labels, 12.0, backend="dense", reduction="sum")
    torch.testing.assert_close(module(**outputs, labels=labels), expected)
    assert "chunked" in repr(module)


def test_nan_in_features_propagates():
    image, text = make_batch(4, 3, dtype=torch.float32, requires_grad=False)
    image[1, 0] = math.nan
    for backend in CPU_BACKENDS:
        assert torch.isnan(unicl_loss(image, text, backend=backend))


# --- bad input -------------------------------------------------------------------------------------------------

GOOD = make_batch(4, 3, dtype=torch.float32, requires_grad=False)


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"image_features": torch.randn(4)}, ValueError, "image_features must be 2-D"),
        ({"text_features": torch.randn(4, 3, 1)}, ValueError, "text_features must be 2-D"),
        ({"image_features": [[1.0]]}, TypeError, "image_features must be a torch.Tensor"),
        ({"text_features": torch.randn(5, 3)}, ValueError, "same shape"),
        ({"image_features": torch.randn(0, 3), "text_features": torch.randn(0, 3)}, ValueError, "at least one row"),
        ({"image_features": torch.ones(4, 3, dtype=torch.long)}, TypeError, "image_features must be float"),
        ({"text_features": torch.randn(4, 3, dtype=torch.float64)}, TypeError, "same dtype"),
        ({"labels": torch.tensor([0, 1, 2])}, ValueError, "labels must have shape [4]"),
        ({"labels": torch.zeros(4)}, TypeError, "labels must have an integer dtype"),
        ({"labels": torch.zeros(4, dtype=torch.bool)}, TypeError, "labels must have an integer dtype"),
        ({"labels": torch.tensor(14.3)}, TypeError, "a single float looks like the logit scale, which comes after"),
        ({"labels": 14.3}, TypeError, "got float; a single float looks like the logit scale"),
        ({"labels": [0, 1, 2, 3]}, TypeError, "labels must be None or an integer torch.Tensor"),
        ({"labels": torch.zeros(4, dtype=torch.long, device="meta")}, ValueError, "labels must be on"),
        ({"logit_scale": 0.0}, ValueError, "logit_scale must be finite and > 0"),
        ({"logit_scale": -2.0}, ValueError, "logit_scale must be finite and > 0"),
        ({"logit_scale": math.inf}, ValueError, "logit_scale must be finite and > 0"),
        ({"logit_scale": torch.tensor(math.nan)}, ValueError, "logit_scale must be finite and > 0"),
        ({"logit_scale": torch.ones(2)}, ValueError, "logit_scale must be a scalar"),
        ({"logit_scale": "10"}, TypeError, "logit_scale must be a float"),
        ({"logit_scale": torch.tensor(3)}, TypeError, "logit_scale must be a floating-point tensor"),
        ({"backend": "cuda"}, ValueError, "backend must be one of"),
        ({"reduction": "avg"}, ValueError, "reduction must be one of"),
        ({"chunk_size": 0}, ValueError, "chunk_size must be an int >= 1"),
        ({"chunk_size": 2.5}, TypeError, "chunk_size must be an int"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(kwargs, error, words):
    arguments = {"image_features": GOOD[0], "text_features": GOOD[1], "labels": None, "logit_scale": 10.0}
    arguments.update(kwargs)
    with pytest.raises(error, match=_literal(words)):
        unicl_loss(**arguments)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [({"backend": "fast"}, "backend must be one of"), ({"reduction": "max"}, "reduction must be one of")],
)
def test_module_refuses_bad_configuration(kwargs, words):
    with pytest.raises(ValueError, match=_literal(words)):
        UniCLLoss(**kwargs)


def test_triton_backend_without_cuda_names_the_alternative(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match='backend="chunked"'):
        unicl_loss(*GOOD, backend="triton")


def _literal(text: str) -> str:
    import re

    return re.escape(text)


@pytest.mark.parametrize("backend", [*CPU_BACKENDS, "triton", "triton_rowwise"])
def test_rows_only_blocks_skip_the_columns_and_keep_the_row_gradients(backend):
    """``row_terms`` (distributed local mode) gives the same row terms and gradients as the full block."""
    if backend.startswith("triton") and not interpreter_active():
        pytest.skip("the Triton kernels run on the CPU only under the interpreter (tests/conftest.py sets it)")
    from unicl.loss.backends import row_terms, similarity_terms
    from unicl.loss.targets import target_keys

    dtype = torch.float32 if backend.startswith("triton") else torch.float64
    generator = torch.Generator().manual_seed(9)
    rows = torch.nn.functional.normalize(torch.randn(5, 8, generator=generator, dtype=dtype), dim=1)
    cols = torch.nn.functional.normalize(torch.randn(13, 8, generator=generator, dtype=dtype), dim=1)
    rows.requires_grad_()
    cols.requires_grad_()
    scale = torch.tensor(6.0, dtype=dtype, requires_grad=True)
    labels = torch.randint(-1, 3, (13,), generator=generator)
    col_keys = target_keys(labels, 13, rows.device)
    row_keys = col_keys[4:9]  # rows are global samples 4..8, as on one rank
    outputs = {}
    for columns in (True, False):
        if columns:
            terms, col_terms = similarity_terms(rows, cols, scale, row_keys, col_keys, backend=backend, chunk_size=2)
            assert col_terms.shape == (13,)
        else:
            terms = row_terms(rows, cols, scale, row_keys, col_keys, backend=backend, chunk_size=2)
        outputs[columns] = (terms, *torch.autograd.grad(terms.sum(), [rows, cols, scale]))
    for with_columns, without in zip(outputs[True], outputs[False]):
        torch.testing.assert_close(without, with_columns)
    # And against the reference: row i's term over all 13 columns, positives by key.
    sim = scale.detach() * rows.detach() @ cols.detach().T
    targets = (row_keys[:, None] == col_keys[None, :]).to(dtype)
    expected = torch.logsumexp(sim, 1) - (targets * sim).sum(1) / targets.sum(1)
    torch.testing.assert_close(outputs[False][0].detach(), expected)


@pytest.mark.parametrize("backend", [*CPU_BACKENDS, "triton"])
@pytest.mark.parametrize("columns", [True, False], ids=["both-directions", "rows-only"])
def test_normalising_inside_the_tiles_equals_normalising_first(backend, columns):
    """``normalize=True`` on raw features equals ``F.normalize`` first, values and gradients, with a zero row (the
    memory-efficient backends never build the normalised features). Rows-only blocks are rectangular, as in
    distributed local mode; both directions need every column to have a positive row, so that block is square."""
    if backend.startswith("triton") and not interpreter_active():
        pytest.skip("the Triton kernels run on the CPU only under the interpreter (tests/conftest.py sets it)")
    from unicl.loss.backends import row_terms, similarity_terms
    from unicl.loss.targets import target_keys

    dtype = torch.float32 if backend.startswith("triton") else torch.float64
    generator = torch.Generator().manual_seed(12)
    num_rows = 11 if columns else 6
    rows = torch.randn(num_rows, 8, generator=generator, dtype=dtype)
    rows = rows * torch.rand(num_rows, 1, generator=generator, dtype=dtype) * 5
    cols = torch.randn(11, 8, generator=generator, dtype=dtype) * 3
    rows[2] = 0
    scale = torch.tensor(7.0, dtype=dtype)
    col_keys = target_keys(torch.randint(-1, 3, (11,), generator=generator), 11, rows.device)
    row_keys = col_keys if columns else col_keys[3:9]
    upstream = torch.rand(num_rows, generator=generator, dtype=dtype) + 0.5

    def terms_and_grads(normalize_first: bool) -> tuple[torch.Tensor, ...]:
        x, y, s = rows.clone().requires_grad_(), cols.clone().requires_grad_(), scale.clone().requires_grad_()
        u, v = (F.normalize(x, dim=1), F.normalize(y, dim=1)) if normalize_first else (x, y)
        options = {"normalize": not normalize_first, "backend": backend, "chunk_size": 4}
        if columns:
            row_part, col_part = similarity_terms(u, v, s, row_keys, col_keys, **options)
            value = (row_part * upstream).sum() + col_part.sum()
            out = torch.cat([row_part, col_part])
        else:
            out = row_terms(u, v, s, row_keys, col_keys, **options)
            value = (out * upstream).sum()
        return (out, *torch.autograd.grad(value, [x, y, s]))

    tolerance = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-10}
    for inside, first in zip(terms_and_grads(False), terms_and_grads(True)):
        assert torch.isfinite(inside).all()
        torch.testing.assert_close(inside, first, **tolerance)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@given(labels=label_lists, seed=st.integers(0, 2**16), data=st.data())
def test_rescaling_feature_rows_changes_nothing_when_normalising(backend, labels, seed, data):
    n = len(labels)
    image, text = make_batch(n, 6, seed=seed, requires_grad=False)
    factors = torch.tensor(data.draw(st.lists(st.floats(1e-3, 1e3), min_size=2 * n, max_size=2 * n)))
    kwargs = {"backend": backend, "reduction": "none", "chunk_size": 2}
    before = unicl_loss(image, text, torch.tensor(labels), 5.0, **kwargs)
    after = unicl_loss(image * factors[:n, None], text * factors[n:, None], torch.tensor(labels), 5.0, **kwargs)
    torch.testing.assert_close(after, before, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("normalize", [True, False])
def test_chunked_forward_keeps_no_feature_sized_copy(normalize):
    """What the chunked forward saves for backward is the inputs themselves and ``O(N)`` vectors, never ``[N, D]``."""
    image, text = make_batch(40, 16, dtype=torch.float32)
    loss = unicl_loss(image, text, torch.arange(40) % 7 - 2, 9.0, backend="chunked", normalize=normalize)
    pending, saved = [loss.grad_fn], None
    while pending and saved is None:
        node = pending.pop()
        if type(node).__name__ == "UniCLTermsFunctionBackward":
            saved = node.saved_tensors
        pending.extend(next_node for next_node, _ in node.next_functions if next_node is not None)
    assert saved is not None
    inputs = {image.data_ptr(), text.data_ptr()}
    feature_sized = [t.shape for t in saved if t is not None and t.dim() > 1 and t.data_ptr() not in inputs]
    assert feature_sized == []


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_normalisation_matches_torch_forward_and_backward(dtype):
    from unicl.loss.normalize import normalize_features

    generator = torch.Generator().manual_seed(11)
    features = (torch.randn(9, 7, generator=generator, dtype=torch.float64) * 3).to(dtype)
    features[4] = 0  # a zero row stays zero, without NaN
    features.requires_grad_()
    upstream = torch.randn(9, 7, generator=generator, dtype=torch.float64).to(dtype)
    ours = normalize_features(features)
    (grad,) = torch.autograd.grad((ours * upstream).sum(), [features])
    reference_in = features.detach().double().requires_grad_()
    reference = torch.nn.functional.normalize(reference_in, dim=-1)
    (reference_grad,) = torch.autograd.grad((reference * upstream.double()).sum(), [reference_in])
    tolerance = {"rtol": 1e-12, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 1e-2, "atol": 1e-2}
    assert ours.dtype == grad.dtype == dtype
    torch.testing.assert_close(ours.double(), reference, **tolerance)
    torch.testing.assert_close(grad.double(), reference_grad, **tolerance)
    if dtype == torch.float64:
        assert torch.autograd.gradcheck(normalize_features, (features[:4].detach().clone().requires_grad_(),))


@pytest.mark.parametrize("backend", ["chunked", "triton", "triton_rowwise"])
def test_second_derivative_names_the_dense_backend(backend):
    """A gradient penalty through a memory-efficient backend is refused with the way out; dense supports it."""
    if backend.startswith("triton") and not interpreter_active():
        pytest.skip("the Triton kernels run on the CPU only under the interpreter (tests/conftest.py sets it)")
    image, text = make_batch(6, 4, dtype=torch.float32)
    labels = torch.tensor([0, 0, 1, -1, -1, 2])
    loss = unicl_loss(image, text, labels, 5.0, backend=backend)
    grad_image, _ = torch.autograd.grad(loss, [image, text], create_graph=True)
    with pytest.raises(NotImplementedError, match='backend="dense"'):
        grad_image.square().sum().backward()
    dense_loss = unicl_loss(image, text, labels, 5.0, backend="dense")
    (dense_grad,) = torch.autograd.grad(dense_loss, [image], create_graph=True)
    dense_grad.square().sum().backward()
    assert image.grad is not None and torch.isfinite(image.grad).all()


def test_first_derivatives_with_create_graph_equal_the_plain_ones():
    image, text = make_batch(9, 5, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, -1, -1, 2, 1, 1, -1])
    plain = torch.autograd.grad(unicl_loss(image, text, labels, 7.0, backend="chunked"), [image, text])
    graphed = torch.autograd.grad(
        unicl_loss(image, text, labels, 7.0, backend="chunked"), [image, text], create_graph=True
    )
    for got, want in zip(graphed, plain):
        torch.testing.assert_close(got.detach(), want, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("labels", ["mixed", "none"])
def test_chunked_tensor_core_path_matches_the_upcast_one(dtype, labels):
    """The CUDA path (half operands as they are, float32 results, ``P·b`` rounded to the features' dtype) forced on
    the CPU, where its products are upcast: close to the upcast path and within PyTorch's own error."""
    from unicl.loss.backends import ChunkedEngine, UniCLTermsFunction
    from unicl.loss.targets import target_keys

    image, text = make_batch(40, 24, dtype=dtype, seed=5)
    y = torch.randint(-1, 4, (40,), generator=torch.Generator().manual_seed(2)) if labels == "mixed" else None
    keys = target_keys(y, 40, image.device)
    scale = torch.tensor(20.0, requires_grad=True)

    def run(native_half: bool):
        engine = ChunkedEngine(chunk_size=7, native_half=native_half)
        rows, cols = UniCLTermsFunction.apply(image, text, scale, keys, None, engine, True, True)
        loss = (rows.mean() + cols.mean()) / 2
        return (loss, *torch.autograd.grad(loss, [image, text, scale]))

    tensor_core, upcast = run(True), run(False)
    torch.testing.assert_close(tensor_core[0], upcast[0], rtol=1e-6, atol=1e-6)  # forward: identical maths
    unit = torch.finfo(dtype).eps
    for got, want in zip(tensor_core[1:], upcast[1:]):
        # Backward differs by the rounding of P·b (and a·u) to the features' dtype before the products.
        torch.testing.assert_close(got.float(), want.float(), rtol=4 * unit, atol=4 * unit * float(want.abs().max()))


def test_dense_backend_has_exact_second_derivatives():
    image, text = make_batch(5, 3)
    labels = torch.tensor([0, 0, 1, -1, 1])
    scale = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)

    def fn(u, v, s):
        return unicl_loss(u, v, labels, s, backend="dense")

    assert torch.autograd.gradgradcheck(fn, (image, text, scale))


def test_module_repr_shows_every_option():
    module = UniCLLoss(backend="chunked", reduction="sum", normalize=False, chunk_size=64, local_loss=False)
    assert repr(module) == (
        "UniCLLoss(backend='chunked', reduction='sum', normalize=False, chunk_size=64, gather_distributed=False, "
        "local_loss=False, group=None, equal_batches=False)"
    )


@pytest.mark.parametrize("compiling", [False, True], ids=["eager", "compiled"])
def test_logit_scale_may_live_on_the_cpu_or_the_features_device(monkeypatch, compiling):
    """One rule in eager and compiled code: a CPU scale goes with features anywhere; another device is refused.
    Under torch.compile a CPU scale with CUDA features used to be refused while eager accepted it."""
    from unicl._checks import check_logit_scale

    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: compiling)
    cuda = torch.device("cuda", 0)
    assert check_logit_scale(torch.tensor(10.0), cuda).device.type == "cpu"
    assert check_logit_scale(12.5, cuda) == 12.5
    with pytest.raises(ValueError, match="logit_scale must be on the features' device cpu or the CPU; got meta"):
        check_logit_scale(torch.tensor(10.0, device="meta"), torch.device("cpu"))


@pytest.mark.slow
def test_compiled_loss_accepts_a_cpu_scale_tensor():
    image, text = make_batch(12, 8, dtype=torch.float32)
    scale = torch.tensor(14.0, requires_grad=True)
    compiled = torch.compile(lambda u, v, s: unicl_loss(u, v, None, s, backend="chunked"), backend="aot_eager")
    torch.testing.assert_close(compiled(image, text, scale), unicl_loss(image, text, None, scale, backend="chunked"))


@pytest.mark.parametrize("which", [0, 1], ids=["row-terms-only", "column-terms-only"])
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradients_of_one_direction_alone(backend, which):
    """Back-propagating only the image-to-text (or only the text-to-image) terms: the engines' backward gets one
    of its two upstream weights as None."""
    from unicl.loss.backends import similarity_terms
    from unicl.loss.targets import target_keys

    image, text = make_batch(40, 12, dtype=torch.float64, seed=8)
    labels = torch.randint(-1, 4, (40,), generator=torch.Generator().manual_seed(8))
    keys = target_keys(labels, 40, image.device)
    terms = similarity_terms(image, text, torch.tensor(9.0, dtype=torch.float64), keys, keys, normalize=True,
                             backend=backend, chunk_size=16)  # fmt: skip
    grads = torch.autograd.grad(terms[which].sum(), [image, text])
    exact_image, exact_text = image.detach().clone().requires_grad_(), text.detach().clone().requires_grad_()
    exact = reference_terms(exact_image, exact_text, labels.tolist(), 9.0)[which]
    torch.testing.assert_close(terms[which], exact, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, torch.autograd.grad(exact.sum(), [exact_image, exact_text])):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_each_option_is_checked_once_at_the_public_entry(monkeypatch):
    """``backend``, ``reduction`` and ``chunk_size`` are checked once per public call (and once when the module is
    built, never per batch); the layers below trust them."""
    import unicl.loss.backends as backends
    import unicl.loss.functional as functional
    from unicl import distributed_unicl_loss
    from unicl.loss.backends import row_terms, similarity_terms
    from unicl.loss.targets import target_keys

    checked: list[str] = []

    def counting(check):
        def wrapped(name, *args, **kwargs):
            checked.append(name)
            return check(name, *args, **kwargs)

        return wrapped

    monkeypatch.setattr(backends, "check_choice", counting(backends.check_choice))
    monkeypatch.setattr(backends, "check_optional_positive_int", counting(backends.check_optional_positive_int))
    monkeypatch.setattr(functional, "check_choice", counting(functional.check_choice))
    image, text = make_batch(6, 4, dtype=torch.float32, requires_grad=False)
    options = {"backend": "chunked", "reduction": "sum", "chunk_size": 2}

    def checks_of(call) -> list[str]:
        checked.clear()
        call()
        return sorted(checked)

    once = ["backend", "chunk_size", "reduction"]
    assert checks_of(lambda: unicl_loss(image, text, None, 5.0, **options)) == once
    assert checks_of(lambda: distributed_unicl_loss(image, text, None, 5.0, **options)) == once
    module = UniCLLoss(**options)
    gathering = UniCLLoss(gather_distributed=True, **options)
    assert checks_of(lambda: [module(image, text), module(image, text), gathering(image, text)]) == []
    keys = target_keys(None, 6, image.device)
    scale = torch.tensor(5.0)
    assert checks_of(lambda: similarity_terms(image, text, scale, keys, keys, backend="chunked")) == [
        "backend",
        "chunk_size",
    ]
    assert checks_of(lambda: row_terms(image, text, scale, keys, keys, backend="chunked")) == ["backend", "chunk_size"]
    # The module's losses are the functional ones.
    torch.testing.assert_close(module(image, text), unicl_loss(image, text, None, **options))


@pytest.mark.parametrize("function", ["similarity_terms", "row_terms"])
def test_block_terms_refuse_an_unknown_backend_or_chunk_size(function):
    import unicl.loss.backends as backends
    from unicl.loss.targets import target_keys

    image, text = make_batch(4, 3, requires_grad=False)
    keys = target_keys(None, 4, image.device)
    call = getattr(backends, function)
    with pytest.raises(ValueError, match=_literal("backend must be one of")):
        call(image, text, torch.tensor(2.0, dtype=torch.float64), keys, keys, backend="fast")
    with pytest.raises(ValueError, match=_literal("chunk_size must be an int >= 1")):
        call(image, text, torch.tensor(2.0, dtype=torch.float64), keys, keys, chunk_size=0)


def test_second_derivatives_of_the_normalisation():
    """The dense backend's second derivatives run through `normalize_features`'s differentiable backward, which takes
    its norms from `inverse_norms` like the first-order one: checked against finite differences."""
    from unicl.loss.normalize import normalize_features

    features = torch.randn(5, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 2
    assert torch.autograd.gradgradcheck(normalize_features, (features.requires_grad_(),))


@pytest.mark.slow
def test_choosing_a_backend_imports_no_triton():
    """Whether Triton can run is asked without importing it: a chunked or dense loss loads no Triton module."""
    import subprocess
    import sys

    script = (
        "import sys, torch\n"
        "from unicl import unicl_loss\n"
        "for backend in ('auto', 'dense', 'chunked'):\n"
        "    unicl_loss(torch.randn(4, 8), torch.randn(4, 8), backend=backend)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'triton'))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
