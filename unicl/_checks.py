"""Argument checks shared across the package, and the error format of the commands.

Every check raises ``TypeError`` or ``ValueError`` with a message that names the argument and says what was expected.
None of them reads a tensor's values from an accelerator, so they never add a host-device synchronisation.

This module imports no torch at module level: the commands import it before they parse their arguments, and
``--help`` must answer without loading torch, which takes seconds. The tensor checks import torch when they run (by
then the caller, which holds tensors, has loaded it: the import statement is a dictionary lookup).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, NoReturn, TypeVar

if TYPE_CHECKING:
    import torch

_Kind = TypeVar("_Kind")


def check_instance(name: str, value: object, kind: type[_Kind]) -> _Kind:
    """Return ``value`` if it is a ``kind`` (an options object such as `unicl.evaluation.InferenceOptions`), else
    raise ``TypeError`` naming ``name``."""
    if not isinstance(value, kind):
        raise TypeError(f"{name} must be {_article(kind.__name__)} {kind.__name__}; got {type(value).__name__}")
    return value


def _article(word: str) -> str:
    # A name that starts as an initialism ("L2Search") is read letter by letter: the letter's name decides.
    spelled = len(word) > 1 and not word[1].islower()
    return "an" if word[:1].upper() in ("AEFHILMNORSX" if spelled else "AEIOU") else "a"


def check_choice(name: str, value: object, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise ``ValueError`` listing them."""
    options = tuple(choices)
    if not isinstance(value, str) or value not in options:
        raise ValueError(f"{name} must be one of {', '.join(repr(c) for c in options)}; got {value!r}")
    return value


def check_optional_positive_int(name: str, value: object, *, minimum: int = 1) -> int | None:
    """Return ``value`` if it is ``None`` or an ``int`` of at least ``minimum``."""
    return None if value is None else check_positive_int(name, value, minimum=minimum)


def check_positive_int(name: str, value: object, *, minimum: int = 1) -> int:
    """Return ``value`` if it is an ``int`` of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}; got {type(value).__name__} {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}; got {value}")
    return value


def check_features(name: str, features: object, allow_no_rows: bool = False) -> torch.Tensor:
    """Check that ``features`` is a non-empty floating-point matrix ``[N, D]`` (``N = 0`` allowed with
    ``allow_no_rows``, as one rank's share of a distributed batch may be)."""
    import torch

    if not isinstance(features, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [N, D]; got {type(features).__name__}")
    if features.dim() != 2:
        raise ValueError(f"{name} must be 2-D [N, D]; got shape {tuple(features.shape)}")
    if features.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64; got {features.dtype}")
    if features.shape[1] == 0 or (features.shape[0] == 0 and not allow_no_rows):
        raise ValueError(f"{name} must have at least one row and one column; got shape {tuple(features.shape)}")
    return features


def check_feature_pair(
    image_features: object, text_features: object, allow_no_rows: bool = False, rectangular: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Check both feature matrices and that they agree in shape (in ``D`` only when ``rectangular``: the texts
    have labels of their own), dtype and device."""
    image = check_features("image_features", image_features, allow_no_rows)
    text = check_features("text_features", text_features, allow_no_rows)
    if rectangular and image.shape[1] != text.shape[1]:
        raise ValueError(
            "image_features [N, D] and text_features [M, D] must have the same feature dimension D; "
            f"got {tuple(image.shape)} and {tuple(text.shape)}"
        )
    if not rectangular and image.shape != text.shape:
        raise ValueError(
            "image_features and text_features must have the same shape [N, D] (for M != N texts, give text_labels "
            f"[M]); got {tuple(image.shape)} and {tuple(text.shape)}"
        )
    if image.dtype != text.dtype:
        raise TypeError(
            f"image_features and text_features must have the same dtype; got {image.dtype} and {text.dtype}"
        )
    if image.device != text.device:
        raise ValueError(
            f"image_features and text_features must be on the same device; got {image.device} and {text.device}"
        )
    return image, text


def check_labels(labels: object, num_samples: int, device: torch.device, name: str = "labels") -> torch.Tensor | None:
    """Check that ``labels`` (called ``name`` in the message) is ``None`` or an integer vector ``[N]`` on
    ``device``."""
    if labels is None:
        return None
    import torch

    # The third positional argument is labels, the fourth the scale: a lone float there is most likely the scale.
    scale_hint = (
        "; a single float looks like the logit scale, which comes after labels: pass labels=None (or the labels) "
        "and logit_scale=..."
    )
    if name != "labels":
        scale_hint = ""
    if not isinstance(labels, torch.Tensor):
        hint = scale_hint if isinstance(labels, float) else ""
        raise TypeError(
            f"{name} must be None or an integer torch.Tensor of shape [N]; got {type(labels).__name__}{hint}"
        )
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        hint = scale_hint if labels.is_floating_point() and labels.numel() == 1 else ""
        raise TypeError(f"{name} must have an integer dtype (e.g. torch.long); got {labels.dtype}{hint}")
    if labels.dim() != 1 or labels.shape[0] != num_samples:
        what = "one per text" if name == "text_labels" else "one per sample"
        raise ValueError(f"{name} must have shape [{num_samples}] ({what}); got {tuple(labels.shape)}")
    if labels.device != device:
        raise ValueError(f"{name} must be on the features' device {device}; got {labels.device}")
    return labels


def check_logit_scale(logit_scale: object, device: torch.device) -> torch.Tensor | float:
    """Check that ``logit_scale`` is a finite positive float or a one-element tensor.

    The rule, the same in eager and compiled code: a Python number, a one-element floating-point tensor on the
    features' ``device``, or one on the CPU (which the loss moves to ``device``). A float or a CPU tensor is checked
    for finiteness and sign (a CPU tensor not while ``torch.compile`` traces, when its value is unknown); a tensor
    on an accelerator is not inspected, because reading its value would stall the stream, so a non-positive or
    non-finite value there gives a non-finite or meaningless loss instead of an error.
    """
    return _check_scalar("logit_scale", logit_scale, device, positive=True)


def check_logit_bias(logit_bias: object, device: torch.device) -> torch.Tensor | float:
    """Check that ``logit_bias`` is a finite float or a one-element tensor, by the rule of `check_logit_scale`
    without the sign."""
    return _check_scalar("logit_bias", logit_bias, device, positive=False)


def _check_scalar(name: str, value: object, device: torch.device, positive: bool) -> torch.Tensor | float:
    import torch

    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar (one element); got shape {tuple(value.shape)}")
        if not value.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor; got {value.dtype}")
        if value.device.type == "cpu":
            if not torch.compiler.is_compiling():
                _check_scalar_value(name, float(value.detach()), positive)
        elif value.device != device:
            raise ValueError(f"{name} must be on the features' device {device} or the CPU; got {value.device}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float or a one-element tensor; got {type(value).__name__}")
    _check_scalar_value(name, float(value), positive)
    return float(value)


def _check_scalar_value(name: str, value: float, positive: bool) -> None:
    if positive and not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and > 0; got {value}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite; got {value}")


def first_line(error: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (at most ``limit`` characters), or its type when it has none."""
    lines = str(error).splitlines()
    return lines[0][:limit] if lines and lines[0] else type(error).__name__


def program_name(module: str) -> str:
    """What the user typed to run a command, for its usage and error lines: the installed script's name
    (``unicl-train``) when run as one, else ``python -m <module>``."""
    invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return invoked if invoked.startswith("unicl-") else f"python -m {module}"


class CommandError(SystemExit):
    """A user error of a command, already reported: exit status 2, and ``str()`` is the error line
    ``PROG: error: MESSAGE`` (so a Python caller, or a test, reads what the user read)."""

    def __init__(self, line: str) -> None:
        super().__init__(2)
        self.line = line

    def __str__(self) -> str:
        return self.line


class CommandParser(argparse.ArgumentParser):
    """The commands' parser: every user error, argparse's own and those found after parsing, goes through `error`.

    `error` prints what argparse prints (the usage line, then ``PROG: error: MESSAGE``, on standard error) and raises
    `CommandError` (exit status 2, like argparse's) instead of a bare ``SystemExit(2)``, so the message travels with
    the exit. Sub-commands' parsers (``add_subparsers``) are of the same class.
    """

    def error(self, message: str) -> NoReturn:
        """Report ``message`` in argparse's format and exit with status 2 (raises `CommandError`)."""
        self.print_usage(sys.stderr)
        line = f"{self.prog}: error: {message}"
        self._print_message(line + "\n", sys.stderr)
        raise CommandError(line)


def default_workers() -> int:
    """The commands' ``--workers`` by default: 4, or this machine's CPUs if fewer (more data-loading processes than
    CPUs only slow loading, and torch warns of them)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(4, cpus)
