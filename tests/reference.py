"""An independent float64 statement of the UniCL objective, written from the paper's definition.

It builds the whole target matrix straight from the labels (not from :mod:`unicl.loss.targets`, which never forms it)
and reduces the full ``N × N`` logits, so a mistake in the library's algebra (per-class sums, tiles, merged
partials) cannot hide behind the same mistake here.
"""

from __future__ import annotations

import torch


def reference_targets(labels: list[int]) -> torch.Tensor:
    """``T_ij = 1`` when ``y_i == y_j >= 0`` or ``i == j``."""
    y = torch.tensor(labels, dtype=torch.int64).reshape(-1)
    same_class = (y[:, None] == y[None, :]) & (y[:, None] >= 0)
    return (same_class | torch.eye(len(y), dtype=torch.bool)).to(torch.float64)


def _unit_pairs_and_targets(image, text, labels, normalize):
    """The features in float64 (divided by their norms when ``normalize``) and the square ``T``; ``labels=None``
    makes every pair unique."""
    image, text = image.double(), text.double()
    if normalize:
        image = image / image.norm(dim=1, keepdim=True)
        text = text / text.norm(dim=1, keepdim=True)
    n = image.shape[0]
    return image, text, reference_targets(list(range(-1, -n - 1, -1)) if labels is None else labels)


def reference_terms(
    image: torch.Tensor,
    text: torch.Tensor,
    labels: list[int] | None,
    scale: torch.Tensor | float,
    normalize: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(l_i2t [N], l_t2i [N])`` in float64, differentiable by autograd: each row's (column's) log-sum-exp of
    ``S`` minus the mean of its positive logits, with ``T`` built entry by entry from the labels."""
    image, text, targets = _unit_pairs_and_targets(image, text, labels, normalize)
    logits = scale * image @ text.T
    i2t = torch.logsumexp(logits, 1) - (logits * targets).sum(1) / targets.sum(1)
    t2i = torch.logsumexp(logits, 0) - (logits * targets).sum(0) / targets.sum(0)
    return i2t, t2i


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


#: Fixed relative bounds against float64 computed from the same rounded inputs: ``(loss, gradients)`` per dtype.
#: The library accumulates every dtype in float32, so these hold at any batch size; a kernel that is wrong by more
#: than float32 (or half-precision operand) rounding fails them.
RELATIVE_BOUNDS = {
    torch.float32: (1e-5, 1e-4),
    torch.bfloat16: (1e-4, 1e-2),
    torch.float16: (1e-4, 1e-2),
}


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """``‖got − want‖_F / ‖want‖_F`` in float64 (the absolute error where ``want`` is zero)."""
    got, want = got.detach().double(), want.detach().double()
    norm = float(torch.linalg.vector_norm(want))
    error = float(torch.linalg.vector_norm(got - want))
    return error / norm if norm > 0 else error


def assert_relative_close(got: torch.Tensor, want: torch.Tensor, bound: float, what: str = "value") -> None:
    """``relative_error(got, want) <= bound``, with the figures in the message."""
    error = relative_error(got, want)
    assert error <= bound, f"{what}: relative error {error:.3e} > {bound:.0e}"


def assert_matches_float64(got, exact, dtype: torch.dtype, names=("loss", "grad image", "grad text", "grad scale")):
    """``got = (loss, *grads)`` against ``exact`` (float64 from the same rounded inputs) within
    :data:`RELATIVE_BOUNDS` of ``dtype``."""
    loss_bound, grad_bound = RELATIVE_BOUNDS[dtype]
    for index, (value, want) in enumerate(zip(got, exact, strict=True)):
        name = names[index] if index < len(names) else f"output {index}"
        assert_relative_close(value, want, loss_bound if index == 0 else grad_bound, name)


def float64_loss_and_grads(image, text, labels, scale, reduction="mean", upstream=None, normalize=True):
    """The float64 reference loss and its gradients ``(loss, d image, d text, d scale)`` at the same rounded inputs
    (``image``, ``text`` and ``scale`` are cast exactly to float64)."""
    exact_in = [image.detach().double().requires_grad_(), text.detach().double().requires_grad_()]
    exact_scale = torch.as_tensor(scale).detach().double().requires_grad_()
    keys = None if labels is None else torch.as_tensor(labels).tolist()
    value = reference_loss(*exact_in, keys, exact_scale, reduction=reduction, normalize=normalize)
    weighted = value if upstream is None else (value * upstream.double()).sum()
    return (value, *torch.autograd.grad(weighted.sum(), [*exact_in, exact_scale]))


def reference_sigmoid_terms(
    image: torch.Tensor,
    text: torch.Tensor,
    labels: list[int] | None,
    scale: torch.Tensor | float,
    bias: torch.Tensor | float,
    normalize: bool = True,
) -> torch.Tensor:
    """``ℓ [N]`` in float64, differentiable by autograd: each image's ``−Σ_j log σ(t_ij·Z_ij)`` with
    ``Z = s·Û V̂ᵀ + b`` and ``t = 2T − 1``, ``T`` built entry by entry from the labels."""
    image, text, targets = _unit_pairs_and_targets(image, text, labels, normalize)
    signs = 2 * targets - 1
    logits = scale * image @ text.T + bias
    return -torch.nn.functional.logsigmoid(signs * logits).sum(1)


def reference_sigmoid_loss(image, text, labels, scale, bias, reduction="mean", normalize=True) -> torch.Tensor:
    """The reduced reference sigmoid loss: ``Σ ℓ / N``, ``Σ ℓ`` or ``ℓ``."""
    terms = reference_sigmoid_terms(image, text, labels, scale, bias, normalize)
    return {"mean": terms.mean, "sum": terms.sum}.get(reduction, lambda: terms)()


def reference_rectangular_loss(image, text, labels, text_labels, scale, bias=None, reduction="mean"):
    """Either objective for ``N`` images and ``M`` texts in float64, written from the rule
    ``T_ij = [labels_i == text_labels_j >= 0]``: the softmax loss when ``bias`` is ``None`` (each direction's mean
    over the rows or columns that have a positive; ``"none"``: row terms then column terms, NaN where there is no
    positive), else the sigmoid loss (every pair a term, the mean over the ``N`` images)."""
    image = image.double() / image.double().norm(dim=1, keepdim=True)
    text = text.double() / text.double().norm(dim=1, keepdim=True)
    y, z = torch.tensor(labels).reshape(-1), torch.tensor(text_labels).reshape(-1)
    targets = ((y[:, None] == z[None, :]) & (y[:, None] >= 0)).double()
    logits = scale * image @ text.T
    if bias is not None:
        terms = -torch.nn.functional.logsigmoid((2 * targets - 1) * (logits + bias)).sum(1)
        return {"mean": terms.mean, "sum": terms.sum}.get(reduction, lambda: terms)()
    directions = []
    for dim in (1, 0):
        count = targets.sum(dim)
        has = count > 0
        positive_mean = (targets * logits).sum(dim) / torch.where(has, count, 1)
        directions.append((torch.logsumexp(logits, dim) - positive_mean, has))
    if reduction == "none":
        return torch.cat([torch.where(has, terms, torch.nan) for terms, has in directions])
    sums = [terms[has].sum() for terms, has in directions]
    if reduction == "sum":
        return (sums[0] + sums[1]) / 2
    return sum(total / max(int(has.sum()), 1) for total, (_, has) in zip(sums, directions)) / 2


def label_case(kind: str, n: int, seed: int = 0) -> list[int] | None:
    """Labels of each kind the issue names: none, all pairs, one class, and a mix of classes and pairs."""
    if kind == "none":
        return None
    if kind == "pairs":
        return [-1] * n
    if kind == "one class":
        return [4] * n
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(-2, 4, (n,), generator=generator).tolist()
