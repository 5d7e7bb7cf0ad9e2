"""An independent float64 statement of the UniCL objective, written from the paper's definition.

It builds the target matrix straight from the labels (not from :mod:`unicl.targets`) and loops over rows and
columns, so a mistake in the library's algebra cannot hide behind the same mistake here.
"""

from __future__ import annotations

import torch


def reference_targets(labels: list[int]) -> torch.Tensor:
    """``T_ij = 1`` when ``y_i == y_j >= 0`` or ``i == j``."""
    n = len(labels)
    return torch.tensor(
        [[float(i == j or (labels[i] == labels[j] and labels[i] >= 0)) for j in range(n)] for i in range(n)],
        dtype=torch.float64,
    )


def reference_terms(
    image: torch.Tensor,
    text: torch.Tensor,
    labels: list[int] | None,
    scale: torch.Tensor | float,
    normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(l_i2t [N], l_t2i [N])`` in float64, differentiable by autograd."""
    image, text = image.double(), text.double()
    if normalize:
        image = image / image.norm(dim=1, keepdim=True)
        text = text / text.norm(dim=1, keepdim=True)
    n = image.shape[0]
    labels = list(range(-1, -n - 1, -1)) if labels is None else labels
    targets = reference_targets(labels)
    logits = scale * image @ text.T
    i2t = []
    t2i = []
    for k in range(n):
        row, row_targets = logits[k], targets[k]
        i2t.append(
            torch.log(torch.exp(row - row.max()).sum()) + row.max() - (row * row_targets).sum() / row_targets.sum()
        )
        col, col_targets = logits[:, k], targets[:, k]
        t2i.append(
            torch.log(torch.exp(col - col.max()).sum()) + col.max() - (col * col_targets).sum() / col_targets.sum()
        )
    return torch.stack(i2t), torch.stack(t2i)


def reference_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    labels: list[int] | None,
    scale: torch.Tensor | float,
    reduction: str = "mean",
    normalize: bool = True,
) -> torch.Tensor:
    """The reduced reference loss."""
    i2t, t2i = reference_terms(image, text, labels, scale, normalize)
    if reduction == "mean":
        return (i2t.mean() + t2i.mean()) / 2
    if reduction == "sum":
        return (i2t.sum() + t2i.sum()) / 2
    return (i2t + t2i) / 2


def clip_loss(image: torch.Tensor, text: torch.Tensor, scale: float) -> torch.Tensor:
    """The CLIP loss as open_clip writes it: cross-entropy against the diagonal in both directions."""
    image = torch.nn.functional.normalize(image.double(), dim=1)
    text = torch.nn.functional.normalize(text.double(), dim=1)
    logits = scale * image @ text.T
    target = torch.arange(image.shape[0])
    return (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)) / 2


def plain_loss(image: torch.Tensor, text: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The loss as a user would write it in plain PyTorch, every op in the input dtype: the error baseline."""
    image = torch.nn.functional.normalize(image, dim=1)
    text = torch.nn.functional.normalize(text, dim=1)
    logits = scale * image @ text.T
    same = (labels[:, None] == labels[None, :]) & (labels[:, None] >= 0)
    targets = (same | torch.eye(len(labels), dtype=torch.bool, device=labels.device)).to(image.dtype)
    row = torch.logsumexp(logits, 1) - (targets * logits).sum(1) / targets.sum(1)
    col = torch.logsumexp(logits, 0) - (targets * logits).sum(0) / targets.sum(0)
    return (row.mean() + col.mean()) / 2


def assert_error_within_baseline(got, baseline, exact, slack: float, floor: float = 0.0) -> None:
    """``|got − exact| <= slack·|baseline − exact| + 16·eps32·|exact| + floor``, as maxima, for tensors or tuples."""
    pairs = zip(got, baseline, exact) if isinstance(got, (tuple, list)) else [(got, baseline, exact)]
    eps = torch.finfo(torch.float32).eps
    for value, plain, want in pairs:
        want = want.double()
        error = (value.double() - want).abs().max()
        allowed = slack * (plain.double() - want).abs().max() + 16 * eps * want.abs().max() + floor
        assert error <= allowed, f"error {error:.3e} > allowed {allowed:.3e}"
