"""Row L2-normalisation with a lean backward.

``F.normalize`` differentiates as a division by a norm, which keeps several ``[N, D]`` temporaries alive in
backward. Here backward is ``∂x = (g − u·⟨u, g⟩) / ‖x‖`` from the saved output ``u`` and the ``N`` norms, with one
``[N, D]`` result and nothing else; the loss saves ``u`` anyway, so the forward keeps no extra copy either.
"""

from __future__ import annotations

from typing import Any

import torch

from unicl.backends.engine import accumulation_dtype

#: Norms are clamped here, as ``F.normalize`` does, so a zero row gives a zero vector rather than NaN.
NORM_EPS = 1e-12


class _L2Normalize(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, features: torch.Tensor) -> torch.Tensor:
        acc = accumulation_dtype(features.dtype)
        norms = torch.linalg.vector_norm(features, dim=-1, keepdim=True, dtype=acc).clamp_min_(NORM_EPS)
        unit = (features.to(acc) / norms).to(features.dtype)
        ctx.save_for_backward(unit, norms)
        return unit

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        unit, norms = ctx.saved_tensors
        acc = norms.dtype
        unit_acc, grad_acc = unit.to(acc), grad.to(acc)
        along = torch.linalg.vecdot(unit_acc, grad_acc).unsqueeze(-1)
        return torch.addcmul(grad_acc, unit_acc, along, value=-1).div_(norms).to(grad.dtype)


def normalize_features(features: torch.Tensor) -> torch.Tensor:
    """L2-normalise rows, with the norm computed in the accumulation dtype, returning the input dtype.

    Args:
        features: ``[N, D]``.

    Returns:
        ``[N, D]`` unit rows (zero rows stay zero), same dtype.
    """
    return _L2Normalize.apply(features)
