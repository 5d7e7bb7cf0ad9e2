"""Files written beside their final name and renamed into place, with the permissions any other file of the user gets.

``tempfile.mkstemp`` creates its file with mode 0600 whatever the umask, and a rename keeps the mode, so files written
that way stay private to their owner. `new_file_beside` creates the temporary file as ``open`` would (0666 less the
umask), so saved weights and checkpoints are as readable as the user's other files; `replacing` gives it that mode
again before the rename, for writers that replace the file they are given (safetensors' ``save_file`` does, with mode
0600).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from types import TracebackType

#: How many random names `new_file_beside` tries before giving up (each clash is a 2⁻³² chance).
_ATTEMPTS = 100


def new_file_beside(path: str | os.PathLike[str]) -> tuple[int, Path]:
    """A new, empty, hidden file in ``path``'s folder, to be renamed onto ``path`` once written.

    Args:
        path: the file the temporary one will replace.

    Returns:
        ``(descriptor, temporary path)``: the file open for writing (the caller closes it), created with mode 0666
        less the umask.

    Raises:
        FileExistsError: every name tried exists (a folder full of leftovers).
        OSError: the folder cannot be written.
    """
    path = Path(path)
    for _ in range(_ATTEMPTS):
        temporary = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        except FileExistsError:
            continue
        return descriptor, temporary
    raise FileExistsError(f"no free temporary name beside {path} after {_ATTEMPTS} tries")


class replacing:
    """A temporary path beside ``path`` that replaces ``path`` when the block succeeds (and vanishes if it fails),
    with the mode a new file of the user gets (`new_file_beside`) whatever the writer did to it.

    Args:
        path: the file to write.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def __enter__(self) -> Path:
        handle, self.temporary = new_file_beside(self.path)
        self.mode = os.fstat(handle).st_mode & 0o777
        os.close(handle)
        return self.temporary

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if error is None:
            os.chmod(self.temporary, self.mode)
            os.replace(self.temporary, self.path)
        else:
            self.temporary.unlink(missing_ok=True)
