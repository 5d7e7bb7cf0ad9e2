"""The one-pass forward's log-sum-exps stay exact to float32 rounding at a logit scale of 100, where a shared shift
would underflow: a near-duplicate pair next to columns whose best cosine is about 0 or negative, a row whose every
logit is near -100, and ragged tiles (padded rows and columns, column ranges that are not whole tiles), through the
CPU interpreter."""

from __future__ import annotations

import pytest
import torch

from unicl.loss.kernels.availability import interpreter_active
from unicl.loss.kernels.one_pass import one_pass_logsumexp

pytestmark = pytest.mark.skipif(not interpreter_active(), reason="needs TRITON_INTERPRET=1 set before importing triton")

SCALE = 100.0
DIM = 48


def _check(q: torch.Tensor, k: torch.Tensor, rows_per_chunk: int, cols_per_range: int, scale: float = SCALE) -> None:
    q_scale, k_scale = 1 / q.norm(dim=1), 1 / k.norm(dim=1)
    sim = scale * (q_scale[:, None] * q.double()) @ (k_scale[:, None] * k.double()).T
    row_lse, col_lse = one_pass_logsumexp(q, k, torch.tensor(scale), q_scale, k_scale, rows_per_chunk, cols_per_range)
    # float32 rounding of logits up to 100 in magnitude: a few units in the last place of the log-sum-exp.
    torch.testing.assert_close(row_lse.double(), torch.logsumexp(sim, 1), rtol=3e-6, atol=3e-6)
    torch.testing.assert_close(col_lse.double(), torch.logsumexp(sim, 0), rtol=3e-6, atol=3e-6)


def _orthogonal_to(rows: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A unit vector orthogonal to every row of ``rows`` (fewer rows than dimensions)."""
    basis = torch.linalg.qr(rows.T.double(), mode="complete").Q[:, rows.shape[0] :]
    return (basis @ torch.randn(basis.shape[1], generator=generator, dtype=torch.float64)).float()


def test_columns_far_below_a_near_duplicate():
    """One column matches a row (S = 100) in the same tile as a column orthogonal to the tile's 32 rows (S = 0 there,
    2^-144 relative to the tile's maximum, below float32's range) and columns anti-aligned with many rows: each
    column's own maximum must set its shift."""
    generator = torch.Generator().manual_seed(0)
    q, k = torch.randn(45, DIM, generator=generator), torch.randn(70, DIM, generator=generator)
    k[3] = q[5] + 1e-3 * torch.randn(DIM, generator=generator)
    k[4] = _orthogonal_to(q[:32], generator)
    k[10:20] = -q[:10].mean(0) + 0.01 * torch.randn(10, DIM, generator=generator)
    _check(q, k, rows_per_chunk=32, cols_per_range=64)


def test_a_row_of_logits_near_minus_the_scale():
    generator = torch.Generator().manual_seed(1)
    q, k = torch.randn(40, DIM, generator=generator), torch.randn(50, DIM, generator=generator)
    k = k - k.mean(0)
    k[:25] = k[0] + 0.05 * torch.randn(25, DIM, generator=generator)
    q[7] = -k[0]
    _check(q, k, rows_per_chunk=64, cols_per_range=32)


@pytest.mark.slow
@pytest.mark.parametrize("scale", [SCALE, 0.5])
def test_ragged_tiles_and_ranges(scale):
    """77 x 101 with 32-wide tiles, super-chunks of 40 rows and column ranges of 40: padded rows and columns in
    every direction of a tile."""
    generator = torch.Generator().manual_seed(2)
    q, k = torch.randn(77, DIM, generator=generator), torch.randn(101, DIM, generator=generator)
    _check(q, k, rows_per_chunk=40, cols_per_range=40, scale=scale)
