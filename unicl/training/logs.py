"""What a run reports: a JSONL log (one object per line), TensorBoard scalars when installed, and a progress bar."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm


class RunLog:
    """The reports of rank 0 (other ranks make a silent one with ``enabled=False``).

    Records are appended to ``directory/log.jsonl`` and flushed at once, so a crash loses none and a resumed run
    continues the same file. A run starting at step ``t`` first drops the records of steps after ``t`` (those of
    the steps a crashed run did past its last checkpoint, which the resumed run does again), so every step appears
    once (TensorBoard's ``purge_step`` does the same for its events). Numbers also go to TensorBoard under
    ``directory/tensorboard`` when asked and installed, and the latest loss and accuracy to the progress bar's postfix.

    Args:
        directory: the run's directory.
        total_steps: the run's planned steps (the progress bar's end).
        start_step: the step the process starts at.
        enabled: write anything at all.
        tensorboard: also write TensorBoard event files: ``None`` when the tensorboard package is installed (silent
            when it is not), ``True`` always (an ``ImportError`` without the package), ``False`` never.
        progress: show a progress bar on standard error.
    """

    def __init__(
        self,
        directory: Path,
        total_steps: int,
        start_step: int = 0,
        enabled: bool = True,
        tensorboard: bool | None = None,
        progress: bool = True,
    ) -> None:
        self.enabled = enabled
        self.path = directory / "log.jsonl"
        self.writer: Any = None
        self.bar: Any = None
        if not enabled:
            return
        directory.mkdir(parents=True, exist_ok=True)
        self._drop_records_after(start_step)
        self.stream = self.path.open("a", encoding="utf-8")
        if tensorboard is not False:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                if tensorboard:
                    raise ImportError(
                        "--tensorboard needs the tensorboard package: pip install tensorboard (or unicl's "
                        "'tensorboard' extra), or leave --tensorboard out to log to log.jsonl only"
                    ) from None
            else:
                # purge_step drops events at steps >= it; the log keeps the resumed step's own records.
                purge = start_step + 1 if start_step > 0 else None
                self.writer = SummaryWriter(str(directory / "tensorboard"), purge_step=purge)
        self.bar = tqdm(
            total=total_steps, initial=start_step, desc="train", file=sys.stderr, disable=not progress, unit="step"
        )

    def _drop_records_after(self, step: int) -> None:
        """Rewrite the log without records of later steps (and without a line a crash cut short), atomically."""
        if not self.path.is_file():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and isinstance(record.get("step"), int) and record["step"] <= step:
                kept.append(line + "\n")
        temporary = self.path.with_name(self.path.name + ".tmp")
        temporary.write_text("".join(kept), encoding="utf-8")
        os.replace(temporary, self.path)

    def record(self, step: int, kind: str, values: dict[str, Any]) -> None:
        """Write one record ``{"step": step, "kind": kind, **values}``; numbers also go to TensorBoard as
        ``kind/name``."""
        if not self.enabled:
            return
        self.stream.write(json.dumps({"step": step, "kind": kind, **values}) + "\n")
        self.stream.flush()
        if self.writer is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"{kind}/{name}", value, step)
        shown = {name: values[name] for name in ("loss", "top1") if name in values}
        if self.bar is not None and shown:
            self.bar.set_postfix({name: f"{value:.4f}" for name, value in shown.items()}, refresh=False)

    def advance(self) -> None:
        """One step done."""
        if self.bar is not None:
            self.bar.update(1)

    def message(self, text: str) -> None:
        """A line for the user, above the progress bar."""
        if self.enabled:
            tqdm.write(text, file=sys.stderr)

    def close(self) -> None:
        """Flush and close everything (again: nothing)."""
        if not self.enabled or self.stream.closed:
            return
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        self.stream.close()
