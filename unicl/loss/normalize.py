"""Row L2-normalisation: the inverse norms, the normalisation itself, and the chain rule back through it.

This is the one place the loss normalises. The memory-efficient backends never normalise a copy of the features:
they scale the similarity tiles by the inverse norms ``a`` (see `unicl.loss.engine.Similarity`) and turn the
gradient back with `unit_grad_to_input_`, in place. `normalize_features` (used by the dense backend) shares both.
"""

from __future__ import annotations

from typing import Any

import torch

from unicl.loss.dtypes import accumulation_dtype
from unicl.loss.row_dots import row_dots

#: Norms are clamped here, as ``F.normalize`` does, so a zero row gives a zero vector rather than NaN.
NORM_EPS = 1e-12


def inverse_norms(features: torch.Tensor) -> torch.Tensor:
    """``a_i = 1 / max(‖x_i‖, NORM_EPS)`` in the accumulation dtype.

    Args:
        features: ``[N, D]``.

    Returns:
        ``[N]``.
    """
    acc = accumulation_dtype(features.dtype)
    # Out of place, so that the result can be differentiated (the dense backend's second derivatives); the two
    # extra [N] vectors are nothing next to the features.
    return torch.linalg.vector_norm(features, dim=-1, dtype=acc).clamp_min(NORM_EPS).reciprocal()


def unit_grad_to_input_(
    grad: torch.Tensor, features: torch.Tensor, inverse_norm: torch.Tensor, dots: torch.Tensor | None = None
) -> torch.Tensor:
    """In place, the chain rule through ``u = a·x``: ``a·(g − u·⟨u, g⟩) = a·g − a²·⟨x, a·g⟩·x``.

    Args:
        grad: ``[N, D]`` ``a·g`` (``g = ∂L/∂u``) in the accumulation dtype; overwritten with ``∂L/∂x``.
        features: ``[N, D]`` the unnormalised ``x``.
        inverse_norm: ``[N]`` ``a``, from `inverse_norms`.
        dots: ``[N]`` ``⟨x, a·g⟩`` when the caller already has them (left unchanged), else ``None``.

    Returns:
        ``grad``.
    """
    along = row_dots(features, grad) if dots is None else dots.clone()
    along.mul_(inverse_norm).mul_(inverse_norm)
    return grad.addcmul_(features, along[:, None], value=-1)


class _L2Normalize(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, features: torch.Tensor) -> torch.Tensor:
        inverse_norm = inverse_norms(features)
        ctx.save_for_backward(features, inverse_norm)
        return (features.to(inverse_norm.dtype) * inverse_norm[:, None]).to(features.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        features, inverse_norm = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph=True: the same chain rule out of place, with the norm recomputed from the features, so
            # the result can be differentiated again (the dense backend supports second derivatives).
            x = features.to(inverse_norm.dtype)
            a = inverse_norms(x)[:, None]
            unit, g = x * a, grad.to(inverse_norm.dtype)
            return (a * (g - unit * (unit * g).sum(-1, keepdim=True))).to(grad.dtype)
        scaled = grad.to(inverse_norm.dtype) * inverse_norm[:, None]
        return unit_grad_to_input_(scaled, features, inverse_norm).to(grad.dtype)


def normalize_features(features: torch.Tensor) -> torch.Tensor:
    """L2-normalise rows, with the norm computed in the accumulation dtype, returning the input dtype.

    The backward is ``∂x = a·(g − u·⟨u, g⟩)`` with one ``[N, D]`` result and no other ``[N, D]`` temporary
    (``F.normalize`` differentiates as a division by a norm and keeps several).

    Args:
        features: ``[N, D]``.

    Returns:
        ``[N, D]`` unit rows (zero rows stay zero), same dtype.
    """
    return _L2Normalize.apply(features)
