"""The CUDA path of the kernels and backends, taken on CPU tensors with only what needs a GPU replaced.

What is replaced, and nothing else:

* the hardware queries torch answers from the driver (``get_device_capability``, ``get_device_properties``,
  ``torch.cuda.device``), which return the chip under test;
* the autotuner's GPU timing (``Autotuner._bench``), which returns the times a test chooses without running the
  kernel, so a test decides which configuration wins;
* the compiled launch: under ``TRITON_INTERPRET=1`` (tests/conftest.py) every ``@triton.jit`` function is Triton's
  interpreter, so the autotuner's own launch runs the kernel, with the configuration it picked, on the CPU;
* cuBLAS's half-precision products with float32 results (``torch.mm(..., out_dtype=)`` and ``torch.addmm`` into a
  float32 accumulator), which torch has only for CUDA: CPU stand-ins compute the same float32 products.

The predicates that choose the CUDA branch (`unicl.loss.kernels.tuning.runs_compiled` and the chunked backend's
`unicl.loss.matmul.uses_tensor_core_products`) say yes for CPU tensors. Everything else runs as on a
GPU: the capability lookup and tile tables, launch plans, autotuner keying and ``early_config_prune``, grids, the
positional arguments Triton's autotuner needs, super-chunks and column ranges, the mixed-precision GEMM branches.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest
import torch
import triton
from triton.runtime.autotuner import Autotuner

import unicl.loss.kernels.tuning as tuning
import unicl.loss.matmul as matmul

#: Streaming multiprocessors of the chip under test, per compute capability (A100, RTX 3090, RTX 4090, H100, B200).
MULTIPROCESSORS = {(8, 0): 108, (8, 6): 82, (8, 9): 128, (9, 0): 132, (10, 0): 148}


@dataclass
class FakeGPU:
    """What a test run on the fake chip saw: the configurations each autotuner timed and what it picked."""

    capability: tuple[int, int]
    timed: list[tuple[str, dict]] = field(default_factory=list)
    picked: list[tuple[str, dict]] = field(default_factory=list)


def _cpu_mixed_products(library: torch.library.Library) -> None:
    """CPU stand-ins for the CUDA-only half-precision products with float32 results."""

    def mm(a: torch.Tensor, b: torch.Tensor, out_dtype: torch.dtype) -> torch.Tensor:
        return torch.mm(a.to(out_dtype), b.to(out_dtype))

    def mm_out(a: torch.Tensor, b: torch.Tensor, out_dtype: torch.dtype, *, out: torch.Tensor) -> torch.Tensor:
        return torch.mm(a.to(out_dtype), b.to(out_dtype), out=out)

    def addmm_out(acc, a, b, out_dtype, *, beta=1, alpha=1, out):
        if acc.dtype != out_dtype:
            raise RuntimeError("self dtype must match either out_dtype or mat1 dtype")  # as torch 2.14 on CUDA
        return torch.addmm(acc, a.to(out_dtype), b.to(out_dtype), beta=beta, alpha=alpha, out=out)

    library.impl("mm.dtype", mm, "CPU")
    library.impl("mm.dtype_out", mm_out, "CPU")
    library.impl("addmm.dtype_out", addmm_out, "CPU")


def _clear_autotuners() -> None:
    tuning.tuned.cache_clear()


@contextlib.contextmanager
def fake_cuda(
    monkeypatch: pytest.MonkeyPatch,
    capability: tuple[int, int] = (9, 0),
    timing: Callable[[str, dict], float] | None = None,
) -> Iterator[FakeGPU]:
    """Take the CUDA path on CPU tensors for a chip of ``capability``.

    Args:
        monkeypatch: the test's monkeypatch fixture (undone when the test ends).
        capability: the compute capability the chip reports.
        timing: ``(kernel function name, config kwargs) -> milliseconds`` for the autotuner; by default every
            configuration takes 1 ms, so the autotuner keeps the first one that survives pruning.
    """
    gpu = FakeGPU(capability)
    time_of = timing or (lambda name, config: 1.0)

    def bench(self: Autotuner, *args: object, config: triton.Config, **meta: object) -> list[float]:
        gpu.timed.append((self.base_fn.__name__, dict(config.kwargs)))
        milliseconds = float(time_of(self.base_fn.__name__, dict(config.kwargs)))
        return [milliseconds] * 3

    original_run = Autotuner.run

    def run(self: Autotuner, *args: object, **kwargs: object) -> object:
        result = original_run(self, *args, **kwargs)
        gpu.picked.append((self.base_fn.__name__, dict(self.best_config.kwargs)))
        return result

    properties = SimpleNamespace(multi_processor_count=MULTIPROCESSORS.get(capability, 100), name="fake GPU")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: properties)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(Autotuner, "_bench", bench)
    monkeypatch.setattr(Autotuner, "run", run)
    # Every module that took the predicates by name sees the replacement.
    replacements = {
        "runs_compiled": (tuning.runs_compiled, lambda device: True),
        "uses_tensor_core_products": (matmul.uses_tensor_core_products, lambda x: x.dtype in matmul.HALF_DTYPES),
    }
    for name, module in list(sys.modules.items()):
        for attribute, (original, replacement) in replacements.items():
            if name.startswith("unicl") and getattr(module, attribute, None) is original:
                monkeypatch.setattr(module, attribute, replacement)
    monkeypatch.setattr(matmul, "_MIXED_PRODUCT_DEVICES", ("cuda", "meta", "cpu"))
    library = torch.library.Library("aten", "IMPL")
    _cpu_mixed_products(library)
    _clear_autotuners()
    try:
        yield gpu
    finally:
        _clear_autotuners()
        library._destroy()
