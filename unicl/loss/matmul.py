"""Matrix products with float32 results from possibly half-precision operands, shared by the chunked engine
(`unicl.loss.chunked`) and the one-pass Triton schedule's backward GEMMs (`unicl.loss.kernels.one_pass`)."""

from __future__ import annotations

import torch

from unicl._versions import release

HALF_DTYPES = (torch.float16, torch.bfloat16)
#: Devices with half-precision products that return float32 (``torch.mm(..., out_dtype=torch.float32)``), in torch
#: releases that have them.
_MIXED_PRODUCT_DEVICES = ("cuda", "meta") if "dtype" in torch.ops.aten.mm.overloads() else ()


def in_place_mixed_addmm_devices(torch_version: str) -> tuple[str, ...]:
    """The device types whose ``addmm(acc, a, b, out_dtype=float32, out=acc)`` takes a float32 ``acc`` with half
    ``a``, ``b`` in ``torch_version`` (compared as a parsed release, never as a string).

    CUDA's kernel does in every supported release (torch 2.11 and later carry its "self dtype must match either
    out_dtype or mat1 dtype" check); the meta device's function does from torch 2.14 (torch 2.11's reads
    ``out_dtype`` as the scalar ``beta`` and raises ``TypeError``). Elsewhere the product goes through a float32
    temporary.
    """
    return ("cuda", "meta") if release(torch_version) >= (2, 14) else ("cuda",)


_MIXED_ADDMM_IN_PLACE_DEVICES = in_place_mixed_addmm_devices(torch.__version__)


def uses_tensor_core_products(features: torch.Tensor) -> bool:
    """Whether the walk multiplies half-precision ``features`` as they are (CUDA) rather than upcast (elsewhere)."""
    return features.device.type == "cuda" and features.dtype in HALF_DTYPES


def mixed_mm(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out = a @ b`` with ``out`` in float32 and ``a``, ``b`` possibly half precision.

    On CUDA the half operands go to tensor cores with a float32 result (and on the meta device, where the cost
    model traces the CUDA plan); elsewhere (torch has no such CPU kernel in 2.14) they are upcast first, which gives
    the same float32 products.

    Args:
        a: ``[M, K]``.
        b: ``[K, N]``, same dtype as ``a``.
        out: ``[M, N]`` float32 (or ``a``'s dtype), overwritten.

    Returns:
        ``out``.
    """
    if a.dtype == out.dtype:
        return torch.mm(a, b, out=out)
    if a.device.type in _MIXED_PRODUCT_DEVICES:
        return torch.mm(a, b, out_dtype=out.dtype, out=out)
    return torch.mm(a.to(out.dtype), b.to(out.dtype), out=out)


def mixed_addmm_(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``acc += a @ b`` in place, ``acc`` in float32 and ``a``, ``b`` possibly half precision (see `mixed_mm`).

    Written as ``addmm(..., out=acc)`` (one BLAS call with beta = 1, as ``addmm_`` is), which torch's
    ``FlopCounterMode`` counts; it does not count the in-place ``addmm_``.

    Args:
        acc: ``[M, N]`` float32 (or ``a``'s dtype) accumulator.
        a: ``[M, K]``.
        b: ``[K, N]``, same dtype as ``a``.

    Returns:
        ``acc``.
    """
    if a.dtype == acc.dtype:
        return torch.addmm(acc, a, b, out=acc)
    if a.device.type in _MIXED_PRODUCT_DEVICES:
        if a.device.type in _MIXED_ADDMM_IN_PLACE_DEVICES:
            return torch.addmm(acc, a, b, out_dtype=acc.dtype, out=acc)
        return acc.add_(torch.mm(a, b, out_dtype=acc.dtype))
    return torch.addmm(acc, a.to(acc.dtype), b.to(acc.dtype), out=acc)
