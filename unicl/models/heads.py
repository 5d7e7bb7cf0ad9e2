"""Projection heads from a tower's features into the shared embedding space."""

from __future__ import annotations

from torch import nn

from unicl._checks import check_choice

PROJECTIONS = ("linear", "mlp")


def projection_head(in_features: int, embed_dim: int, kind: str = "linear") -> nn.Module:
    """A bias-free linear map (UniCL's choice) or a two-layer MLP with GELU.

    Args:
        in_features: the tower's feature width.
        embed_dim: the shared embedding width.
        kind: ``"linear"`` or ``"mlp"`` (hidden width ``in_features``).
    """
    check_choice("projection", kind, PROJECTIONS)
    if kind == "linear":
        return nn.Linear(in_features, embed_dim, bias=False)
    return nn.Sequential(nn.Linear(in_features, in_features), nn.GELU(), nn.Linear(in_features, embed_dim, bias=False))
