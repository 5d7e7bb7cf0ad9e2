"""WiSE-FT (Wortsman et al., CVPR 2022, "Robust fine-tuning of zero-shot models"): the weight-space ensemble of a
zero-shot model and its fine-tuned version, ``θ(α) = (1 − α)·θ_initial + α·θ_fine-tuned``.

`check_interpolable` refuses two models that are not one architecture; `interpolate_weights` mixes their state
dicts; `interpolated_model` returns a model with the mixed weights. The command ``python -m unicl.evaluate wise-ft``
evaluates one model per mixing coefficient and tabulates them (`wise_ft_rows`, `write_wise_ft_tables`).
"""

from __future__ import annotations

import copy
import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

#: The fine-tuned model's class, which the mixed model has.
Model = TypeVar("Model", bound=nn.Module)


def _check_alpha(alpha: object) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha):
        raise ValueError(f"alpha must be a finite number; got {alpha!r}")
    return float(alpha)


def check_interpolable(
    initial: nn.Module | Mapping[str, torch.Tensor], fine_tuned: nn.Module | Mapping[str, torch.Tensor]
) -> None:
    """Stop unless ``initial`` and ``fine_tuned`` are one architecture: the same model class (for modules) and the
    same tensor names, shapes and dtypes.

    Args:
        initial: the zero-shot model, or its state dict.
        fine_tuned: the fine-tuned model, or its state dict.

    Raises:
        ValueError: in one line, the first difference: the classes, the names only one has (up to three of each),
            or the first tensor whose shape or dtype differs.
    """
    if type(initial) is not type(fine_tuned) and (isinstance(initial, nn.Module) or isinstance(fine_tuned, nn.Module)):
        raise ValueError(
            f"the models are not one architecture: {type(initial).__name__} and {type(fine_tuned).__name__}"
        )
    if isinstance(initial, nn.Module):
        initial = initial.state_dict()
    if isinstance(fine_tuned, nn.Module):
        fine_tuned = fine_tuned.state_dict()
    only_initial = [name for name in initial if name not in fine_tuned]
    only_fine_tuned = [name for name in fine_tuned if name not in initial]
    if only_initial or only_fine_tuned:
        raise ValueError(
            "the models have different tensors: only the initial has "
            f"{only_initial[:3] or 'none'}{' ...' if len(only_initial) > 3 else ''}, only the fine-tuned has "
            f"{only_fine_tuned[:3] or 'none'}{' ...' if len(only_fine_tuned) > 3 else ''}"
        )
    for name, tensor in initial.items():
        other = fine_tuned[name]
        if tensor.shape != other.shape or tensor.dtype != other.dtype:
            raise ValueError(
                f"the models' {name!r} differ: {tuple(tensor.shape)} {tensor.dtype} in the initial, "
                f"{tuple(other.shape)} {other.dtype} in the fine-tuned"
            )


def interpolate_weights(
    initial: Mapping[str, torch.Tensor], fine_tuned: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """The WiSE-FT weights ``(1 − α)·θ_initial + α·θ_fine-tuned`` of two state dicts of one architecture.

    Every floating-point tensor (parameters and float buffers) is mixed, computed in float32 at least (float64
    stays float64) and rounded once to its dtype; every other tensor (integer buffers such as BatchNorm's
    ``num_batches_tracked``) is the fine-tuned's. ``alpha = 0`` gives the initial weights and ``alpha = 1`` the
    fine-tuned ones, bit for bit; values outside ``[0, 1]`` extrapolate.

    Args:
        initial: ``θ_initial``, the zero-shot model's state dict (tensors of any shape and float dtype).
        fine_tuned: ``θ_fine-tuned``, with the same names, shapes and dtypes.
        alpha: the mixing coefficient ``α``, a finite number.

    Returns:
        A new state dict: each tensor with its name, shape, dtype and device in ``fine_tuned``.

    Raises:
        ValueError: a non-finite ``alpha``, or state dicts of two architectures (`check_interpolable`).

    Examples:
        >>> import torch
        >>> mixed = interpolate_weights({"w": torch.zeros(2)}, {"w": torch.tensor([4.0, 8.0])}, alpha=0.25)
        >>> mixed["w"].tolist()
        [1.0, 2.0]
    """
    alpha = _check_alpha(alpha)
    check_interpolable(initial, fine_tuned)
    mixed = {}
    for name, tuned in fine_tuned.items():
        if not tuned.is_floating_point():
            mixed[name] = tuned.detach().clone()
            continue
        wide = torch.promote_types(tuned.dtype, torch.float32)
        start = initial[name].detach().to(device=tuned.device, dtype=wide)
        # (1 − α)·a + α·b, not a + α·(b − a): exact at both ends (1·a + 0·b is a, 0·a + 1·b is b).
        mixed[name] = ((1 - alpha) * start + alpha * tuned.detach().to(wide)).to(tuned.dtype)
    return mixed


def interpolated_model(initial: nn.Module, fine_tuned: Model, alpha: float) -> Model:
    """A copy of ``fine_tuned`` holding the WiSE-FT weights ``(1 − α)·θ_initial + α·θ_fine-tuned``
    (`interpolate_weights`); the two models are left as they were.

    Args:
        initial: the zero-shot model.
        fine_tuned: the fine-tuned model, of the same class with the same tensors; the copy keeps its configuration
            and its tensors that are not in the state dict.
        alpha: the mixing coefficient, a finite number.

    Raises:
        ValueError: a non-finite ``alpha``, or models of two architectures (`check_interpolable`).
    """
    check_interpolable(initial, fine_tuned)
    mixed = interpolate_weights(initial.state_dict(), fine_tuned.state_dict(), alpha)
    model = copy.deepcopy(fine_tuned)
    model.load_state_dict(mixed)
    return model


def wise_ft_rows(results: Sequence[tuple[float, Mapping[str, float]]]) -> tuple[list[str], list[list[Any]]]:
    """The WiSE-FT table: one row per coefficient, a column per score.

    Args:
        results: ``(alpha, {column: score})`` per coefficient, in the order to show; the columns are those of the
            first, then any new ones of the others.

    Returns:
        ``(columns, rows)``: ``["alpha", *score columns]`` and each row's values (``None`` where a score is
        missing).
    """
    columns: list[str] = []
    for _, scores in results:
        columns += [name for name in scores if name not in columns]
    rows = [[alpha, *(scores.get(name) for name in columns)] for alpha, scores in results]
    return ["alpha", *columns], rows


def write_wise_ft_tables(
    results: Sequence[tuple[float, Mapping[str, float]]], output: Path, details: Mapping[str, Any]
) -> dict[str, Path]:
    """Write the WiSE-FT table to ``output``: ``wise_ft.csv`` (scores as fractions), ``wise_ft.md`` (scores in
    percent) and ``wise_ft.json`` (the rows and ``details``: what was mixed and how it was scored).

    Args:
        results: ``(alpha, {column: score in [0, 1]})`` per coefficient (`wise_ft_rows`).
        output: the directory (created).
        details: written into the JSON beside the rows.

    Returns:
        ``{"csv": path, "markdown": path, "json": path}``.
    """
    output.mkdir(parents=True, exist_ok=True)
    columns, rows = wise_ft_rows(results)
    paths = {"csv": output / "wise_ft.csv", "markdown": output / "wise_ft.md", "json": output / "wise_ft.json"}
    with paths["csv"].open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows([["" if value is None else value for value in row] for row in rows])
    lines = [
        "| " + " | ".join(["α", *(f"{name} (%)" for name in columns[1:])]) + " |",
        "|" + "---:|" * len(columns),
    ]
    for alpha, *scores in rows:
        shown = ["" if score is None else f"{100 * score:.2f}" for score in scores]
        lines.append("| " + " | ".join([f"{alpha:g}", *shown]) + " |")
    paths["markdown"].write_text("\n".join(lines) + "\n")
    table = [dict(zip(columns, row)) for row in rows]
    paths["json"].write_text(json.dumps({**details, "rows": table}, indent=1) + "\n")
    return paths
