"""Checkpoints that survive faults: written atomically, found again newest first, a damaged one skipped.

A checkpoint is one file ``step-NNNNNNNNN.pt`` holding a dictionary of tensors, state dicts and plain Python values
(model, optimizer, scheduler and grad-scaler states, RNG states, the data position, the run's configuration). It is
written to a temporary file beside its final name, flushed and ``fsync``-ed, renamed into place with
``os.replace`` (atomic on POSIX file systems) and the directory entry ``fsync``-ed, so a crash at any moment leaves
either the previous set of checkpoints or the new one, never a half-written file under a checkpoint's name.

Reading tells two faults apart. A file that is *damaged* (truncated, cut short by a crash, bytes changed on disk:
its zip container does not open or a member fails its CRC-32, which ``torch.load`` itself does not check) raises
`DamagedCheckpoint`, and ``load_latest`` skips it for an older one. A file that reads back whole but cannot be used
(objects ``torch.load(weights_only=True)`` refuses to unpickle, no dictionary: another version's or a foreign file)
raises `UnusableCheckpoint`, which nothing skips: resuming from an older checkpoint would silently throw away work.
"""

from __future__ import annotations

import os
import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from unicl._checks import check_positive_int, first_line
from unicl.models.atomic import new_file_beside

_NAME = re.compile(r"step-(\d{9})\.pt")
#: How ``torch.load(weights_only=True)`` names an object it refuses.
_REFUSED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


class DamagedCheckpoint(ValueError):
    """A checkpoint file that is truncated or corrupt (its bytes are not what was written)."""


class UnusableCheckpoint(ValueError):
    """A checkpoint file that reads back whole but holds what this version cannot use."""


def read_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """One checkpoint, checked whole before it is unpickled.

    Args:
        path: the file.
        map_location: where its tensors go.

    Returns:
        The state dictionary.

    Raises:
        FileNotFoundError: no such file.
        DamagedCheckpoint: not a ``torch.save`` archive, truncated, or a member whose CRC-32 does not match.
        UnusableCheckpoint: a file that cannot be opened, a whole archive that ``torch.load(weights_only=True)``
            refuses, or no dictionary.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        handle = path.open("rb")
    except OSError as error:  # permissions, a stale network mount: not damage, and no reason to take an older one
        raise UnusableCheckpoint(f"{path} cannot be opened: {error.strerror or first_line(error)}") from None
    with handle:
        try:
            with zipfile.ZipFile(handle) as archive:
                bad_member = archive.testzip()
        except (zipfile.BadZipFile, EOFError, ValueError) as error:
            raise DamagedCheckpoint(f"{path} is truncated or not a torch.save archive ({first_line(error)})") from None
    if bad_member is not None:
        raise DamagedCheckpoint(f"{path} is corrupt: {bad_member!r} fails its CRC-32 check")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # the unpickler raises UnpicklingError, RuntimeError, ... with many-line advice
        message = f"{path} reads back whole but cannot be loaded by this version ({_why(error)})"
        raise UnusableCheckpoint(message) from None
    if not isinstance(state, dict):
        raise UnusableCheckpoint(f"{path} holds a {type(state).__name__}, not a checkpoint's dictionary")
    return state


class CheckpointDirectory:
    """The checkpoints of one run, in ``directory`` (created if needed).

    Args:
        directory: where the checkpoints live.
        keep: how many of the newest checkpoints to keep; older ones are deleted after each save (``None``: all).

    Examples:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     checkpoints = CheckpointDirectory(folder, keep=2)
        ...     for step in (10, 20, 30):
        ...         _ = checkpoints.save(step, {"step": step})
        ...     names = [path.name for path in checkpoints.paths()]
        ...     path, state = checkpoints.load_latest()
        >>> names, state.get("step")
        (['step-000000030.pt', 'step-000000020.pt'], 30)
    """

    def __init__(self, directory: str | os.PathLike[str], keep: int | None = None) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.keep = None if keep is None else check_positive_int("keep", keep)

    def path_for(self, step: int) -> Path:
        """The file of the checkpoint at ``step``."""
        return self.directory / f"step-{check_positive_int('step', step, minimum=0):09d}.pt"

    def paths(self) -> list[Path]:
        """Checkpoint files, newest (highest step) first; temporary and foreign files are not listed."""
        found = [path for path in self.directory.iterdir() if _NAME.fullmatch(path.name)]
        return sorted(found, key=lambda path: int(_NAME.fullmatch(path.name).group(1)), reverse=True)  # type: ignore[union-attr]

    def save(self, step: int, state: dict[str, Any]) -> Path:
        """Write ``state`` as the checkpoint of ``step`` atomically (see the module docstring), then drop the
        checkpoints beyond ``keep``.

        Returns:
            The checkpoint's path.
        """
        target = self.path_for(step)
        handle, temporary = new_file_beside(target)
        try:
            with os.fdopen(handle, "wb") as stream:
                torch.save(state, stream)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        _fsync_directory(self.directory)
        if self.keep is not None:
            for old in self.paths()[self.keep :]:
                old.unlink(missing_ok=True)
        return target

    def load_latest(self, map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]] | None:
        """The newest checkpoint that reads back whole, or ``None`` when there is none.

        A damaged file (truncated or corrupt, see `read_checkpoint`) is skipped with a ``UserWarning`` naming it,
        and the next older one is tried.

        Raises:
            UnusableCheckpoint: the newest undamaged checkpoint cannot be used (it is not skipped).
        """
        for path in self.paths():
            try:
                return path, read_checkpoint(path, map_location)
            except (DamagedCheckpoint, FileNotFoundError) as error:  # a file pruned meanwhile is no checkpoint
                warnings.warn(f"skipping checkpoint {path}: {first_line(error)}; trying an older one", stacklevel=2)
        return None


def _why(error: Exception) -> str:
    """What a failed ``torch.load`` found, without its advice to unpickle arbitrary objects."""
    refused = _REFUSED_GLOBAL.search(str(error))
    if refused is not None:
        return f"it holds a {refused.group(1)}, which a checkpoint does not"
    return f"{type(error).__name__}: {first_line(error)}"


def _fsync_directory(directory: Path) -> None:
    """Persist a rename: ``fsync`` the directory entry where the platform allows it."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:  # directories cannot be opened this way on some platforms
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
