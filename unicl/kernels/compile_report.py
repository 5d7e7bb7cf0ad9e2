"""Compile the UniCL kernels for a GPU that need not be present and report what the compiler made of them.

For every autotune configuration of every kernel (the one-pass schedule's ``partials`` and ``weights``, the
two-pass schedule's ``lse`` and ``grad``), at a given compute capability and feature dtype, it reports which
tensor-core instructions the PTX issues (``mma`` on Ampere and Ada, ``wgmma`` on Hopper, ``tcgen05.mma`` on
Blackwell), whether the PTX or the SASS touches local memory (register spills: ``ld.local``/``st.local`` in PTX,
``LDL``/``STL`` in SASS from the bundled ``cuobjdump``), the static shared memory against the chip's limit, and
whether the launcher's estimate (:func:`unicl.kernels.tuning.estimated_shared_bytes`, which prunes configurations
per chip) bounds it.

Run it without ``TRITON_INTERPRET`` (the interpreter replaces the kernels by Python functions)::

    python -m unicl.kernels.compile_report --capability 80 86 89 90 100 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from unicl.kernels import one_pass, unicl_fused
from unicl.kernels.tuning import SHARED_MEMORY_LIMIT, estimated_shared_bytes

TRITON_DTYPE = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}
#: Every kernel by name, with the module whose configuration table it uses.
KERNELS = {
    "partials": (one_pass._lse_partials_kernel, one_pass),
    "weights": (one_pass._softmax_weights_kernel, one_pass),
    "lse": (unicl_fused._row_lse_kernel, unicl_fused),
    "grad": (unicl_fused._row_softmax_grad_kernel, unicl_fused),
}
#: Pointers to feature-dtype data; every other pointer is float32.
FEATURE_POINTERS = {"q_ptr", "k_ptr", "w_ptr"}
#: The PTX of a tensor-core product per chip family.
TENSOR_CORE_PTX = {8: r"\bmma\.sync\.", 9: r"\bwgmma\.", 10: r"\btcgen05\.mma"}


@dataclass
class KernelReport:
    """What the compiler made of one kernel configuration."""

    kernel: str
    capability: int
    dtype: str
    config: dict
    num_warps: int
    num_stages: int
    wgmma: bool
    tensor_cores: bool
    ptx_local_memory: bool
    sass_spills: bool | None
    shared_bytes: int
    shared_estimate: int
    shared_limit: int

    @property
    def fits(self) -> bool:
        return self.shared_bytes <= self.shared_limit


def _signature(kernel: triton.JITFunction, dtype: str, constexprs: dict) -> dict[str, str]:
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = f"*{TRITON_DTYPE[dtype] if name in FEATURE_POINTERS else 'fp32'}"
        else:
            signature[name] = "i32"
    return signature


def _sass_spills(cubin: bytes) -> bool | None:
    """Whether the SASS loads or stores local memory; ``None`` if no ``cuobjdump`` is at hand."""
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    executable = str(tool) if tool.exists() else shutil.which("cuobjdump")
    if executable is None:
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as handle:
        handle.write(cubin)
        handle.flush()
        sass = subprocess.run([executable, "-sass", handle.name], capture_output=True, text=True, check=True).stdout
    return bool(re.search(r"\b(LDL|STL)\b", sass))


def compile_kernel(kernel_name: str, capability: int, dtype: str, config: triton.Config) -> KernelReport:
    """Compile one kernel configuration for ``sm_<capability>`` and inspect the result."""
    kernel = KERNELS[kernel_name][0]
    constexprs = dict(config.kwargs)
    constexprs.update({"INPUT_PRECISION": "ieee" if dtype == "float32" else "tf32", "UPCAST_DOT": False})
    if "HAS_Q_WEIGHT" in kernel.arg_names:
        constexprs.update({"HAS_Q_WEIGHT": True, "HAS_K_WEIGHT": True})
    source = ASTSource(kernel, _signature(kernel, dtype, constexprs), constexprs)
    options = {"num_warps": config.num_warps, "num_stages": config.num_stages}
    compiled = triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options)
    ptx = compiled.asm["ptx"]
    return KernelReport(
        kernel=kernel_name,
        capability=capability,
        dtype=dtype,
        config=dict(config.kwargs),
        num_warps=config.num_warps,
        num_stages=config.num_stages,
        wgmma=bool(re.search(r"\bwgmma\.", ptx)),
        tensor_cores=bool(re.search(TENSOR_CORE_PTX[min(capability // 10, 10)], ptx)),
        ptx_local_memory=bool(re.search(r"\b(ld|st)\.local\b", ptx)),
        sass_spills=_sass_spills(compiled.asm["cubin"]),
        shared_bytes=int(compiled.metadata.shared),
        shared_estimate=estimated_shared_bytes(config, getattr(torch, dtype)),
        shared_limit=SHARED_MEMORY_LIMIT[capability],
    )


def compile_all(capability: int, dtype: str) -> list[KernelReport]:
    """Reports for every autotune configuration of every kernel at one capability and dtype."""
    if unicl_fused.interpreting():
        raise RuntimeError("compile_report needs the compiler: unset TRITON_INTERPRET before importing unicl")
    torch_dtype = getattr(torch, dtype)
    return [
        compile_kernel(name, capability, dtype, config)
        for name, (_, module) in KERNELS.items()
        for config in module.configs_for(name, divmod(capability, 10), torch_dtype)
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capability", type=int, nargs="+", default=sorted(SHARED_MEMORY_LIMIT))
    parser.add_argument("--dtype", nargs="+", default=["bfloat16", "float16", "float32"], choices=TRITON_DTYPE)
    args = parser.parse_args(argv)
    os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="unicl-triton-cache-"))
    reports = [r for cap in args.capability for dtype in args.dtype for r in compile_all(cap, dtype)]
    print(json.dumps([asdict(r) for r in reports]))


if __name__ == "__main__":
    main()
