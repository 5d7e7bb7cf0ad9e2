"""Compile the UniCL kernels for a GPU that need not be present and report what the compiler made of them.

For every autotune configuration of both kernels, at a given compute capability and feature dtype, it reports
whether the PTX issues Hopper ``wgmma`` instructions, whether the PTX or the SASS touches local memory (register
spills: ``ld.local``/``st.local`` in PTX, ``LDL``/``STL`` in SASS from the bundled ``cuobjdump``), and the static
shared memory against the chip's limit.

Run it without ``TRITON_INTERPRET`` (the interpreter replaces the kernels by Python functions)::

    python -m unicl.kernels.compile_report --capability 90 --dtype bfloat16
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

from unicl.kernels import unicl_fused

#: Largest shared memory one block may use, in bytes (A100: 163 KiB; H100/H200: 227 KiB).
SHARED_MEMORY_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
TRITON_DTYPE = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


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
    ptx_local_memory: bool
    sass_spills: bool | None
    shared_bytes: int
    shared_limit: int

    @property
    def fits(self) -> bool:
        return self.shared_bytes <= self.shared_limit


def _signature(kernel: triton.JITFunction, dtype: str, constexprs: dict) -> dict[str, str]:
    feature_pointers = {"q_ptr", "k_ptr"}
    signature = {}
    for name in kernel.arg_names:
        if name in constexprs:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = f"*{TRITON_DTYPE[dtype] if name in feature_pointers else 'fp32'}"
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
    kernel = {"lse": unicl_fused._row_lse_kernel, "grad": unicl_fused._row_softmax_grad_kernel}[kernel_name]
    constexprs = dict(config.kwargs)
    constexprs.update({"INPUT_PRECISION": "ieee" if dtype == "float32" else "tf32", "UPCAST_DOT": False})
    if kernel_name == "grad":
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
        ptx_local_memory=bool(re.search(r"\b(ld|st)\.local\b", ptx)),
        sass_spills=_sass_spills(compiled.asm["cubin"]),
        shared_bytes=int(compiled.metadata.shared),
        shared_limit=SHARED_MEMORY_LIMIT[capability],
    )


def compile_all(capability: int, dtype: str) -> list[KernelReport]:
    """Reports for every autotune configuration of both kernels at one capability and dtype."""
    if unicl_fused.interpreting():
        raise RuntimeError("compile_report needs the compiler: unset TRITON_INTERPRET before importing unicl")
    torch_dtype = getattr(torch, dtype)
    return [
        compile_kernel(name, capability, dtype, config)
        for name in ("lse", "grad")
        for config in unicl_fused.configs_for(name, capability // 10, torch_dtype)
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--capability", type=int, nargs="+", default=[80, 90])
    parser.add_argument("--dtype", nargs="+", default=["bfloat16", "float16", "float32"], choices=TRITON_DTYPE)
    args = parser.parse_args(argv)
    os.environ.setdefault("TRITON_CACHE_DIR", tempfile.mkdtemp(prefix="unicl-triton-cache-"))
    reports = [r for cap in args.capability for dtype in args.dtype for r in compile_all(cap, dtype)]
    print(json.dumps([asdict(r) for r in reports]))


if __name__ == "__main__":
    main()
