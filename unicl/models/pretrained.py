"""The released microsoft/UniCL checkpoints: `list_pretrained` and the local directory a tag resolves in.

The table is the authors' (the microsoft/UniCL README of release v1.0): the preset each file fits, its tag, file name,
URL, training data and the top-1 figures the authors report; nothing here is measured by unicl. A file's size and
SHA-256 are given only where a source publishes them (``None`` otherwise, and then the file is not checked): the
SHA-256 of ``in21k_yfcc14m_gcc15m_swin_base.pth`` is that of the Git LFS copy in the authors' Hugging Face Space
``CVPR/unicl-zero-shot-img-recog``.

unicl downloads nothing: ``create_model(preset, pretrained=TAG)`` reads ``checkpoint_dir() / file_name`` and, when
the file is missing, says where it looked and the URL to fetch it from. `checkpoint_dir` is ``$UNICL_HOME/checkpoints``,
with ``UNICL_HOME`` defaulting to ``$XDG_CACHE_HOME/unicl`` and then ``~/.cache/unicl`` (as ``TORCH_HOME`` does).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

#: Where the authors publish the files (their README's download links).
RELEASE_URL = "https://projects4jw.blob.core.windows.net/unicl/release/"
#: The environment variable naming unicl's local directory.
HOME_VARIABLE = "UNICL_HOME"


@dataclass(frozen=True)
class PretrainedCheckpoint:
    """One released checkpoint and the authors' figures for it.

    Attributes:
        model: the preset whose architecture the file fits (``unicl_swin_tiny``, ``unicl_swin_base``).
        tag: the name ``create_model(model, pretrained=tag)`` takes.
        file_name: the file's name, in the release and in `checkpoint_dir`.
        size: the file's size in bytes, or ``None`` where no source publishes it.
        sha256: the file's SHA-256 (hex), or ``None`` where no source publishes it.
        training_data: what it was trained on, as the authors write it.
        zero_shot_imagenet_top1: the authors' zero-shot top-1 on ImageNet-1K (%), ``None`` where they give none.
        imagenet_top1: the authors' top-1 on ImageNet-1K after supervised training on it (%), for the models trained
            on ImageNet-1K's labels; ``None`` otherwise.
        zero_shot_14_datasets: the authors' zero-shot average over their 14 datasets (%), ``None`` where they give none.
        url: where to fetch the file from.
    """

    model: str
    tag: str
    file_name: str
    size: int | None
    sha256: str | None
    training_data: str
    zero_shot_imagenet_top1: float | None
    imagenet_top1: float | None
    zero_shot_14_datasets: float | None
    url: str

    def local_path(self) -> Path:
        """Where ``pretrained=tag`` looks for the file: ``checkpoint_dir() / file_name``."""
        return checkpoint_dir() / self.file_name


def _release(
    model: str,
    tag: str,
    training_data: str,
    zero_shot: float | None,
    supervised: float | None,
    zero_shot_14: float | None,
    sha256: str | None = None,
) -> PretrainedCheckpoint:
    file_name = f"{tag}.pth" if model == "unicl_swin_tiny" else f"{tag}_swin_base.pth"
    return PretrainedCheckpoint(
        model=model,
        tag=tag,
        file_name=file_name,
        size=None,
        sha256=sha256,
        training_data=training_data,
        zero_shot_imagenet_top1=zero_shot,
        imagenet_top1=supervised,
        zero_shot_14_datasets=zero_shot_14,
        url=RELEASE_URL + file_name,
    )


_TINY, _BASE = "unicl_swin_tiny", "unicl_swin_base"
_CHECKPOINTS: tuple[PretrainedCheckpoint, ...] = (
    # Image-label training augmented by image-text pairs: the authors report top-1 after training on IN-1K's labels.
    _release(_TINY, "in1k", "IN-1K", None, 79.9, 30.2),
    _release(_TINY, "in1k_gcc3m", "IN-1K + GCC-3M", None, 80.2, 39.0),
    _release(_TINY, "in1k_yfcc14m", "IN-1K + YFCC-14M", None, 81.1, 40.0),
    _release(_TINY, "in1k_gcc15m", "IN-1K + GCC-15M", None, 81.8, 45.1),
    # Image-text learning augmented by image-label data: zero-shot top-1.
    _release(_TINY, "yfcc14m", "YFCC-14M", 30.1, None, 36.3),
    _release(_TINY, "in21k", "IN-21K", 28.5, None, 37.8),
    _release(_TINY, "in21k_yfcc14m_half", "IN-21K (half) + YFCC-14M (half)", 36.4, None, 45.5),
    _release(_TINY, "in21k_yfcc14m", "IN-21K + YFCC-14M", 40.5, None, 49.1),
    _release(_BASE, "yfcc14m", "YFCC-14M", 37.8, None, None),
    _release(_BASE, "in21k", "IN-21K", 29.9, None, 42.4),
    _release(_BASE, "in21k_yfcc14m_half", "IN-21K (half) + YFCC-14M (half)", 41.1, None, 48.5),
    _release(_BASE, "in21k_yfcc14m", "IN-21K + YFCC-14M", 44.3, None, 52.2),
    _release(
        _BASE, "in21k_yfcc14m_gcc15m", "IN-21K + YFCC-14M + GCC-15M", 57.9, None, None,
        sha256="e4bde31bbce5118e5442ff3fae209dec489ff2ccd1fff7847fa0dea162e65dc4",
    ),
)  # fmt: skip


def list_pretrained(model: str | None = None) -> list[PretrainedCheckpoint]:
    """The released checkpoints, in the order of the authors' README; those of one preset when ``model`` is given.

    Args:
        model: a preset name, or ``None`` for all.

    Examples:
        >>> import unicl
        >>> len(unicl.list_pretrained()), [c.tag for c in unicl.list_pretrained("unicl_swin_base")][:2]
        (13, ['yfcc14m', 'in21k'])
        >>> unicl.list_pretrained("unicl_swin_tiny")[-1].zero_shot_imagenet_top1
        40.5
    """
    return [entry for entry in _CHECKPOINTS if model is None or entry.model == model]


def unicl_home() -> Path:
    """unicl's local directory: ``$UNICL_HOME``, else ``$XDG_CACHE_HOME/unicl``, else ``~/.cache/unicl``."""
    if os.environ.get(HOME_VARIABLE):
        return Path(os.environ[HOME_VARIABLE]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(cache).expanduser() / "unicl"


def checkpoint_dir() -> Path:
    """The directory ``pretrained=TAG`` reads released checkpoints from: ``unicl_home() / "checkpoints"``."""
    return unicl_home() / "checkpoints"


def get_pretrained(model: str, tag: str) -> PretrainedCheckpoint:
    """The released checkpoint ``tag`` of preset ``model``.

    Raises:
        ValueError: no such tag for this preset (its tags are listed, and the preset a tag of another belongs to).
    """
    for entry in _CHECKPOINTS:
        if entry.model == model and entry.tag == tag:
            return entry
    raise ValueError(f"pretrained={tag!r} is not a released checkpoint of {model}: {_tags_of(model, tag)}")


def is_pretrained_tag(tag: object) -> bool:
    """Whether ``tag`` is the tag of a released checkpoint of some preset (a string, never a path object)."""
    return isinstance(tag, str) and any(entry.tag == tag for entry in _CHECKPOINTS)


def resolve_pretrained(model: str, pretrained: str | os.PathLike[str]) -> Path:
    """The file or directory ``create_model(model, pretrained=...)`` loads.

    A string that is a tag of `list_pretrained` resolves to the file in `checkpoint_dir`, checked against its size and
    SHA-256 where they are known; anything else is a path (a ``save_pretrained`` directory, a ``.safetensors`` file, a
    release ``.pth``). A bare file name (``in21k_yfcc14m_swin_base.pth``) that is not in the working directory is
    looked up in `checkpoint_dir` too (and checked like its tag when it is a release's file name). Tags win over
    paths: write ``./in21k`` for a path of that name.

    Raises:
        ValueError: a tag of another preset, or a file whose size or SHA-256 is not the release's.
        FileNotFoundError: a tag whose file is not in `checkpoint_dir` (the message names the path and the URL), or a
            name that is neither a tag nor an existing path (the message names where it looked).
    """
    if isinstance(pretrained, str) and is_pretrained_tag(pretrained):
        entry = get_pretrained(model, pretrained)
        path = entry.local_path()
        if not path.is_file():
            raise FileNotFoundError(
                f"pretrained={entry.tag!r} of {model}: {path} does not exist; unicl downloads nothing, so fetch "
                f"{entry.url} into {path.parent} (or set {HOME_VARIABLE} to the directory above the checkpoints/ "
                "that holds it)"
            )
        check_file(entry, path)
        return path
    path = Path(pretrained)
    if path.exists() or not _is_bare_name(pretrained):
        return path
    stored = checkpoint_dir() / path.name
    if stored.exists():
        release = next((e for e in _CHECKPOINTS if e.model == model and e.file_name == path.name), None)
        if release is not None:
            check_file(release, stored)
        return stored
    if not path.suffix:
        # A bare name that names nothing was most likely meant as a tag: say which ones there are.
        raise FileNotFoundError(
            f"pretrained={pretrained!r} does not exist, and is not a released checkpoint of {model}: "
            f"{_tags_of(model, pretrained)} (looked for {path.absolute()} and {stored})"
        )
    raise FileNotFoundError(
        f"pretrained={pretrained!r} does not exist: looked for {path.absolute()} and {stored} (a release's file "
        f"belongs in {stored.parent}; set {HOME_VARIABLE} to the directory above the checkpoints/ that holds it)"
    )


def _is_bare_name(pretrained: str | os.PathLike[str]) -> bool:
    """Whether ``pretrained`` is a file name without a folder (``in21k.pth``), which may live in `checkpoint_dir`."""
    text = os.fspath(pretrained)
    folders = os.sep + (os.altsep or "")
    return text not in ("", ".", "..") and not any(separator in text for separator in folders)


def check_file(entry: PretrainedCheckpoint, path: str | os.PathLike[str]) -> None:
    """Refuse a file that is not ``entry``'s release: another size, or another SHA-256 (where they are known).

    Raises:
        ValueError: naming the file, what was expected and what was found.
    """
    path = Path(path)
    if entry.size is not None and path.stat().st_size != entry.size:
        raise ValueError(
            f"pretrained={entry.tag!r} of {entry.model}: {path} has {path.stat().st_size} bytes, not the release's "
            f"{entry.size}: the download is incomplete or another file; fetch {entry.url} again"
        )
    if entry.sha256 is not None:
        found = sha256_of(path)
        if found != entry.sha256:
            raise ValueError(
                f"pretrained={entry.tag!r} of {entry.model}: {path} has SHA-256 {found}, not the release's "
                f"{entry.sha256}: the download is incomplete or another file; fetch {entry.url} again (a file you "
                "trust loads unchecked as pretrained=PATH)"
            )


def sha256_of(path: str | os.PathLike[str]) -> str:
    """The SHA-256 (hex) of a file, read in blocks of 1 MiB."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tags_of(model: str, tag: object) -> str:
    tags = [entry.tag for entry in _CHECKPOINTS if entry.model == model]
    owners = sorted({entry.model for entry in _CHECKPOINTS if entry.tag == tag and entry.model != model})
    known = f"its tags are {', '.join(tags)}" if tags else "it has no released checkpoints"
    elsewhere = f" ({tag!r} is a checkpoint of {' and '.join(owners)})" if owners else ""
    return f"{known}{elsewhere}; see unicl.list_pretrained()"
