"""unicl.loss.matmul: half-precision products with float32 results, and the per-device choice between the in-place
``addmm`` and a float32 temporary, decided from a parsed torch version."""

from __future__ import annotations

import pytest
import torch

from unicl.loss.matmul import in_place_mixed_addmm_devices, mixed_addmm_, mixed_mm


@pytest.mark.parametrize(
    ("version", "devices"),
    [
        ("2.9.0", ("cuda",)),  # "2.9.0" >= "2.14" as strings
        ("2.11.0+cu130", ("cuda",)),
        ("2.14.0a0+git1234", ("cuda", "meta")),  # a 2.14 development build
        ("2.14.1", ("cuda", "meta")),
        ("2.20.0", ("cuda", "meta")),  # "2.20.0" < "2.3" as strings
        ("3.0.0.dev20270101", ("cuda", "meta")),
    ],
)
def test_in_place_devices_follow_the_parsed_version(version, devices):
    assert in_place_mixed_addmm_devices(version) == devices


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_meta_products_run_on_this_torch(dtype):
    """The cost model traces the CUDA plan on the meta device: the path chosen for meta must run on the installed
    torch (torch 2.11's meta ``addmm`` with ``out_dtype`` raises, so there the temporary is taken)."""
    acc = torch.zeros(4, 3, device="meta")
    a, b = torch.zeros(4, 8, dtype=dtype, device="meta"), torch.zeros(8, 3, dtype=dtype, device="meta")
    out = mixed_addmm_(acc, a, b)
    assert out.shape == (4, 3) and out.dtype == torch.float32
    assert mixed_mm(a, b, torch.empty(4, 3, device="meta")).dtype == torch.float32


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_cpu_products_are_float32_exact_from_rounded_inputs(dtype):
    generator = torch.Generator().manual_seed(3)
    a = torch.randn(17, 33, generator=generator).to(dtype)
    b = torch.randn(33, 9, generator=generator).to(dtype)
    start = torch.randn(17, 9, generator=generator)
    expected = start.double() + a.double() @ b.double()
    acc = start.clone()
    assert mixed_addmm_(acc, a, b) is acc
    torch.testing.assert_close(acc.double(), expected, rtol=1e-5, atol=1e-5)
    product = mixed_mm(a, b, torch.empty(17, 9))
    torch.testing.assert_close(product.double(), a.double() @ b.double(), rtol=1e-5, atol=1e-5)
