"""clip_benchmark (LAION's CLIP_benchmark, ``pip install clip-benchmark``) on unicl models.

clip_benchmark loads a model with ``load(model_name, pretrained, cache_dir, device) -> (model, transform,
tokenizer)``, then calls ``tokenizer(list of str) -> [B, L]`` id tensor, ``model.encode_text(ids)`` and
``model.encode_image(images)``, and normalises the features itself. `load_unicl` keeps that contract for a unicl
model: `ClipBenchmarkModel` rebuilds from the ids the attention mask unicl's text tower reads (start..end token, as
`unicl.text.tokenizer.Tokenizer` writes it), and `TokenIds` returns the tokenizer's ids alone.

Its command picks the loader from a dict, ``clip_benchmark.models.TYPE2FUNC``, through ``--model_type``; it has
no plug-in entry point, so `register` adds ``"unicl"`` to that dict (and to ``MODEL_TYPES``, the option's
choices) at run time, in this process only, and this module's command runs clip_benchmark's own command after
registering::

    python -m unicl.evaluation.clip_benchmark eval --model RUN/final --pretrained none \\
        --dataset imagenet1k-unverified --dataset_root DATA --output result.json

``--model`` is a directory written by ``save_pretrained`` (``--pretrained none``) or a preset name with
``--pretrained`` weights; ``--model_type unicl`` is added unless given. Everything else is clip_benchmark's.

clip_benchmark 1.6.2's zero-shot ``accuracy`` calls ``float()`` on a one-element 1-D array, which NumPy 2.4 refuses
(``TypeError: only 0-dimensional arrays can be converted to Python scalars``; LAION-AI/CLIP_benchmark issue 147).
Where it fails so, `fix_clip_benchmark_accuracy` (run by this module's command) puts `top_k_accuracies` in its place,
the same count of targets among the ``k`` largest logits.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from unicl.data.transforms import image_transform
from unicl.models import UniCLModel, check_tokenizer_fits, create_model, load_model, model_tokenizer
from unicl.models.serialization import CONFIG_NAME
from unicl.text.prompts import Templates, check_templates
from unicl.text.tokenizer import Tokenizer

#: The ``--model_type`` the unicl loader is registered under.
MODEL_TYPE = "unicl"
#: ``pretrained`` values that mean "no weights file" (clip_benchmark's option always has a value).
NO_WEIGHTS = ("", "none")
PROG = "python -m unicl.evaluation.clip_benchmark"


class TokenIds:
    """clip_benchmark's tokenizer: texts to the ``[B, L]`` int64 ids of a unicl `Tokenizer` (its mask dropped; the
    model adapter rebuilds it).

    Args:
        tokenizer: the model's tokenizer.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer

    @property
    def end_id(self) -> int:
        """The end-of-text id, where the attention mask ends."""
        return self.tokenizer.end_id

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        """``B`` texts (or one) to ``[B, L]`` ids."""
        return self.tokenizer(texts)["input_ids"]


def attention_mask_from_ids(input_ids: torch.Tensor, end_id: int) -> torch.Tensor:
    """The mask unicl's tokenizer writes with ``input_ids``: 1 from the start through each row's first ``end_id``.

    The ids alone fix it: a unicl `Tokenizer` writes start, text, end and then padding, and keeps the end token when it
    truncates, so every row holds ``end_id``. (Padding ids cannot mark the end: CLIP's BPE pads with 0, also the id of
    ``"!"``.)

    Args:
        input_ids: ``[B, L]`` ids.
        end_id: the end-of-text id.

    Returns:
        ``[B, L]`` int64.

    Raises:
        ValueError: ids that are not ``[B, L]``, or a row without ``end_id`` (not written by that tokenizer).
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError(f"input_ids must be a [B, L] tensor; got {getattr(input_ids, 'shape', input_ids)!r}")
    is_end = input_ids == end_id
    has_end = is_end.any(dim=1)
    if not bool(has_end.all()):
        row = int((~has_end).nonzero()[0, 0])
        raise ValueError(
            f"row {row} of input_ids has no end-of-text id {end_id}; tokenize with the tokenizer load_unicl returns"
        )
    first_end = is_end.int().argmax(dim=1)  # the first maximum: the first end token
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    return (positions[None, :] <= first_end[:, None]).long()


class ClipBenchmarkModel(nn.Module):
    """A `UniCLModel` with open_clip's calls, as clip_benchmark makes them.

    Args:
        model: the unicl model (``self.model``).
        end_id: the tokenizer's end-of-text id, for `attention_mask_from_ids`.
    """

    def __init__(self, model: UniCLModel, end_id: int) -> None:
        super().__init__()
        self.model = model
        self.end_id = end_id

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """``[B, 3, S, S]`` images to ``[B, D]`` embeddings (unit rows when ``normalize``; clip_benchmark normalises
        them itself, as with open_clip, whose default this keeps)."""
        return self.model.encode_image(images, normalize=normalize)

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        """``[B, L]`` ids from `TokenIds` to ``[B, D]`` embeddings, with the mask unicl's tokenizer writes."""
        mask = attention_mask_from_ids(text, self.end_id)
        return self.model.encode_text(text, mask, normalize=normalize)

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        """The unicl model's forward on images and `TokenIds` ids."""
        return self.model(images, text, attention_mask_from_ids(text, self.end_id))


def _weights(pretrained: str | None) -> str | None:
    return None if pretrained is None or pretrained.strip().lower() in NO_WEIGHTS else pretrained


def load_unicl(
    model_name: str,
    pretrained: str | None = None,
    cache_dir: str | None = None,
    device: str | torch.device = "cpu",
) -> tuple[ClipBenchmarkModel, Callable[[Any], torch.Tensor], TokenIds]:
    """clip_benchmark's loader contract for unicl models.

    Args:
        model_name: a directory written by ``save_pretrained`` (the training command's ``RUN/final``), or a preset
            name (`unicl.list_models`).
        pretrained: for a preset, its weights: a microsoft/UniCL ``.pth``, a unicl ``.safetensors`` or a saved
            model directory; ``None``, ``""`` or ``"none"``: a saved directory ``model_name`` (which holds its
            weights), or a preset's random initialisation.
        cache_dir: not used (nothing is downloaded); there for the contract.
        device: where the model goes.

    Returns:
        ``(model, transform, tokenizer)``: a `ClipBenchmarkModel` in eval mode on ``device``, the model's evaluation
        transform (`unicl.image_transform`) and `TokenIds` over the model's tokenizer (`unicl.models.model_tokenizer`):
        the one saved with the model directory ``model_name``, or with the ``pretrained`` weights (in their directory
        or beside their ``.safetensors`` file), else the preset's.

    Raises:
        ValueError: weights given with a saved directory ``model_name``, weights that do not fit, a tokenizer that
            does not fit the text tower, or a preset whose tokenizer is trained per run without a saved directory.
        FileNotFoundError: no such preset, directory or weights file.
    """
    del cache_dir
    weights = _weights(pretrained)
    if Path(model_name).is_dir():
        if not (Path(model_name) / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"model {model_name!r} is a directory without a saved model ({CONFIG_NAME})")
        if weights is not None:
            raise ValueError(
                f"model {model_name!r} is a saved model directory with its weights: pass pretrained 'none', not "
                f"{pretrained!r} (weights go with a preset name)"
            )
        model = load_model(model_name)
    else:
        model = create_model(model_name, pretrained=weights)
    tokenizer = model_tokenizer(model_name, weights)
    source = model_name if weights is None else f"{model_name} with {weights}"
    check_tokenizer_fits(tokenizer, model.config, argument=f"the tokenizer of {source!r}", model_name=model_name)
    adapted = ClipBenchmarkModel(model, tokenizer.end_id).to(device).eval()
    return adapted, image_transform(model), TokenIds(tokenizer)


def clip_benchmark_templates(templates: Templates) -> list[str] | dict[str, list[str]]:
    """unicl templates (``"a photo of a {}."``) in clip_benchmark's form (``"a photo of a {c}."``), for its
    ``--custom_template_file`` or ``zero_shot_classifier``; a per-class mapping of complete prompts stays as it is.

    Raises:
        ValueError: a template without exactly one ``{}`` (see `unicl.text.prompts.check_templates`).
    """
    if isinstance(templates, Mapping):
        return {name: list(prompts) for name, prompts in templates.items()}
    return [template.replace("{}", "{c}") for template in check_templates(templates)]


def top_k_accuracies(logits: torch.Tensor, targets: torch.Tensor, topk: Sequence[int] = (1,)) -> list[float]:
    """clip_benchmark's zero-shot accuracy: for each ``k``, the fraction of rows whose target is among the ``k``
    largest logits, ranked by ``torch.topk`` as theirs is (ties fall as ``topk`` orders them; not
    `unicl.evaluation.metrics.top_k_accuracy`, which credits ties by their expectation).

    Args:
        logits: ``[N, C]``.
        targets: ``[N]`` class ids.
        topk: the ``k`` values.

    Returns:
        One accuracy per ``k``.
    """
    ranked = logits.topk(max(topk), dim=1).indices
    hits = ranked == targets.to(ranked.device)[:, None]
    return [int(hits[:, :k].any(dim=1).sum()) / len(targets) for k in topk]


def fix_clip_benchmark_accuracy() -> bool:
    """Put `top_k_accuracies` in place of clip_benchmark's zero-shot ``accuracy`` if that raises on a tiny
    example (its NumPy 2.4 failure, see the module docstring), in this process only.

    Returns:
        Whether it was replaced.

    Raises:
        ModuleNotFoundError: clip_benchmark is not installed.
    """
    from clip_benchmark.metrics import zeroshot_classification

    try:
        zeroshot_classification.accuracy(torch.tensor([[0.0, 1.0]]), torch.tensor([1]), topk=(1,))
    except TypeError:
        zeroshot_classification.accuracy = top_k_accuracies
        return True
    return False


def register(name: str = MODEL_TYPE) -> None:
    """Make clip_benchmark's ``--model_type name`` (and ``load_clip(name, ...)``) load unicl models, in this process.

    Raises:
        ModuleNotFoundError: clip_benchmark is not installed.
    """
    import clip_benchmark.models as registry

    registry.TYPE2FUNC[name] = _load_for_command
    if name not in registry.MODEL_TYPES:
        registry.MODEL_TYPES.append(name)  # the list object the command's --model_type choices were built from


def _load_for_command(
    model_name: str, pretrained: str | None = None, cache_dir: str | None = None, device: str | torch.device = "cpu"
) -> tuple[ClipBenchmarkModel, Callable[[Any], torch.Tensor], TokenIds]:
    # The command's user gets one line for our errors, not a traceback through clip_benchmark.
    try:
        return load_unicl(model_name, pretrained, cache_dir, device)
    except (ValueError, FileNotFoundError) as error:
        raise SystemExit(f"{PROG}: error: --model {model_name} --pretrained {pretrained}: {error}") from None


def main(argv: list[str] | None = None) -> None:
    """Run clip_benchmark's command (``eval ...``, ``build ...``) with the unicl loader registered.

    ``--model_type unicl`` is added to ``eval`` unless a model type is given.
    """
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        import clip_benchmark.cli
    except ModuleNotFoundError:
        raise SystemExit(f"{PROG}: error: clip_benchmark is not installed (pip install clip-benchmark)") from None
    register()
    fix_clip_benchmark_accuracy()
    if arguments[:1] == ["eval"] and not any(a == "--model_type" or a.startswith("--model_type=") for a in arguments):
        arguments += ["--model_type", MODEL_TYPE]
    saved = sys.argv
    sys.argv = [PROG, *arguments]  # clip_benchmark's main parses sys.argv
    try:
        clip_benchmark.cli.main()
    finally:
        sys.argv = saved


if __name__ == "__main__":
    main()
