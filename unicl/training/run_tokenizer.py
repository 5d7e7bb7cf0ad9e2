"""The tokenizer of a run: the checkpoint's, the one asked for, the one saved with the pretrained weights, or the
preset's own, which for ``unicl_tiny`` is a BPE trained on the run's prompts and captions."""

from __future__ import annotations

from typing import Any

from unicl.data.datasets import read_caption_file, read_hard_negatives
from unicl.models import UniCLModel, check_tokenizer_fits, get_tokenizer, model_tokenizer, preset_tokenizer
from unicl.models.adapters import AdapterModel
from unicl.models.presets import TRAINED_TOKENIZER
from unicl.text.prompts import LabelToPrompt
from unicl.text.tokenizer import Tokenizer
from unicl.training.config import TrainingConfig
from unicl.training.errors import TrainingError
from unicl.training.run_data import RunData
from unicl.training.runtime import Runtime
from unicl.training.shards import read_captions

#: WebDataset captions a trained tokenizer learns from (the shards' first, in their listed order): read by rank 0
#: while the others wait, so few enough to read well within a collective's timeout from remote shards.
TOKENIZER_CAPTIONS = 20_000


def run_tokenizer(
    config: TrainingConfig, model: UniCLModel, runtime: Runtime, data: RunData, resumed: dict[str, Any] | None
) -> Tokenizer:
    """The tokenizer of the run, checked against the text tower: a resumed run's is the checkpoint's (``resumed``,
    its stored state); else ``--tokenizer``; else the one saved with ``--pretrained``; else the preset's own (CLIP's
    BPE, or one trained on this run's text, ``data``'s, for ``TRAINED_TOKENIZER`` presets).

    Raises:
        TrainingError: a tokenizer that cannot be read, does not fit the text tower, or is not the checkpoint's.
    """
    context_length = model.config.text.context_length
    requested = None
    if config.tokenizer is not None:
        try:
            requested = get_tokenizer(config.tokenizer, context_length)
        except (FileNotFoundError, ValueError) as error:
            raise TrainingError(f"--tokenizer {config.tokenizer!r}: {error}") from None
    if resumed is not None:
        tokenizer = Tokenizer.from_state(resumed, context_length, where="the checkpoint")
        if requested is not None and requested.tokenizer.to_str() != tokenizer.tokenizer.to_str():
            raise TrainingError(
                f"--tokenizer {config.tokenizer!r} is not the tokenizer the checkpoint was trained with; leave "
                "--tokenizer out to go on with the checkpoint's"
            )
        argument = "the checkpoint's tokenizer"
    elif requested is not None:
        tokenizer, argument = requested, "--tokenizer"
    elif isinstance(model, AdapterModel):
        # An open_clip or transformers model reads its own library's tokenizer, whatever its checkpoint file.
        tokenizer, argument = model.tokenizer, f"{config.model}'s tokenizer"
    elif (saved := _pretrained_tokenizer(config, model)) is not None:
        tokenizer, argument = saved, f"--pretrained {config.pretrained!r}'s tokenizer"
    elif preset_tokenizer(config.model) == TRAINED_TOKENIZER:
        tokenizer, argument = _trained_tokenizer(config, model, runtime, data), "the trained tokenizer"
    else:
        tokenizer, argument = Tokenizer.clip(context_length), "CLIP's tokenizer"
    check_tokenizer_fits(tokenizer, model.config, argument, config.model)
    return tokenizer


def _pretrained_tokenizer(config: TrainingConfig, model: UniCLModel) -> Tokenizer | None:
    """The tokenizer that goes with ``--pretrained`` (`unicl.models.model_tokenizer`), or ``None`` without it;
    a preset that trains its tokenizer never trains a new one for pretrained weights."""
    if config.pretrained is None:
        return None
    try:
        return model_tokenizer(config.model, config.pretrained, model.config.text.context_length)
    except (FileNotFoundError, ValueError) as error:
        raise TrainingError(f"--pretrained {config.pretrained!r}: {error}; pass --tokenizer") from None


def _trained_tokenizer(config: TrainingConfig, model: UniCLModel, runtime: Runtime, data: RunData) -> Tokenizer:
    """A byte-level BPE with the text tower's vocabulary and context, trained by rank 0 on every prompt of every
    class and the captions (all of a caption file, the first ``TOKENIZER_CAPTIONS`` of WebDataset shards),
    saved as ``OUTPUT/tokenizer.json`` and sent to the other ranks (with any error, so that all of them stop)."""
    text = model.config.text
    state: dict[str, Any] | None = None
    problem: str | None = None
    if runtime.is_main:
        try:
            corpus: list[str] = []
            if config.image_folder:
                prompts = LabelToPrompt(data.labelled().class_names)
                corpus += [prompt for class_prompts in prompts for prompt in class_prompts]
            for path in config.captions:
                corpus += [caption for _, caption in read_caption_file(path)]
                if config.hard_negatives:
                    corpus += [text for text in read_hard_negatives(path) if text]
            if config.webdataset:
                corpus += read_captions(config.webdataset, TOKENIZER_CAPTIONS)
            tokenizer = Tokenizer.train(corpus, vocab_size=text.vocab_size, context_length=text.context_length)
            tokenizer.save(config.output)
            state = tokenizer.to_state()
        except (FileNotFoundError, ValueError, ImportError, OSError) as error:
            problem = f"training the tokenizer of {config.model}: {error}"
    state, problem = runtime.broadcast((state, problem))
    if problem is not None or state is None:
        raise TrainingError(problem or "rank 0 sent no tokenizer")
    return Tokenizer.from_state(state, text.context_length, where="rank 0's tokenizer")
