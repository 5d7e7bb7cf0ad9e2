"""The tokenizer that goes with a model: a saved model's own, a preset's, CLIP's, or a ``tokenizer.json``."""

from __future__ import annotations

import os
from pathlib import Path

from unicl.models.adapters import adapter_tokenizer, is_adapter_name
from unicl.models.files import CONFIG_NAME
from unicl.models.model import UniCLConfig
from unicl.models.presets import TRAINED_TOKENIZER, get_config, list_models, preset_tokenizer
from unicl.models.pretrained import is_pretrained_tag
from unicl.models.serialization import OFFICIAL_SUFFIXES, read_config
from unicl.text.tokenizer import TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, Tokenizer

#: The vocabulary of CLIP's BPE, the only one a saved model without a tokenizer file can have been trained with
#: by this library's defaults.
CLIP_VOCAB_SIZE = 49408


def get_tokenizer(source: str | os.PathLike[str], context_length: int | None = None) -> Tokenizer:
    """The tokenizer a model reads.

    Args:
        source: one of
            - a directory written by ``save_pretrained`` (the training command's ``RUN/final``): the tokenizer saved
              with it; a model directory saved without one is read with CLIP's BPE when its text tower embeds CLIP's
              49,408 ids;
            - a preset name: the tokenizer the preset names (CLIP's BPE for the paper presets);
            - an adapter model name (``open_clip:ARCH``, ``hf:DIR``; `unicl.models.adapters`): the ids its library
              gives (open_clip's ``SimpleTokenizer``, the directory's transformers tokenizer);
            - ``"clip"``: CLIP's BPE, found on this machine (see ``Tokenizer.clip``);
            - a ``tokenizer.json`` file (with the settings of a ``tokenizer_config.json`` beside it when the file is
              named ``tokenizer.json``).

            An existing directory is read as a saved model even when its name is also ``"clip"`` or a preset's.
        context_length: tokens per row; default: the saved setting, the model's text context, or 77.

    Returns:
        The tokenizer.

    Raises:
        FileNotFoundError: ``source`` is none of the above.
        ValueError: a preset whose tokenizer is trained per run (``unicl_tiny``), a model directory with no
            tokenizer that CLIP's BPE cannot be, or unreadable files.
        ImportError: an adapter model whose library is not installed.

    Examples:
        >>> import tempfile, unicl
        >>> from unicl.text.tokenizer import Tokenizer
        >>> model = unicl.create_model("unicl_tiny")
        >>> tokenizer = Tokenizer.train(["a photo of a cat", "a photo of a dog"], vocab_size=300, context_length=16)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     _ = model.save_pretrained(folder, tokenizer=tokenizer)
        ...     unicl.get_tokenizer(folder).vocab_size == tokenizer.vocab_size
        True
    """
    text = str(source)
    path = Path(source)
    if path.is_dir():
        return _saved_tokenizer(path, context_length)
    if is_adapter_name(text):
        return adapter_tokenizer(text, context_length)
    if text == "clip":
        return Tokenizer.clip(context_length or 77)
    if text in list_models():
        if preset_tokenizer(text) == TRAINED_TOKENIZER:
            raise ValueError(
                f"{text}'s tokenizer is trained on each run's own text: pass the run's directory (RUN/final) or a "
                "tokenizer.json, or make one with unicl.text.tokenizer.Tokenizer.train(corpus, ...)"
            )
        return Tokenizer.clip(context_length or get_config(text).text.context_length)
    if path.is_file():
        if (path.parent / TOKENIZER_CONFIG_FILE).is_file() and path.name == TOKENIZER_FILE:
            return Tokenizer.from_pretrained(path.parent, context_length)
        return Tokenizer.from_file(path, context_length or 77)
    raise FileNotFoundError(
        f"tokenizer {text!r} is neither a saved model directory, a preset ({', '.join(list_models())}), 'clip', "
        "nor a tokenizer.json file"
    )


def model_tokenizer(
    model: str | os.PathLike[str],
    pretrained: str | os.PathLike[str] | None = None,
    context_length: int | None = None,
) -> Tokenizer:
    """The tokenizer that goes with a model given as the commands take it (``--model`` and ``--pretrained``).

    Args:
        model: a saved model directory (its own tokenizer, see `get_tokenizer`) or a preset name.
        pretrained: the preset's weights: a ``save_pretrained`` directory or a ``.safetensors`` file carries the
            tokenizer saved with it (in the directory, or beside the file); a released microsoft/UniCL checkpoint
            (its tag in `unicl.list_pretrained`, or a ``.pth``, ``.pt``, ``.bin`` file) reads CLIP's BPE.
        context_length: tokens per row (default: as `get_tokenizer` decides).

    Returns:
        The tokenizer.

    Raises:
        ValueError: pretrained weights of a preset that trains its tokenizer per run (``unicl_tiny``) without the
            tokenizer saved with them, or a preset name alone for such a preset.
        FileNotFoundError: ``model`` is neither a directory nor a preset.
    """
    if Path(model).is_dir() or is_adapter_name(model):
        # An adapter's tokenizer is its library's, whatever its checkpoint file.
        return get_tokenizer(model, context_length)
    if pretrained is not None and not _is_release(pretrained):
        weights = Path(pretrained)
        source = weights if weights.is_dir() else weights.parent
        if (source / TOKENIZER_FILE).is_file():
            return get_tokenizer(source, context_length)
        if str(model) in list_models() and preset_tokenizer(str(model)) == TRAINED_TOKENIZER:
            raise ValueError(
                f"the weights {str(pretrained)!r} have no {TOKENIZER_FILE} with them, and {model}'s tokenizer is "
                "trained per run: give the tokenizer they were trained with"
            )
    return get_tokenizer(model, context_length)


def _is_release(pretrained: str | os.PathLike[str]) -> bool:
    """Whether ``pretrained`` names a released microsoft/UniCL checkpoint (by tag or by file), read with CLIP's BPE."""
    return is_pretrained_tag(pretrained) or Path(pretrained).suffix in OFFICIAL_SUFFIXES


def _saved_tokenizer(directory: Path, context_length: int | None) -> Tokenizer:
    if (directory / TOKENIZER_FILE).is_file():
        # The tokenizer's own saved context wins; a bare tokenizer.json takes the saved model's.
        saved_settings = (directory / TOKENIZER_CONFIG_FILE).is_file()
        if context_length is None and not saved_settings and (directory / CONFIG_NAME).is_file():
            context_length = read_config(directory).text.context_length
        return Tokenizer.from_pretrained(directory, context_length)
    if not (directory / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{str(directory)!r} holds neither a tokenizer.json nor a saved model")
    config = read_config(directory)
    if config.text.vocab_size != CLIP_VOCAB_SIZE:
        raise ValueError(
            f"the model in {str(directory)!r} was saved without its tokenizer and its text tower embeds "
            f"{config.text.vocab_size} ids (not CLIP's {CLIP_VOCAB_SIZE}): pass its tokenizer.json"
        )
    return Tokenizer.clip(context_length or config.text.context_length)


def check_tokenizer_fits(
    tokenizer: Tokenizer, config: UniCLConfig, argument: str = "--tokenizer", model_name: str = "the model"
) -> None:
    """Refuse a tokenizer whose ids the text tower cannot embed (an index error deep in the embedding otherwise).

    Args:
        tokenizer: the tokenizer.
        config: the model's configuration.
        argument: how the user gave the tokenizer, named in the message.
        model_name: the model, named in the message.

    Raises:
        ValueError: more ids than the text tower embeds, or rows longer than its context.
    """
    text = config.text
    if tokenizer.vocab_size > text.vocab_size:
        raise ValueError(
            f"{argument} has {tokenizer.vocab_size} ids but {model_name}'s text tower embeds {text.vocab_size}; "
            "use the model's own tokenizer or a smaller vocabulary"
        )
    if tokenizer.context_length > text.context_length:
        raise ValueError(
            f"{argument} makes rows of {tokenizer.context_length} tokens but {model_name}'s text tower reads at most "
            f"{text.context_length}"
        )
