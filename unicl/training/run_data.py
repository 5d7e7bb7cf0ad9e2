"""The data of a run: its sources (ImageFolders, caption files, WebDataset shards), their loaders from any step,
the check of their files, and where they are at a step.

A run is reproducible step by step: the batch of step ``t`` (which samples, their augmentations and prompts) is a
function of the seed and ``t`` alone (`unicl.training.sampling`, `unicl.training.shards`), so loaders started at the
step of a checkpoint (`RunData.start`) continue exactly where the run was; `RunData.check_position` stops a resumed
run whose data changed on disk.
"""

from __future__ import annotations

import random
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, cast

import torch
from torch.utils.data import DataLoader
from torchvision.datasets import ImageFolder

from unicl.data.batches import UnifiedCollate, append_class_bank
from unicl.data.datasets import CaptionGroups, CaptionPairs, LabelledFolders, read_class_names
from unicl.data.headers import check_image_headers
from unicl.data.transforms import image_transform
from unicl.data.unreadable import SkippingUnreadable, reporting_unreadable
from unicl.data.workers import worker_ignores_stop_signals
from unicl.models import UniCLModel
from unicl.text.prompts import LabelToPrompt
from unicl.text.tokenizer import Tokenizer
from unicl.training.config import TrainingConfig
from unicl.training.errors import TrainingError
from unicl.training.logs import RunLog
from unicl.training.mixing import batch_shares, join_batches
from unicl.training.options import text_labelled
from unicl.training.runtime import Runtime
from unicl.training.sampling import KeyedSamples, StepBatchSampler, derive_seed
from unicl.training.shards import ShardedCaptions


class RunData:
    """The training data of a run, on this rank.

    Args:
        config: the run's options (the data's, ``batch_size``, ``ratio`` decided, ``seed``, ``workers``).
        runtime: this process's place in the run.
        model: the model trained (its image transform).

    Attributes:
        train_transform: the transform of every training image.
        shares: samples of each source (``"labelled"``, ``"captioned"``) in every batch, once `start` ran.
        loaders: the loader of each source, once `start` ran.
    """

    def __init__(self, config: TrainingConfig, runtime: Runtime, model: UniCLModel) -> None:
        self.config, self.runtime = config, runtime
        self.train_transform = image_transform(model, train=not config.no_augmentation)
        self.shares: dict[str, int] = {}
        self.loaders: dict[str, DataLoader] = {}
        self._folders: LabelledFolders | None = None
        self._skipping: list[SkippingUnreadable] = []

    def labelled(self) -> LabelledFolders:
        """The ``--image-folder`` roots as one dataset (scanned once)."""
        if self._folders is None:
            config = self.config
            names = [read_class_names(path) for path in config.classnames] if config.classnames else None
            self._folders = LabelledFolders(config.image_folder, self.train_transform, names)
        return self._folders

    def check_files(self, log: RunLog, step: int) -> None:
        """``--check-data``: every image file's header, read by rank 0 before the first step (the others wait for the
        verdict, so all of them stop on a bad file); the verdict goes to ``log`` at ``step``.

        Raises:
            TrainingError: on every rank, bad files without ``--skip-unreadable``.
        """
        config = self.config
        problem: str | None = None
        if self.runtime.is_main:
            files: list[tuple[str | Path, str]] = []
            if config.image_folder:
                folders = self.labelled()
                files += [(path, folders.origin(path)) for path, _ in folders.samples]
            if config.captions:
                pairs = CaptionPairs(config.captions)
                files += [(path, pairs.origin(path)) for path in pairs.image_paths]
            if config.eval_folder is not None:
                files += [
                    (path, f"image folder {config.eval_folder}") for path, _ in ImageFolder(config.eval_folder).samples
                ]
            started = time.perf_counter()
            bad = check_image_headers(files)
            seconds = time.perf_counter() - started
            shown = "; ".join(map(str, bad[:5])) + ("; ..." if len(bad) > 5 else "")
            if bad and not config.skip_unreadable:
                problem = (
                    f"--check-data: {len(bad)} of {len(files)} image files fail their header check: {shown}; "
                    "remove or replace them, or train with --skip-unreadable"
                )
            elif bad:
                log.message(
                    f"--check-data: {len(bad)} of {len(files)} image files fail their header check, skipped when "
                    f"read (--skip-unreadable): {shown}"
                )
            else:
                log.message(f"--check-data: the headers of {len(files)} image files read in {seconds:.1f} s, none bad")
            log.record(step, "check_data", {"files": len(files), "bad": len(bad), "seconds": seconds})
        problem = self.runtime.broadcast(problem)
        if problem is not None:
            raise TrainingError(problem)

    def start(self, tokenizer: Tokenizer, step: int) -> Generator[dict[str, torch.Tensor], None, None]:
        """The run's batches from ``step`` on: one loader per source (`loaders`), each giving its share (`shares`)
        of every batch (`unicl.training.mixing.join_batches`; ``close()`` the iterator to stop the loaders'
        workers)."""
        config, runtime = self.config, self.runtime
        transform = self.train_transform
        # check_options decided the ratio where it was left to the data given.
        self.shares = batch_shares(config.batch_size, cast(float, config.ratio))
        prompts = None
        loaders = {}
        if "labelled" in self.shares:
            folders = self.labelled()
            prompts = LabelToPrompt(folders.class_names, seed=config.seed)
            keyed = KeyedSamples(self._readable(folders), config.seed, prompts)
            loaders["labelled"] = self._loader(keyed, self.shares["labelled"], prompts, tokenizer, step)
        if "captioned" in self.shares:
            if config.webdataset:
                captioned: Any = ShardedCaptions(
                    config.webdataset, transform, self.shares["captioned"], config.seed,
                    runtime.rank, runtime.world_size, config.workers, start_step=step,
                )  # fmt: skip
            elif text_labelled(config):
                # Sampled by image: the image is read and encoded once, its captions are all its positives.
                pairs = CaptionPairs(config.captions, transform, hard_negatives=config.hard_negatives)
                pairs = reporting_unreadable(pairs)
                groups = CaptionGroups(pairs, config.captions_per_image)
                captioned = KeyedSamples(self._readable(groups), config.seed)
            else:
                captioned = KeyedSamples(self._readable(CaptionPairs(config.captions, transform)), config.seed)
            loaders["captioned"] = self._loader(captioned, self.shares["captioned"], prompts, tokenizer, step)
        self.loaders = loaders
        batches = join_batches(iter(loader) for loader in loaders.values())
        if config.class_bank:
            return self._with_class_bank(batches, cast(LabelToPrompt, prompts), tokenizer, step)
        return batches

    def _with_class_bank(
        self, batches: Iterator[dict[str, torch.Tensor]], prompts: LabelToPrompt, tokenizer: Tokenizer, step: int
    ) -> Generator[dict[str, torch.Tensor], None, None]:
        """``--class-bank``: every batch with one prompt of every class that none of its texts stands for, drawn
        from a generator seeded by the run's seed and the batch's step (so a resumed run draws the same bank).

        The labelled images keep their own prompts, which cover the classes the batch holds, so every image meets
        every class for the cost of encoding the absent ones (`unicl.data.batches.append_class_bank`)."""
        try:
            for batch in batches:
                rng = random.Random(derive_seed("class bank", self.config.seed, step))
                yield append_class_bank(batch, prompts, tokenizer, rng, absent_only=True)
                step += 1
        finally:
            # Closing this generator closes the loaders' (join_batches stops their workers).
            close = getattr(batches, "close", None)
            if close is not None:
                close()

    def _readable(self, dataset: CaptionPairs | CaptionGroups | LabelledFolders) -> Any:
        """``dataset`` reporting its unreadable images, or with ``--skip-unreadable`` skipping and counting them."""
        reporting = reporting_unreadable(dataset)
        if not self.config.skip_unreadable:
            return reporting
        skipping = SkippingUnreadable(reporting)
        self._skipping.append(skipping)
        return skipping

    def unreadable_skipped(self) -> int:
        """Reads of unreadable images this rank skipped so far (``--skip-unreadable``)."""
        return sum(int(source.skipped.value) for source in self._skipping)

    def _loader(
        self, dataset: Any, batch_size: int, prompts: LabelToPrompt | None, tokenizer: Tokenizer, step: int
    ) -> DataLoader:
        config, runtime = self.config, self.runtime
        options: dict[str, Any] = {
            "num_workers": config.workers,
            "collate_fn": UnifiedCollate(
                tokenizer, prompts, hash_captions=config.hash_captions, text_labels=text_labelled(config)
            ),
            "pin_memory": runtime.device.type == "cuda",
            # The loader's own generator: creating it does not advance the global one the checkpoint restores.
            "generator": torch.Generator().manual_seed(derive_seed("loader", config.seed, runtime.rank)),
            # A stop signal sent to the process group reaches the workers too: the main process answers it.
            "worker_init_fn": worker_ignores_stop_signals if config.checkpoint_on_signal else None,
        }
        if isinstance(dataset, ShardedCaptions):
            return DataLoader(dataset, batch_size=batch_size, **options)
        sampler = StepBatchSampler(
            len(dataset), batch_size, runtime.rank, runtime.world_size, config.seed, start_step=step
        )
        return DataLoader(dataset, batch_sampler=sampler, **options)

    def position(self, step: int) -> dict[str, Any]:
        """Where each source is after ``step``: samples read by this rank, and epochs where a source has a length (a
        WebDataset stream has none). Stored in every checkpoint and checked on resume (`check_position`)."""
        position: dict[str, Any] = {"step": step}
        for name, loader in self.loaders.items():
            position[f"{name}_samples"] = step * self.shares[name]
            if isinstance(loader.batch_sampler, StepBatchSampler):
                position[f"{name}_epoch"] = loader.batch_sampler.epoch_at(step)
        return position

    def sizes(self) -> dict[str, int]:
        """Samples in each source that has a length. Stored beside `position` and checked with it on resume:
        a source that changed size can leave the epoch as it was (a rank's share is rounded up)."""
        return {
            name: len(loader.dataset)  # type: ignore[arg-type]
            for name, loader in self.loaders.items()
            if isinstance(loader.batch_sampler, StepBatchSampler)
        }

    def check_position(self, checkpoint: Path, stored: dict[str, Any], step: int) -> None:
        """Stop when the data are not at ``step`` where the checkpoint left them (``stored``: its position and sizes),
        for a run resumed with the same options.

        The batch of a step is addressed by the step, the seed, the shares and the sources' sizes: with unchanged
        options (a change is warned about on resuming, and explains a different position) a different position
        means a source changed size on disk (images added to or removed from an ``--image-folder``, rows of a
        ``--captions`` file), so the resumed run would read other samples than the interrupted one.

        Raises:
            TrainingError: naming both positions.
        """
        sized = {**self.position(step), **{f"{name}_length": size for name, size in self.sizes().items()}}
        # A checkpoint written before the sizes were stored is checked on what it holds.
        current = {name: value for name, value in sized.items() if name in stored}
        if stored == current:
            return

        def where(position: dict[str, Any]) -> str:
            return ", ".join(f"{name} {value:.6g}" for name, value in position.items() if name != "step")

        raise TrainingError(
            f"--resume {self.config.resume}: {checkpoint} left the data at step {stored.get('step')} at "
            f"{where(stored)}, but this run's data put that step at {where(current)}: a source holds another number "
            "of samples than when the checkpoint was written (images added to or removed from an --image-folder, "
            "rows of a --captions file); restore the data to go on, or start a new run in another --output"
        )
