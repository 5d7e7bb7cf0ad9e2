"""Backends of the UniCL loss and the choice between them.

* ``"dense"``: `unicl.loss.dense.dense_terms`, the readable reference (holds ``N × N`` tensors).
* ``"chunked"``: `unicl.loss.chunked.ChunkedEngine` behind the shared autograd function; any device.
* ``"triton"``: the one-pass fused kernels of `unicl.loss.kernels.one_pass` (``8N²D`` flops, the minimum); CUDA,
  or the CPU under ``TRITON_INTERPRET=1``.
* ``"triton_rowwise"``: the two-pass fused kernels of `unicl.loss.kernels.two_pass` (``12N²D`` flops,
  deterministic without partial buffers); CUDA, or the CPU under ``TRITON_INTERPRET=1``.
* ``"auto"``: ``"chunked"`` on CUDA (see `AUTO_PREFERS_TRITON_ON_CUDA`), elsewhere ``"dense"`` up to
  1,024 × 1,024 entries and ``"chunked"`` above.
"""

from __future__ import annotations

import torch

from unicl._checks import check_choice, check_optional_positive_int
from unicl.loss.autograd import UniCLTermsFunction
from unicl.loss.chunked import ChunkedEngine
from unicl.loss.dense import dense_terms
from unicl.loss.dtypes import accumulation_dtype, autocast_disabled
from unicl.loss.engine import SimilarityEngine
from unicl.loss.kernels.availability import triton_unavailable_reason
from unicl.loss.names import BACKENDS, TRITON_BACKENDS
from unicl.loss.normalize import normalize_features
from unicl.loss.objectives import SOFTMAX, Objective

#: ``"auto"`` uses the dense backend up to this many entries of ``S``: there the chunked walk saves little memory and
#: costs Python overhead (2-core EPYC, float32, D = 512, forward+backward, benchmarks/results/cpu-quick: dense
#: 5.9 ms vs chunked 12.1 ms at N = 256, 61 vs 81 ms at N = 1,024, but 1,276 vs 817 ms at N = 4,096).
AUTO_DENSE_MAX_ENTRIES = 1024 * 1024
#: Whether ``"auto"`` picks the Triton kernels on CUDA. Not until a GPU run has passed tests/gpu and its results are
#: committed under benchmarks/results/gpu-*: no compiled kernel of unicl has executed on a GPU yet, so ``auto``
#: takes the chunked backend there, which runs on torch's own CUDA kernels. ``backend="triton"`` stays available.
AUTO_PREFERS_TRITON_ON_CUDA = False


def check_backend_options(backend: object, chunk_size: object) -> None:
    """Check the options every entry of the loss takes: ``backend`` one of `BACKENDS`, ``chunk_size`` ``None`` or an
    int >= 1. The public entries (`unicl.loss.functional.unicl_loss`, `unicl.loss.module.UniCLLoss`,
    `unicl.loss.distributed.distributed_unicl_loss`, `similarity_terms`, `row_terms`) call it once; the layers
    below them trust their callers.

    Raises:
        ValueError: an unknown backend, or a ``chunk_size`` below 1.
        TypeError: a ``chunk_size`` that is not an int.
    """
    check_choice("backend", backend, BACKENDS)
    check_optional_positive_int("chunk_size", chunk_size)


def resolve_backend(backend: str, device: torch.device, dtype: torch.dtype, num_rows: int, num_cols: int) -> str:
    """Turn ``"auto"`` into a concrete backend for this device and block size, and refuse a Triton backend where it
    cannot run.

    Args:
        backend: one of `BACKENDS`, as checked by `check_backend_options`.
        device: where the features are.
        dtype: the features' dtype.
        num_rows: rows ``M`` of the block ``S``.
        num_cols: columns ``N`` of the block.

    Raises:
        RuntimeError: ``"triton"`` asked for where it cannot run.
    """
    if backend == "auto":
        if device.type == "cuda":
            if AUTO_PREFERS_TRITON_ON_CUDA and triton_unavailable_reason(device, dtype) is None:
                return "triton"
            return "chunked"
        return "dense" if num_rows * num_cols <= AUTO_DENSE_MAX_ENTRIES else "chunked"
    if backend in TRITON_BACKENDS:
        problem = triton_unavailable_reason(device, dtype)
        if problem is not None:
            raise RuntimeError(f'backend="{backend}" cannot run here: {problem}. Use backend="chunked" instead.')
    return backend


def make_engine(backend: str, chunk_size: int | None) -> SimilarityEngine:
    """The engine of a concrete memory-efficient backend.

    Args:
        backend: ``"chunked"``, ``"triton"`` (the one-pass schedule, `unicl.loss.kernels.one_pass`, ``8N²D``
            flops) or ``"triton_rowwise"`` (the two-pass schedule, `unicl.loss.kernels.two_pass`, ``12N²D`` flops at
            ``D <= BLOCK_D``).
        chunk_size: rows per block of the chunked walk, or per super-chunk of the one-pass schedule (``None``:
            automatic); the two-pass schedule takes none.
    """
    # The Triton schedules are imported here, when one is asked for: importing triton costs seconds, and the
    # package is optional. Importing them compiles nothing until the first launch.
    if backend == "triton":
        from unicl.loss.kernels.one_pass import OnePassEngine

        return OnePassEngine(chunk_size)
    if backend == "triton_rowwise":
        from unicl.loss.kernels.two_pass import TwoPassEngine

        return TwoPassEngine()
    return ChunkedEngine(chunk_size)


def similarity_terms(
    u: torch.Tensor,
    v: torch.Tensor,
    scale: torch.Tensor,
    row_keys: torch.Tensor,
    col_keys: torch.Tensor,
    *,
    normalize: bool = False,
    backend: str = "auto",
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row and per-column UniCL terms of the block ``S = s·U Vᵀ`` with the chosen backend.

    Args:
        u: ``[M, D]`` row (image) features.
        v: ``[N, D]`` column (text) features, same dtype and device as ``u``.
        scale: 0-dim logit scale ``s`` in the accumulation dtype.
        row_keys: ``[M]`` target keys of the rows (see `unicl.loss.targets.target_keys`).
        col_keys: ``[N]`` target keys of the columns.
        normalize: L2-normalise the rows of ``u`` and ``v`` first (the memory-efficient backends do it inside the
            tiles of ``S``, without a normalised copy).
        backend: one of `BACKENDS`.
        chunk_size: rows per block of the chunked backend, or per super-chunk of the one-pass Triton schedule
            (``None``: automatic).

    Returns:
        ``l_row [M]`` (``logsumexp_j S_ij`` minus the mean positive logit of row ``i``) and ``l_col [N]`` (the same
        down column ``j``), in float32 (float64 for float64 inputs).

    Raises:
        ValueError: an unknown ``backend`` or a ``chunk_size`` below 1.
        RuntimeError: a Triton backend where it cannot run.
    """
    check_backend_options(backend, chunk_size)
    return block_terms(u, v, scale, row_keys, col_keys, normalize, backend, chunk_size, columns=True)


def row_terms(
    u: torch.Tensor,
    v: torch.Tensor,
    scale: torch.Tensor,
    row_keys: torch.Tensor,
    col_keys: torch.Tensor,
    *,
    normalize: bool = False,
    backend: str = "auto",
    chunk_size: int | None = None,
) -> torch.Tensor:
    """Only the per-row terms ``l_row [M]`` of `similarity_terms`, skipping all column work.

    Distributed local mode computes this: a rank's rows against the global columns, once per direction.
    """
    check_backend_options(backend, chunk_size)
    return block_terms(u, v, scale, row_keys, col_keys, normalize, backend, chunk_size, columns=False)[0]


def block_terms(
    u: torch.Tensor,
    v: torch.Tensor,
    scale: torch.Tensor,
    row_keys: torch.Tensor,
    col_keys: torch.Tensor,
    normalize: bool,
    backend: str,
    chunk_size: int | None,
    columns: bool,
    objective: Objective = SOFTMAX,
    bias: torch.Tensor | None = None,
    uniform_upstream: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`similarity_terms` (``columns``) or `row_terms` (without: the second vector is empty and no column work is
    done) for options already checked by `check_backend_options`, as the loss's entries call it once per batch;
    ``objective`` (`unicl.loss.objectives`) says which terms, ``bias`` is the 0-dim logit bias of an objective that
    has one; ``uniform_upstream`` promises that the caller sums or averages the row terms (see
    `unicl.loss.autograd.UniCLTermsFunction`).

    Autocast is off throughout (`unicl.loss.dtypes.autocast_disabled`): the numerics follow the features' dtype only.
    """
    with autocast_disabled(u.device):
        concrete = resolve_backend(backend, u.device, u.dtype, u.shape[0], v.shape[0])
        if u.shape[0] == 0 or v.shape[0] == 0:
            # A block with no rows (an empty rank in distributed local mode) has nothing to walk; the dense form
            # keeps it in the autograd graph, so that rank still joins the gather's backward.
            concrete = "dense"
        if concrete == "dense":
            # The reference is the most precise backend in every dtype: half features are normalised and
            # multiplied in the accumulation dtype, as the memory-efficient engines keep their norms and products.
            acc = accumulation_dtype(u.dtype)
            u, v = u.to(acc), v.to(acc)
            if normalize:
                u, v = normalize_features(u), normalize_features(v)
            return dense_terms(u, v, scale, row_keys, col_keys, columns, objective, bias)
        engine = make_engine(concrete, chunk_size)
        # A square batch shares one key tensor; autograd.Function under torch.compile refuses a tensor passed twice.
        shared_keys = None if col_keys is row_keys else col_keys
        return UniCLTermsFunction.apply(
            u, v, scale, row_keys, shared_keys, engine, columns, normalize, objective, bias, uniform_upstream
        )
