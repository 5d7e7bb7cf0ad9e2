"""The loss computes in the features' dtype whatever the caller's autocast state (CPU autocast here; the same
context is turned off for CUDA)."""

from __future__ import annotations

import pytest
import torch
from reference import assert_matches_float64, assert_relative_close, float64_loss_and_grads

from unicl import UniCLLoss, unicl_loss
from unicl.loss.kernels.availability import interpreter_active

BACKENDS = ["dense", "chunked", "triton", "triton_rowwise"]


def _batch(n, d, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(n, d, generator=generator).to(dtype).requires_grad_()
    text = torch.randn(n, d, generator=generator).to(dtype).requires_grad_()
    labels = torch.randint(-1, 6, (n,), generator=generator)
    return image, text, labels


def _loss_and_grads(image, text, labels, scale, backend, autocast_dtype=None):
    region = torch.autocast("cpu", dtype=autocast_dtype) if autocast_dtype else torch.autocast("cpu", enabled=False)
    with region:
        loss = unicl_loss(image, text, labels, scale, backend=backend)
    # Backward after the region, as torch's autocast documentation asks (backward ops run in the dtypes the
    # forward ops had).
    return (loss, *torch.autograd.grad(loss, [image, text, scale]))


def _skip_without_interpreter(backend):
    if backend.startswith("triton") and not interpreter_active():
        pytest.skip("the Triton backends need TRITON_INTERPRET=1 on the CPU")


@pytest.mark.slow
@pytest.mark.parametrize("autocast_dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_features_give_the_float32_loss_inside_autocast(backend, autocast_dtype):
    """Under bf16 autocast the dense loss moved by 2.3e-3 and its text gradients by 1.9e-2, and the chunked loss
    value by 1.8e-4 while its gradients did not; now both are the float32 results within 1e-5."""
    _skip_without_interpreter(backend)
    n = 96 if backend.startswith("triton") else 512
    image, text, labels = _batch(n, 64, torch.float32)
    scale = torch.tensor(30.0, requires_grad=True)
    outside = _loss_and_grads(image, text, labels, scale, backend)
    inside = _loss_and_grads(image, text, labels, scale, backend, autocast_dtype)
    assert inside[0].dtype == torch.float32
    for got, want, what in zip(inside, outside, ["loss", "grad image", "grad text", "grad scale"]):
        assert_relative_close(got, want, 1e-5, what)
    # And against float64 on the same inputs, with the float32 bounds (loss 1e-5, gradients 1e-4).
    assert_matches_float64(inside, float64_loss_and_grads(image, text, labels, scale), torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_half_features_give_the_same_results_inside_and_outside_autocast(backend):
    _skip_without_interpreter(backend)
    image, text, labels = _batch(64, 40, torch.bfloat16, seed=1)
    scale = torch.tensor(20.0, requires_grad=True)
    outside = _loss_and_grads(image, text, labels, scale, backend)
    inside = _loss_and_grads(image, text, labels, scale, backend, torch.bfloat16)
    for got, want in zip(inside, outside):
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert_matches_float64(inside, float64_loss_and_grads(image, text, labels, scale), torch.bfloat16)


@pytest.mark.slow
def test_the_module_inside_autocast_with_backward_outside():
    """The training loop's pattern: forward under autocast, backward after the region ends."""
    image, text, labels = _batch(300, 32, torch.float32, seed=2)
    module = UniCLLoss(backend="chunked")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = module(image_features=image, text_features=text, labels=labels, logit_scale=25.0)
    loss.backward()
    reference_image = image.detach().clone().requires_grad_()
    expected = unicl_loss(reference_image, text.detach(), labels, 25.0, backend="chunked")
    expected.backward()
    assert_relative_close(loss, expected, 1e-6, "loss")
    assert_relative_close(image.grad, reference_image.grad, 1e-5, "grad image")
