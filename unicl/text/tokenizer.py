"""Tokenisation on Hugging Face ``tokenizers``: CLIP's byte-level BPE, any ``tokenizer.json``, or one trained here.

Every tokenizer returns ``input_ids`` and ``attention_mask``, LongTensors ``[B, L]``: a start token, the text, an
end token, then padding. Text longer than the context is truncated with the end token kept, and the mask covers
start..end. Batches go through the library's parallel (Rust) batch encoder.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import json
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from unicl._checks import check_positive_int, first_line

CLIP_START, CLIP_END = "<start_of_text>", "<end_of_text>"
#: CLIP's word pattern: contractions, letter runs, single digits, other non-space runs.
CLIP_WORD_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
#: The files `Tokenizer.save` writes: the ``tokenizers`` model, and what it cannot hold (context length,
#: start and end tokens, padding id, text clean-up).
TOKENIZER_FILE, TOKENIZER_CONFIG_FILE = "tokenizer.json", "tokenizer_config.json"
#: CLIP's merges file holds 48,894 merges after its header line: 49,152 − 256 byte tokens − 2 specials.
CLIP_NUM_MERGES = 49152 - 256 - 2
#: Ids of CLIP's tokenizer: 256 byte tokens, their 256 word-final forms, the merges and the two specials.
CLIP_VOCAB_SIZE = 2 * 256 + CLIP_NUM_MERGES + 2


def _checked_settings(settings: dict[str, Any], where: str, context_length: int | None) -> dict[str, Any]:
    """Stored `Tokenizer.settings` as constructor arguments (``context_length`` overrides the stored one)."""
    known = {"context_length", "start_token", "end_token", "pad_id", "clean"}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ValueError(f"{where} has unknown setting(s) {unknown}; known: {sorted(known)}")
    cleaners = {None: None, "clip": clip_clean}
    if settings.get("clean") not in cleaners:
        raise ValueError(f"{where}: clean must be null or 'clip'; got {settings['clean']!r}")
    arguments = {**settings, "clean": cleaners[settings.get("clean")]}
    arguments["context_length"] = context_length or settings.get("context_length", 77)
    return arguments


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from the 256 byte values to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    characters = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            characters.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, characters)))


def clip_clean(text: str) -> str:
    """CLIP's text clean-up: ``ftfy.fix_text`` (when ftfy is installed), HTML unescaped twice, whitespace runs
    collapsed, lower case. Without ftfy, mojibake is left as it is (ids can then differ from CLIP's)."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:
        pass
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).lower()


def find_clip_merges() -> Path | None:
    """Where CLIP's BPE merges file is on this machine (see `Tokenizer.clip`), or ``None``."""
    spec = importlib.util.find_spec("open_clip")
    if spec is not None and spec.origin is not None:
        shipped = Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"
        if shipped.is_file():
            return shipped
    cache = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface")), "hub"
    )
    found = sorted(Path(cache).glob("models--openai--clip-*/snapshots/*/merges.txt"))
    return found[0] if found else None


class Tokenizer:
    """Fixed-length tokenisation for a text encoder.

    Args:
        tokenizer: a ``tokenizers.Tokenizer`` (its own post-processing and padding are not used).
        context_length: ``L``, tokens per row including start and end, ``>= 2``.
        start_token: the start token's string (in the vocabulary), or ``None`` for rows without one (SigLIP's:
            the text, then the end token).
        end_token: the end token's string (in the vocabulary).
        pad_id: id written after the end token (masked out).
        clean: optional text clean-up applied before encoding (e.g. `clip_clean`).

    Raises:
        ValueError: ``context_length < 2`` or a start/end token missing from the vocabulary.

    Examples:
        >>> tokenizer = Tokenizer.train(["a photo of a cat", "a photo of a dog"], vocab_size=300, context_length=8)
        >>> batch = tokenizer(["a photo of a cat"])
        >>> batch["input_ids"].shape, int(batch["attention_mask"].sum())
        (torch.Size([1, 8]), 7)
    """

    def __init__(
        self,
        tokenizer: HFTokenizer,
        context_length: int = 77,
        start_token: str | None = "<|startoftext|>",
        end_token: str = "<|endoftext|>",
        pad_id: int = 0,
        clean: Callable[[str], str] | None = None,
    ) -> None:
        if not isinstance(tokenizer, HFTokenizer):
            raise TypeError(f"tokenizer must be a tokenizers.Tokenizer; got {type(tokenizer).__name__}")
        self.context_length = check_positive_int("context_length", context_length, minimum=2)
        self.tokenizer = tokenizer
        ids: list[int | None] = []
        for name, token in (("start_token", start_token), ("end_token", end_token)):
            token_id = None if token is None and name == "start_token" else tokenizer.token_to_id(str(token))
            if token_id is None and token is not None:
                raise ValueError(f"{name} {token!r} is not in the tokenizer's vocabulary")
            ids.append(token_id)
        self.start_id: int | None = ids[0]
        self.end_id: int = ids[1]  # type: ignore[assignment]  # never None: checked above
        self.pad_id = check_positive_int("pad_id", pad_id, minimum=0)
        self.clean = clean

    @classmethod
    def from_file(cls, path: str | os.PathLike, context_length: int = 77, **kwargs: Any) -> Tokenizer:
        """Load a ``tokenizer.json`` (keyword arguments as in the constructor).

        Raises:
            FileNotFoundError: no such file.
            ValueError: the file is not a tokenizer the ``tokenizers`` library can read.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file {str(path)!r} does not exist")
        try:
            tokenizer = HFTokenizer.from_file(str(path))
        except Exception as error:  # the Rust side raises a bare Exception
            raise ValueError(f"tokenizer file {str(path)!r} is not a tokenizers JSON file: {error}") from error
        return cls(tokenizer, context_length, **kwargs)

    @classmethod
    def from_clip_bpe(cls, path: str | os.PathLike, context_length: int = 77) -> Tokenizer:
        """CLIP's byte-level BPE from CLIP's merges file (``bpe_simple_vocab_16e6.txt.gz``, shipped with open_clip).

        Ids equal CLIP's (and open_clip's ``tokenize``) for the same text: the 256 byte characters, the same with
        the ``</w>`` end-of-word mark, one token per merge, then ``<start_of_text>`` (49406) and
        ``<end_of_text>`` (49407); padding is 0.

        Raises:
            FileNotFoundError: no such file.
            ValueError: a file that is not a CLIP merges file.
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"CLIP merges file {str(path)!r} does not exist")
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as handle:
            lines = handle.read().split("\n")
        pairs = [line.split() for line in lines[1 : CLIP_NUM_MERGES + 1]]
        if len(pairs) != CLIP_NUM_MERGES or any(len(pair) != 2 for pair in pairs):
            raise ValueError(f"{str(path)!r} is not a CLIP merges file ({CLIP_NUM_MERGES} merge pairs expected)")
        merges = [(first, second) for first, second in pairs]
        byte_characters = list(bytes_to_unicode().values())
        vocab_list = byte_characters + [c + "</w>" for c in byte_characters] + ["".join(m) for m in merges]
        vocab_list += [CLIP_START, CLIP_END]
        vocab = {token: index for index, token in enumerate(vocab_list)}
        model = models.BPE(vocab, merges, end_of_word_suffix="</w>", fuse_unk=False)
        tokenizer = HFTokenizer(model)
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(CLIP_WORD_PATTERN), behavior="removed", invert=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        tokenizer.decoder = decoders.Sequence([decoders.BPEDecoder(suffix="</w>"), decoders.ByteLevel()])
        return cls(tokenizer, context_length, CLIP_START, CLIP_END, pad_id=0, clean=clip_clean)

    @classmethod
    def clip(cls, context_length: int = 77) -> Tokenizer:
        """CLIP's BPE (`from_clip_bpe`) from a merges file found on this machine, downloading nothing: the
        copy inside an installed ``open_clip`` (its wheel ships ``bpe_simple_vocab_16e6.txt.gz``), else the
        ``merges.txt`` of an ``openai/clip-*`` tokenizer in the local Hugging Face cache (``HF_HUB_CACHE``,
        ``HF_HOME/hub`` or ``~/.cache/huggingface/hub``).

        Raises:
            FileNotFoundError: no merges file found; the message says how to get one.
        """
        path = find_clip_merges()
        if path is None:
            raise FileNotFoundError(
                "CLIP's BPE merges file was not found: install open_clip_torch (pip install open_clip_torch; its "
                "wheel ships bpe_simple_vocab_16e6.txt.gz), or put an openai/clip-vit-base-patch32 tokenizer in the "
                "Hugging Face cache (huggingface-cli download openai/clip-vit-base-patch32 merges.txt), or pass a "
                "file to Tokenizer.from_clip_bpe(path)"
            )
        return cls.from_clip_bpe(path, context_length)

    @classmethod
    def train(
        cls, corpus: Iterable[str], vocab_size: int = 1000, context_length: int = 77, min_frequency: int = 1
    ) -> Tokenizer:
        """Train a small byte-level BPE tokenizer on ``corpus``, offline (for demos, tests and new domains).

        Text is lower-cased and whitespace-normalised; ``<pad>`` is id 0, then ``<|startoftext|>`` and
        ``<|endoftext|>``.
        """
        check_positive_int("vocab_size", vocab_size, minimum=260)
        tokenizer = HFTokenizer(models.BPE())
        tokenizer.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(), normalizers.Lowercase()]
        )
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=["<pad>", "<|startoftext|>", "<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(corpus, trainer)
        return cls(tokenizer, context_length, pad_id=0)

    def settings(self) -> dict[str, Any]:
        """What the ``tokenizers`` model cannot hold, as JSON-ready values: context length, start and end tokens,
        padding id and clean-up (``None`` or ``"clip"``).

        Raises:
            ValueError: a ``clean`` function other than `clip_clean` (a function cannot be stored in JSON).
        """
        if self.clean not in (None, clip_clean):
            raise ValueError("only a tokenizer without clean-up or with clip_clean can be saved; got a custom clean")
        return {
            "context_length": self.context_length,
            "start_token": None if self.start_id is None else self.tokenizer.id_to_token(self.start_id),
            "end_token": self.tokenizer.id_to_token(self.end_id),
            "pad_id": self.pad_id,
            "clean": None if self.clean is None else "clip",
        }

    def to_state(self) -> dict[str, Any]:
        """The whole tokenizer as plain values (what a training checkpoint stores): ``{"tokenizer": JSON text,
        **settings()}``; `from_state` undoes it."""
        return {"tokenizer": self.tokenizer.to_str(), **self.settings()}

    @classmethod
    def from_state(cls, state: dict[str, Any], context_length: int | None = None, where: str = "state") -> Tokenizer:
        """The tokenizer of `to_state` (``context_length`` overrides the stored one).

        Raises:
            ValueError: a state that is not one (``where`` names it in the message).
        """
        settings = {key: value for key, value in state.items() if key != "tokenizer"}
        if not isinstance(state.get("tokenizer"), str):
            raise ValueError(f"{where} holds no tokenizer JSON")
        try:
            tokenizer = HFTokenizer.from_str(state["tokenizer"])
        except Exception as error:  # the Rust side raises a bare Exception
            raise ValueError(f"{where} holds no tokenizers JSON: {first_line(error)}") from None
        return cls(tokenizer, **_checked_settings(settings, where, context_length))

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` to ``directory`` (created if needed), so that
        `from_pretrained` gives back a tokenizer with the same ids for every text.

        Returns:
            The directory.

        Raises:
            ValueError: a ``clean`` function other than `clip_clean` (a function cannot be stored in JSON).

        Examples:
            >>> import tempfile
            >>> tokenizer = Tokenizer.train(["a photo of a cat", "a photo of a dog"], vocab_size=300, context_length=8)
            >>> with tempfile.TemporaryDirectory() as folder:
            ...     again = Tokenizer.from_pretrained(tokenizer.save(folder))
            >>> bool((again("a dog")["input_ids"] == tokenizer("a dog")["input_ids"]).all())
            True
        """
        settings = self.settings()
        target = Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(target / TOKENIZER_FILE))
        (target / TOKENIZER_CONFIG_FILE).write_text(json.dumps(settings, indent=1, sort_keys=True) + "\n")
        return target

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike[str], context_length: int | None = None) -> Tokenizer:
        """The tokenizer `save` wrote to ``directory`` (``context_length`` overrides the saved one).

        A directory with a ``tokenizer.json`` but no ``tokenizer_config.json`` (a tokenizer saved by the
        ``tokenizers`` library itself) is read with this class's defaults.

        Raises:
            FileNotFoundError: no ``tokenizer.json`` in ``directory``.
            ValueError: an unreadable file, or settings that do not fit the vocabulary.
        """
        folder = Path(directory)
        settings: dict[str, Any] = {}
        config_path = folder / TOKENIZER_CONFIG_FILE
        if config_path.is_file():
            try:
                settings = json.loads(config_path.read_text())
                if not isinstance(settings, dict):
                    raise ValueError("not a JSON object")
            except ValueError as error:
                raise ValueError(f"{str(config_path)!r} is not a tokenizer configuration: {error}") from None
        arguments = _checked_settings(settings, repr(str(config_path)), context_length)
        return cls.from_file(folder / TOKENIZER_FILE, **arguments)

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def __call__(self, texts: str | Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenise a batch.

        Args:
            texts: a string or ``B`` strings.

        Returns:
            ``{"input_ids": [B, L], "attention_mask": [B, L]}``, both int64.

        Raises:
            TypeError: an element that is not a ``str``.
        """
        batch = [texts] if isinstance(texts, str) else list(texts)
        for index, text in enumerate(batch):
            if not isinstance(text, str):
                raise TypeError(f"texts[{index}] must be a str; got {type(text).__name__}")
        if self.clean is not None:
            batch = [self.clean(text) for text in batch]
        encodings = self.tokenizer.encode_batch(batch, add_special_tokens=False)
        start = [] if self.start_id is None else [self.start_id]
        room = self.context_length - 1 - len(start)
        input_ids = torch.full((len(batch), self.context_length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(batch), self.context_length), dtype=torch.long)
        for row, encoding in enumerate(encodings):
            ids = [*start, *encoding.ids[:room], self.end_id]
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def decode(self, input_ids: Sequence[int] | torch.Tensor) -> str:
        """The text of one row of ids, special tokens and padding dropped."""
        ids = input_ids.tolist() if isinstance(input_ids, torch.Tensor) else list(input_ids)
        if self.end_id in ids:
            ids = ids[: ids.index(self.end_id)]
        ids = [i for i in ids if i != self.start_id]
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()
