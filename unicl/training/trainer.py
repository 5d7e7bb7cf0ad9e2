"""The training run: data, model, optimiser, the loop, checkpoints and evaluation (`train`, `Trainer`).

``python -m unicl.train`` (`unicl.train`) parses its options into a `unicl.training.config.TrainingConfig` and calls
`train`; a Python program builds the configuration itself and calls `train` too.

A run is reproducible step by step: the batch of step ``t`` (which samples, their augmentations and prompts) is a
function of the seed and ``t`` alone (`unicl.training.sampling`, `unicl.training.shards`), and a
checkpoint holds everything else that changes (weights, optimiser, schedule, gradient scaler, every rank's random
generators). Resuming from the checkpoint of step ``t`` therefore continues exactly where the run was.
"""

from __future__ import annotations

import dataclasses
import json
import random
import signal
import time
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, cast

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset
from torchvision.datasets import ImageFolder

from unicl.data.batches import UnifiedCollate
from unicl.data.datasets import CaptionPairs, LabelledFolders, read_caption_file, read_class_names
from unicl.data.headers import check_image_headers
from unicl.data.transforms import image_transform
from unicl.data.unreadable import SkippingUnreadable, UnreadableImage, reporting_unreadable, unreadable_message
from unicl.data.workers import worker_ignores_stop_signals
from unicl.evaluation.zeroshot import zeroshot_accuracy
from unicl.loss.module import UniCLLoss
from unicl.models import (
    UniCLModel,
    check_tokenizer_fits,
    create_model,
    get_tokenizer,
    model_tokenizer,
    preset_tokenizer,
)
from unicl.models.presets import TRAINED_TOKENIZER
from unicl.text.prompts import LabelToPrompt
from unicl.text.tokenizer import Tokenizer
from unicl.training.checkpoints import CheckpointDirectory, DamagedCheckpoint, UnusableCheckpoint, read_checkpoint
from unicl.training.config import TrainingConfig
from unicl.training.gradient_cache import cached_backward
from unicl.training.logs import RunLog
from unicl.training.mixing import batch_shares, join_batches
from unicl.training.options import check_options
from unicl.training.runtime import Runtime, start_runtime, stop_runtime
from unicl.training.sampling import KeyedSamples, StepBatchSampler, derive_seed
from unicl.training.schedule import warmup_cosine
from unicl.training.shards import ShardedCaptions, read_captions
from unicl.training.signals import StopSignals

#: Bumped when the checkpoint's layout changes.
CHECKPOINT_FORMAT = 1
#: WebDataset captions a trained tokenizer learns from (the shards' first, in their listed order): read by rank 0
#: while the others wait, so few enough to read well within a collective's timeout from remote shards.
TOKENIZER_CAPTIONS = 20_000
#: Options that change what an uninterrupted run would compute; a resumed run warns when one differs.
REPRODUCIBILITY_OPTIONS = (
    "model", "pretrained", "tokenizer", "image_folder", "classnames", "captions", "webdataset", "ratio",
    "hash_captions", "no_augmentation", "batch_size", "steps", "lr", "warmup", "min_lr", "weight_decay", "beta1",
    "beta2", "eps", "grad_clip", "loss_backend", "local_loss", "precision", "grad_checkpointing", "seed",
    "micro_batch", "skip_unreadable",
)  # fmt: skip


class TrainingError(RuntimeError):
    """A run that cannot go on; the message says why and what to change."""


def _diverged(step: int) -> str:
    return (
        f"the loss or the gradient norm is not finite at step {step}: training diverged, and no checkpoint of these "
        "weights was written; resume from an earlier checkpoint (--resume auto) with a lower --lr, more --warmup or "
        "a --grad-clip"
    )


def gradient_norm(parameters: Iterator[torch.nn.Parameter]) -> torch.Tensor:
    """The global L2 norm of the parameters' gradients (what ``clip_grad_norm_`` computes, without rewriting every
    gradient by a factor of one); on the device, no sync."""
    norms = [parameter.grad.detach().norm() for parameter in parameters if parameter.grad is not None]
    if not norms:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(norms))


def run_configuration(config: TrainingConfig) -> dict[str, Any]:
    """The options as plain values (paths as strings), as stored in checkpoints and ``final/training.json``."""

    def plain(value: Any) -> Any:
        if isinstance(value, Path):
            return str(value)
        if isinstance(value, list):
            return [plain(item) for item in value]
        return value

    return {item.name: plain(getattr(config, item.name)) for item in dataclasses.fields(config)}


def random_states(device: torch.device) -> dict[str, Any]:
    """This process's random generators: Python's, torch's CPU and (on CUDA) the device's."""
    return {
        "python": random.getstate(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
    }


def restore_random_states(states: dict[str, Any], device: torch.device) -> None:
    """Undo `random_states`."""
    random.setstate(states["python"])
    torch.set_rng_state(states["torch"])
    if device.type == "cuda" and states.get("cuda") is not None:
        torch.cuda.set_rng_state(states["cuda"], device)


class Trainer:
    """One run: everything `train` builds from the options, and the loop.

    Args:
        config: the options; checked here (`unicl.training.options.check_options`).
        runtime: this process's place in the run.

    Raises:
        TypeError, ValueError: an option of the wrong type or an inconsistent one (`check_options`).
        TrainingError: a run that cannot start (the message names the option to change).
        FileNotFoundError, ValueError, ImportError: data that cannot be read, a missing optional package.
    """

    def __init__(self, config: TrainingConfig, runtime: Runtime) -> None:
        config = check_options(config)
        self.config, self.runtime = config, runtime
        self.device = runtime.device
        self._folders: LabelledFolders | None = None
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        overrides: dict[str, Any] = {}
        if config.grad_checkpointing:
            overrides = {"image": {"grad_checkpointing": True}, "text": {"grad_checkpointing": True}}
        self.model: UniCLModel = create_model(config.model, pretrained=config.pretrained, **overrides).to(self.device)
        self.train_transform = image_transform(self.model, train=not config.no_augmentation)
        self.precision = config.precision
        if self.precision == "auto":
            self.precision = "bf16" if self.device.type == "cuda" else "fp32"
        if self.precision == "fp16" and self.device.type != "cuda":
            raise TrainingError("--precision fp16 needs CUDA (its gradient scaler); use bf16 or fp32 on the CPU")
        self.optimizer = torch.optim.AdamW(
            self.model.param_groups(config.weight_decay),
            lr=config.lr,
            betas=(config.beta1, config.beta2),
            eps=config.eps,
        )
        floor = config.min_lr / config.lr if config.lr > 0 else 0.0
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(config.steps, config.warmup, floor)
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        # Every rank's batch is --batch-size samples at every step, so the loss skips the size exchange; the model's
        # forward returns unit features, so the loss does not normalise them again.
        try:
            self.loss_fn = UniCLLoss(
                backend=config.loss_backend, normalize=False, gather_distributed=True, local_loss=config.local_loss,
                equal_batches=True,
            )  # fmt: skip
        except ValueError as error:
            raise TrainingError(f"--loss-backend: {error}") from None
        self.checkpoints = CheckpointDirectory(config.output / "checkpoints", keep=config.keep)
        self.step = 0
        # -1, or the first step whose loss or gradient norm was not finite (see _note_nonfinite).
        self._first_nonfinite = torch.full((), -1, dtype=torch.long, device=self.device)
        self._resumed_random: dict[str, Any] | None = None
        self._resumed_tokenizer: dict[str, Any] | None = None
        self._resumed_position: dict[str, Any] | None = None
        self._changed_options: list[str] = []
        self._skipping: list[SkippingUnreadable] = []
        resumed = self._resume()
        self.tokenizer = self._tokenizer()
        self.log = RunLog(
            config.output, config.steps, self.step, enabled=runtime.is_main,
            tensorboard=config.tensorboard, progress=not config.no_progress,
        )  # fmt: skip
        if resumed is not None:
            self.log.message(f"resumed from {resumed} at step {self.step}")
            self.log.record(self.step, "resume", {"checkpoint": str(resumed)})
        if config.check_data:
            self._check_data()
        self.loaders = self._loaders()
        if resumed is not None and self._resumed_position is not None:
            self._check_data_position(resumed, self._resumed_position)
        self.batches = join_batches(iter(loader) for loader in self.loaders.values())
        self.eval_set = self._evaluation_data()
        self.network: torch.nn.Module = self.model
        if runtime.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.network = DistributedDataParallel(self.model, device_ids=device_ids)

    # --- text ----------------------------------------------------------------------------------------------------

    def _tokenizer(self) -> Tokenizer:
        """The tokenizer of the run, checked against the text tower: a resumed run's is the checkpoint's; else
        ``--tokenizer``; else the one saved with ``--pretrained``; else the preset's own (CLIP's BPE, or one trained
        on this run's text for ``TRAINED_TOKENIZER`` presets)."""
        config, context_length = self.config, self.model.config.text.context_length
        requested = None
        if config.tokenizer is not None:
            try:
                requested = get_tokenizer(config.tokenizer, context_length)
            except (FileNotFoundError, ValueError) as error:
                raise TrainingError(f"--tokenizer {config.tokenizer!r}: {error}") from None
        if self._resumed_tokenizer is not None:
            tokenizer = Tokenizer.from_state(self._resumed_tokenizer, context_length, where="the checkpoint")
            if requested is not None and requested.tokenizer.to_str() != tokenizer.tokenizer.to_str():
                raise TrainingError(
                    f"--tokenizer {config.tokenizer!r} is not the tokenizer the checkpoint was trained with; leave "
                    "--tokenizer out to go on with the checkpoint's"
                )
            argument = "the checkpoint's tokenizer"
        elif requested is not None:
            tokenizer, argument = requested, "--tokenizer"
        elif (saved := self._pretrained_tokenizer()) is not None:
            tokenizer, argument = saved, f"--pretrained {config.pretrained!r}'s tokenizer"
        elif preset_tokenizer(config.model) == TRAINED_TOKENIZER:
            tokenizer, argument = self._trained_tokenizer(), "the trained tokenizer"
        else:
            tokenizer, argument = Tokenizer.clip(context_length), "CLIP's tokenizer"
        check_tokenizer_fits(tokenizer, self.model.config, argument, config.model)
        return tokenizer

    def _pretrained_tokenizer(self) -> Tokenizer | None:
        """The tokenizer that goes with ``--pretrained`` (`unicl.models.model_tokenizer`), or ``None`` without it;
        a preset that trains its tokenizer never trains a new one for pretrained weights."""
        config = self.config
        if config.pretrained is None:
            return None
        try:
            return model_tokenizer(config.model, config.pretrained, self.model.config.text.context_length)
        except (FileNotFoundError, ValueError) as error:
            raise TrainingError(f"--pretrained {config.pretrained!r}: {error}; pass --tokenizer") from None

    def _trained_tokenizer(self) -> Tokenizer:
        """A byte-level BPE with the text tower's vocabulary and context, trained by rank 0 on every prompt of every
        class and the captions (all of a caption file, the first ``TOKENIZER_CAPTIONS`` of WebDataset shards),
        saved as ``OUTPUT/tokenizer.json`` and sent to the other ranks (with any error, so that all of them stop)."""
        config, text = self.config, self.model.config.text
        state: dict[str, Any] | None = None
        problem: str | None = None
        if self.runtime.is_main:
            try:
                corpus: list[str] = []
                if config.image_folder:
                    prompts = LabelToPrompt(self._labelled().class_names)
                    corpus += [prompt for class_prompts in prompts for prompt in class_prompts]
                for path in config.captions:
                    corpus += [caption for _, caption in read_caption_file(path)]
                if config.webdataset:
                    corpus += read_captions(config.webdataset, TOKENIZER_CAPTIONS)
                tokenizer = Tokenizer.train(corpus, vocab_size=text.vocab_size, context_length=text.context_length)
                tokenizer.save(config.output)
                state = tokenizer.to_state()
            except (FileNotFoundError, ValueError, ImportError, OSError) as error:
                problem = f"training the tokenizer of {config.model}: {error}"
        state, problem = self.runtime.broadcast((state, problem))
        if problem is not None or state is None:
            raise TrainingError(problem or "rank 0 sent no tokenizer")
        return Tokenizer.from_state(state, text.context_length, where="rank 0's tokenizer")

    # --- data ----------------------------------------------------------------------------------------------------

    def _labelled(self) -> LabelledFolders:
        """The ``--image-folder`` roots as one dataset (scanned once)."""
        if self._folders is None:
            config = self.config
            names = [read_class_names(path) for path in config.classnames] if config.classnames else None
            self._folders = LabelledFolders(config.image_folder, self.train_transform, names)
        return self._folders

    def _check_data(self) -> None:
        """``--check-data``: every image file's header, read by rank 0 before the first step (the others wait for the
        verdict, so all of them stop on a bad file)."""
        config = self.config
        problem: str | None = None
        if self.runtime.is_main:
            files: list[tuple[str | Path, str]] = []
            if config.image_folder:
                folders = self._labelled()
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
                self.log.message(
                    f"--check-data: {len(bad)} of {len(files)} image files fail their header check, skipped when "
                    f"read (--skip-unreadable): {shown}"
                )
            else:
                self.log.message(
                    f"--check-data: the headers of {len(files)} image files read in {seconds:.1f} s, none bad"
                )
            self.log.record(self.step, "check_data", {"files": len(files), "bad": len(bad), "seconds": seconds})
        problem = self.runtime.broadcast(problem)
        if problem is not None:
            raise TrainingError(problem)

    def _loaders(self) -> dict[str, DataLoader]:
        """One loader per source, from the step the run is at, each giving its share of every batch
        (`unicl.training.mixing`)."""
        config, runtime = self.config, self.runtime
        transform = self.train_transform
        # check_options decided the ratio where it was left to the data given.
        self.shares = batch_shares(config.batch_size, cast(float, config.ratio))
        prompts = None
        loaders = {}
        if "labelled" in self.shares:
            folders = self._labelled()
            prompts = LabelToPrompt(folders.class_names, seed=config.seed)
            keyed = KeyedSamples(self._readable(folders), config.seed, prompts)
            loaders["labelled"] = self._loader(keyed, self.shares["labelled"], prompts)
        if "captioned" in self.shares:
            if config.webdataset:
                captioned: Any = ShardedCaptions(
                    config.webdataset, transform, self.shares["captioned"], config.seed,
                    runtime.rank, runtime.world_size, config.workers, start_step=self.step,
                )  # fmt: skip
            else:
                captioned = KeyedSamples(self._readable(CaptionPairs(config.captions, transform)), config.seed)
            loaders["captioned"] = self._loader(captioned, self.shares["captioned"], prompts)
        return loaders

    def _readable(self, dataset: CaptionPairs | LabelledFolders) -> Any:
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

    def _loader(self, dataset: Any, batch_size: int, prompts: LabelToPrompt | None) -> DataLoader:
        config, runtime = self.config, self.runtime
        options: dict[str, Any] = {
            "num_workers": config.workers,
            "collate_fn": UnifiedCollate(self.tokenizer, prompts, hash_captions=config.hash_captions),
            "pin_memory": self.device.type == "cuda",
            # The loader's own generator: creating it does not advance the global one the checkpoint restores.
            "generator": torch.Generator().manual_seed(derive_seed("loader", config.seed, runtime.rank)),
            # A stop signal sent to the process group reaches the workers too: the main process answers it.
            "worker_init_fn": worker_ignores_stop_signals if config.checkpoint_on_signal else None,
        }
        if isinstance(dataset, ShardedCaptions):
            return DataLoader(dataset, batch_size=batch_size, **options)
        sampler = StepBatchSampler(
            len(dataset), batch_size, runtime.rank, runtime.world_size, config.seed, start_step=self.step
        )
        return DataLoader(dataset, batch_sampler=sampler, **options)

    def data_position(self) -> dict[str, Any]:
        """Where each source is after the current step: samples read by this rank, and epochs where a source has
        a length (a WebDataset stream has none). Stored in every checkpoint and checked on resume
        (`_check_data_position`)."""
        position: dict[str, Any] = {"step": self.step}
        for name, loader in self.loaders.items():
            position[f"{name}_samples"] = self.step * self.shares[name]
            if isinstance(loader.batch_sampler, StepBatchSampler):
                position[f"{name}_epoch"] = loader.batch_sampler.epoch_at(self.step)
        return position

    def data_sizes(self) -> dict[str, int]:
        """Samples in each source that has a length. Stored beside `data_position` and checked with it on resume:
        a source that changed size can leave the epoch as it was (a rank's share is rounded up)."""
        return {
            name: len(loader.dataset)  # type: ignore[arg-type]
            for name, loader in self.loaders.items()
            if isinstance(loader.batch_sampler, StepBatchSampler)
        }

    def _position_and_sizes(self) -> dict[str, Any]:
        return {**self.data_position(), **{f"{name}_length": size for name, size in self.data_sizes().items()}}

    def _check_data_position(self, checkpoint: Path, stored: dict[str, Any]) -> None:
        """Stop when the data are not where the checkpoint left them, though the options are the same.

        The batch of a step is addressed by the step, the seed, the shares and the sources' sizes: with unchanged
        options (a change is warned about in `_load_state`, and explains a different position) a different position
        means a source changed size on disk (images added to or removed from an ``--image-folder``, rows of a
        ``--captions`` file), so the resumed run would read other samples than the interrupted one.
        """
        if self._changed_options:
            return
        # A checkpoint written before the sizes were stored is checked on what it holds.
        current = {name: value for name, value in self._position_and_sizes().items() if name in stored}
        if stored == current:
            return

        def where(position: dict[str, Any]) -> str:
            return ", ".join(f"{name} {value:.6g}" for name, value in position.items() if name != "step")

        raise TrainingError(
            f"--resume {self.config.resume}: {checkpoint} left the data at step {stored.get('step')} at "
            f"{where(stored)}, "
            f"but this run's data put that step at {where(current)}: a source holds another number of samples than "
            "when the checkpoint was written (images added to or removed from an --image-folder, rows of a "
            "--captions file); restore the data to go on, or start a new run in another --output"
        )

    def _evaluation_data(self) -> Subset | None:
        """This rank's share of the held-out ImageFolder (every ``world_size``-th image)."""
        config = self.config
        if config.eval_folder is None:
            return None
        folder = reporting_unreadable(ImageFolder(str(config.eval_folder), transform=image_transform(self.model)))
        self.eval_class_names = folder.classes
        if config.eval_classnames is not None:
            self.eval_class_names = read_class_names(config.eval_classnames, len(folder.classes))
        return Subset(folder, range(self.runtime.rank, len(folder), self.runtime.world_size))

    # --- checkpoints ---------------------------------------------------------------------------------------------

    def _resume(self) -> Path | None:
        """Load the checkpoint ``--resume`` names (rank 0 picks it, every rank reads it); returns its path."""
        config = self.config
        if config.resume is None:
            # Every rank looks (they share the directory), so all of them stop rather than one leaving the others
            # waiting in a collective.
            if self.checkpoints.paths():
                raise TrainingError(
                    f"{self.checkpoints.directory} already holds checkpoints: pass --resume auto to continue that "
                    "run, or choose another --output"
                )
            return None
        choice: str | None = config.resume
        state: dict[str, Any] | None = None
        if config.resume == "auto":
            choice, problem = None, None
            if self.runtime.is_main:
                try:
                    found = self.checkpoints.load_latest()
                except UnusableCheckpoint as error:
                    problem = f"--resume auto: {error}; resume from an older one with --resume PATH, or fix the file"
                else:
                    if found is not None:
                        choice, state = str(found[0]), found[1]
            # Every rank learns of the problem, so all of them stop rather than wait in the broadcast below.
            choice, problem = self.runtime.broadcast((choice, problem))
            if problem is not None:
                raise TrainingError(problem)
        if choice is None:
            if self.runtime.is_main:
                print(f"no checkpoint in {self.checkpoints.directory}; starting at step 0", flush=True)
            return None
        path = Path(choice)
        try:
            if state is None:
                state = read_checkpoint(path)
        except (DamagedCheckpoint, UnusableCheckpoint) as error:
            raise TrainingError(f"--resume {choice}: not a checkpoint this run can use: {error}") from None
        try:
            self._load_state(state)
        except TrainingError as error:
            raise TrainingError(f"--resume {config.resume}: {path}: {error}") from None
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            # load_state_dict lists every mismatched tensor over many lines: one line, cut to a readable length.
            details = " ".join(str(error).split())
            raise TrainingError(
                f"--resume {config.resume}: {path} cannot be resumed from: {type(error).__name__}: {details[:400]}"
            ) from None
        return path

    def _load_state(self, state: dict[str, Any]) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise TrainingError(
                f"the checkpoint has format {state.get('format')!r}; this version of unicl.train reads format "
                f"{CHECKPOINT_FORMAT}"
            )
        stored = state["config"]
        if stored.get("model") != self.config.model:
            raise TrainingError(f"the checkpoint trains {stored.get('model')!r}, not --model {self.config.model!r}")
        current = run_configuration(self.config)
        changed = [name for name in REPRODUCIBILITY_OPTIONS if stored.get(name) != current.get(name)]
        # WebDataset streams are dealt to the data-loading workers, so there the number of workers orders the data.
        # (0 and 1 workers both read one stream.)
        streams = max(int(stored.get("workers") or 0), 1), max(self.config.workers, 1)
        if (self.config.webdataset or stored.get("webdataset")) and streams[0] != streams[1]:
            changed.append("workers")
        if state["world_size"] != self.runtime.world_size:
            changed.append(f"ranks ({state['world_size']} then, {self.runtime.world_size} now)")
        self._changed_options = changed
        if changed and self.runtime.is_main:
            warnings.warn(
                f"resuming with changed options ({', '.join(changed)}): the run goes on, but it will not equal an "
                "uninterrupted run",
                stacklevel=2,
            )
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        ranks = state["random"]
        self._resumed_random = ranks[self.runtime.rank % len(ranks)]
        self._resumed_tokenizer = state.get("tokenizer")  # checkpoints before the tokenizer was stored have none
        sizes = state.get("data_sizes", {})  # checkpoints before the sizes were stored have none
        self._resumed_position = {**state["data"], **{f"{name}_length": size for name, size in sizes.items()}}

    def save_checkpoint(self) -> None:
        """Write the checkpoint of the current step (a collective: every rank calls it)."""
        self.check_finite()
        states = self.runtime.gather(random_states(self.device))
        if not self.runtime.is_main:
            return
        path = self.checkpoints.save(
            self.step,
            {
                "format": CHECKPOINT_FORMAT,
                "step": self.step,
                "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "random": states,
                "world_size": self.runtime.world_size,
                "data": self.data_position(),
                "data_sizes": self.data_sizes(),
                "config": run_configuration(self.config),
                "tokenizer": self.tokenizer.to_state(),
            },
        )
        self.log.record(self.step, "checkpoint", {"path": str(path)})

    # --- the loop ------------------------------------------------------------------------------------------------

    def autocast(self) -> AbstractContextManager:
        """Mixed precision for the forward pass (nothing in fp32)."""
        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def train_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """One optimiser step on ``batch``; returns this rank's loss (detached)."""
        moved = {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}
        if self.config.micro_batch is not None:
            texts = {"input_ids": moved["input_ids"], "attention_mask": moved["attention_mask"]}
            with self.autocast():
                loss = cached_backward(
                    self.network, moved["images"], texts, moved["labels"], loss_fn=self.loss_fn,
                    micro_batch=self.config.micro_batch, scaler=self.scaler if self.scaler.is_enabled() else None,
                )  # fmt: skip
        else:
            with self.autocast():
                outputs = self.network(moved["images"], moved["input_ids"], moved["attention_mask"])
                loss = self.loss_fn(**outputs, labels=moved["labels"])
            self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        if self.config.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        else:
            norm = gradient_norm(self.model.parameters())
        self._note_nonfinite(loss.detach(), norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.model.bound_logit_scale_()
        return loss.detach()

    def _note_nonfinite(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Remember, on the device and without a sync, the first step whose loss or gradient norm is not finite.

        Under fp16 a non-finite gradient is the gradient scaler's business (it skips that update and lowers its
        scale, leaving the weights as they were), so there only the loss counts.
        """
        finite = torch.isfinite(loss.float())
        if not self.scaler.is_enabled():
            finite = finite & torch.isfinite(grad_norm)
        step = torch.full_like(self._first_nonfinite, self.step + 1)
        self._first_nonfinite = torch.where(~finite & (self._first_nonfinite < 0), step, self._first_nonfinite)

    def check_finite(self) -> None:
        """Stop, on every rank, when any rank saw a non-finite loss or gradient norm (a collective and a sync).

        Called before every checkpoint and log record, so no checkpoint of diverged weights is ever written.
        """
        first = self.runtime.max(int(self._first_nonfinite))
        if first >= 0:
            raise TrainingError(_diverged(first))

    def evaluate(self) -> dict[str, float]:
        """Zero-shot accuracy on ``--eval-folder``, every rank scoring its share (a collective)."""
        assert self.eval_set is not None
        self.check_finite()
        counts = [0.0, 0.0, 0.0]
        if len(self.eval_set) > 0:
            scores = zeroshot_accuracy(
                self.model, self.eval_set, self.eval_class_names, self.tokenizer,
                batch_size=self.config.eval_batch_size, workers=self.config.workers, device=self.device,
                precision="bf16" if self.precision == "bf16" else "fp32",
            )  # fmt: skip
            images = scores["images"]
            # Unrounded: ties earn fractional credit (the metrics' expected credit of random tie-breaking).
            counts = [scores["top1"] * images, scores.get("top5", 0.0) * images, images]
        self.model.train()
        top1, top5, images = self.runtime.sum(counts)
        results = {"top1": top1 / images, "images": int(images), "classes": len(self.eval_class_names)}
        if len(self.eval_class_names) >= 5:
            results["top5"] = top5 / images
        self.log.record(self.step, "eval", results)
        return results

    def run(self) -> Path | None:
        """Train to ``--steps`` (or ``--stop-after``); returns ``OUTPUT/final`` when the run is complete."""
        config = self.config
        if self._resumed_random is not None:
            restore_random_states(self._resumed_random, self.device)
        end = config.steps if config.stop_after is None else min(config.steps, config.stop_after)
        self.model.train()
        try:
            with StopSignals(enabled=config.checkpoint_on_signal) as stop:
                self._train_until(end, stop)
            skipped = self._all_skipped()
            if skipped is not None:
                self.log.message(f"--skip-unreadable: {skipped} reads of unreadable images skipped")
                self.log.record(self.step, "unreadable", {"skipped": skipped})
            if self.step < config.steps:
                self.log.message(f"stopped after step {self.step} of {config.steps} (--stop-after)")
                return None
            return self._write_final()
        finally:
            # The loaders' workers leave now, asked, before the interpreter's exit would wait for them.
            self.batches.close()
            self.log.close()

    def _train_until(self, end: int, stop: StopSignals) -> None:
        config = self.config
        losses: list[torch.Tensor] = []
        started, started_step = time.perf_counter(), self.step
        while self.step < end:
            try:
                losses.append(self.train_step(next(self.batches)))
            except (ValueError, RuntimeError):
                # Non-finite weights from an earlier step make a later one fail its input checks: say why. No
                # collective here (the other ranks may be in another one), and the original error stays if the
                # flag cannot be read (a device that failed).
                try:
                    first = int(self._first_nonfinite)
                except RuntimeError:
                    first = -1
                if first >= 0:
                    raise TrainingError(_diverged(first)) from None
                raise
            self.step += 1
            self.log.advance()
            if self.step % config.log_every == 0 or self.step == end:
                self._report(losses, time.perf_counter() - started, self.step - started_step)
                losses, started, started_step = [], time.perf_counter(), self.step
            saved = (config.save_every and self.step % config.save_every == 0) or self.step == config.steps
            if saved:
                self.save_checkpoint()
            if self.eval_set is not None and (
                (config.eval_every and self.step % config.eval_every == 0) or self.step == config.steps
            ):
                self.evaluate()
            # Every rank learns of a signal any rank received, so all of them stop at this same step.
            received = self.runtime.max(stop.received) if config.checkpoint_on_signal else 0
            if received and self.step < config.steps:
                if not saved:
                    self.save_checkpoint()
                self.log.record(self.step, "signal", {"signal": signal.Signals(received).name})
                self.log.message(f"{signal.Signals(received).name} received: checkpoint of step {self.step} "
                                 "written; resume with --resume auto")  # fmt: skip
                raise SystemExit(128 + received)

    def _report(self, losses: list[torch.Tensor], seconds: float, steps: int) -> None:
        self.check_finite()
        loss = self.runtime.mean(float(torch.stack(losses).float().mean()))
        self.log.record(
            self.step,
            "train",
            {
                "loss": loss,
                "lr": self.scheduler.get_last_lr()[0],
                "logit_scale": float(self.model.clamped_logit_scale().detach()),
                "samples_per_second": steps * self.config.batch_size * self.runtime.world_size / max(seconds, 1e-9),
                **{name: value for name, value in self.data_position().items() if name.endswith("_epoch")},
                **({"unreadable_skipped": skipped} if (skipped := self._all_skipped()) is not None else {}),
            },
        )

    def _all_skipped(self) -> int | None:
        """Reads of unreadable images every rank skipped so far, or ``None`` without ``--skip-unreadable`` (a
        collective)."""
        if not self.config.skip_unreadable:
            return None
        return int(self.runtime.sum([float(self.unreadable_skipped())])[0])

    def _write_final(self) -> Path:
        """The final weights (``save_pretrained``), the tokenizer file and the run's options, by rank 0."""
        final = self.config.output / "final"
        if self.runtime.is_main:
            self.model.save_pretrained(final, tokenizer=self.tokenizer)
            summary = {"step": self.step, "options": run_configuration(self.config)}
            (final / "training.json").write_text(json.dumps(summary, indent=1) + "\n")
            self.log.message(f"final weights in {final}")
        return final


def train(config: TrainingConfig) -> Path | None:
    """Train with the options ``config`` on this process (one rank of a ``torchrun`` group, or alone).

    Args:
        config: the options (``python -m unicl.train`` builds them from its command line); checked here
            (`unicl.training.options.check_options`).

    Returns:
        ``OUTPUT/final`` (the weights in ``save_pretrained`` format, the tokenizer, ``training.json``), or ``None``
        when ``stop_after`` ended the run early.

    Raises:
        TypeError: an option of the wrong type.
        ValueError: an inconsistent option or a device this machine does not have.
        TrainingError: a run that cannot start or go on (the message names the option to change).
        FileNotFoundError, ImportError: data that cannot be read, a missing optional package.
    """
    config = check_options(config)
    runtime = start_runtime(config.device)
    try:
        return Trainer(config, runtime).run()
    except UnreadableImage as error:  # found only when a batch reads it, in a worker or here
        message = unreadable_message(error)
        raise TrainingError(f"{_argument_holding(config, message)}: {message}") from None
    finally:
        stop_runtime()


def _argument_holding(config: TrainingConfig, message: str) -> str:
    """The option whose files the unreadable image named in ``message`` is among."""
    sources = [
        *(("--image-folder", folder) for folder in config.image_folder or ()),
        *(("--captions", Path(captions).parent) for captions in config.captions or ()),
        *([("--eval-folder", config.eval_folder)] if config.eval_folder is not None else []),
    ]
    held = [(len(str(root)), option) for option, root in sources if str(root) in message]
    return max(held)[1] if held else "the training data"
