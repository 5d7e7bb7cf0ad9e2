"""The training run: `train` and `Trainer`, which builds a run from its configuration and runs the loop.

``python -m unicl.train`` (`unicl.train`) parses its options into a `unicl.training.config.TrainingConfig` and calls
`train`; a Python program builds the configuration itself and calls `train` too. The run's parts, each in a module of
its own: the data and their loaders (`unicl.training.run_data`), the tokenizer (`unicl.training.run_tokenizer`), the
optimiser step (`unicl.training.step`), what a checkpoint holds and how a resumed run finds it
(`unicl.training.state`), the held-out evaluation (`unicl.training.held_out`), the log records and final weights
(`unicl.training.reporting`) and the stop signals (`unicl.training.signals`).

A run is reproducible step by step: the batch of step ``t`` (which samples, their augmentations and prompts) is a
function of the seed and ``t`` alone (`unicl.training.sampling`, `unicl.training.shards`), and a
checkpoint holds everything else that changes (weights, optimiser, schedule, gradient scaler, every rank's random
generators). Resuming from the checkpoint of step ``t`` therefore continues exactly where the run was.
"""

from __future__ import annotations

import random
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from unicl.data.unreadable import UnreadableImage, unreadable_message
from unicl.loss.functional import SIGMOID_LOGIT_BIAS, SIGMOID_LOGIT_SCALE
from unicl.loss.module import UniCLLoss, UniCLSigmoidLoss
from unicl.models import UniCLModel, create_model
from unicl.training.checkpoints import CheckpointDirectory
from unicl.training.config import TrainingConfig
from unicl.training.errors import TrainingError
from unicl.training.held_out import HeldOut
from unicl.training.logs import RunLog
from unicl.training.options import check_options, text_labelled
from unicl.training.reporting import train_record, write_final
from unicl.training.run_data import RunData
from unicl.training.run_tokenizer import run_tokenizer
from unicl.training.runtime import Runtime, start_runtime, stop_runtime
from unicl.training.signals import StopSignals
from unicl.training.state import (
    CHECKPOINT_FORMAT,
    changed_options,
    check_resumable,
    find_checkpoint,
    random_states,
    restore_random_states,
    run_configuration,
)
from unicl.training.step import TrainStep

__all__ = ["Trainer", "TrainingError", "train"]


class Trainer:
    """One run: everything `train` builds from the options, and the loop.

    Args:
        config: the options; checked here (`unicl.training.options.check_options`).
        runtime: this process's place in the run.

    Attributes:
        step: the steps done.
        model: the model trained.
        data: the training data (`unicl.training.run_data.RunData`); ``data.shares`` the samples of each source
            in every batch.
        batches: the batches of the next steps.
        train_step: the optimiser step (`unicl.training.step.TrainStep`).
        tokenizer: the run's tokenizer.
        held_out: the held-out data (``None`` without ``eval_folder``).
        log: the run's log.

    Raises:
        TypeError, ValueError: an option of the wrong type or an inconsistent one (`check_options`).
        TrainingError: a run that cannot start (the message names the option to change).
        FileNotFoundError, ValueError, ImportError: data that cannot be read, a missing optional package.
    """

    def __init__(self, config: TrainingConfig, runtime: Runtime) -> None:
        config = check_options(config)
        self.config, self.runtime = config, runtime
        self.device = runtime.device
        # The seeds come first: the initial weights are the first draws.
        torch.manual_seed(config.seed)
        random.seed(config.seed)
        overrides: dict[str, Any] = {}
        if config.grad_checkpointing:
            overrides = {"image": {"grad_checkpointing": True}, "text": {"grad_checkpointing": True}}
        if config.loss == "sigmoid":
            # SigLIP's start: logit scale 10 (the model stores its log) and a learnable bias of -10, so that every
            # pair begins near σ(-10 ± 10): the many negatives contribute little loss at first.
            overrides.update(init_temperature=1 / SIGMOID_LOGIT_SCALE, logit_bias=SIGMOID_LOGIT_BIAS)
        self.model: UniCLModel = create_model(config.model, pretrained=config.pretrained, **overrides).to(self.device)
        if config.loss == "softmax" and self.model.logit_bias is not None:
            # Only a model of another library can come with a bias here (a SigLIP model): its objective is sigmoid.
            raise TrainingError(
                f"--loss: {config.model} has a logit bias (a SigLIP model); train it with --loss sigmoid"
            )
        self.data = RunData(config, runtime, self.model)
        # Every rank's batch is --batch-size images at every step, and without text labels as many texts, so the loss
        # skips the size exchange; with them a rank's text count varies (captions per image, hard negatives, the
        # classes its images lack), so the sizes are exchanged. The model's forward returns unit features, so the
        # loss does not normalise them again.
        objective = UniCLSigmoidLoss if config.loss == "sigmoid" else UniCLLoss
        try:
            loss_fn = objective(
                backend=config.loss_backend, normalize=False, gather_distributed=True, local_loss=config.local_loss,
                equal_batches=not text_labelled(config),
            )  # fmt: skip
        except ValueError as error:
            raise TrainingError(f"--loss-backend: {error}") from None
        self.train_step = TrainStep(config, self.model, loss_fn, self.device)
        self.checkpoints = CheckpointDirectory(config.output / "checkpoints", keep=config.keep)
        self.step = 0
        # What a resumed run takes from its checkpoint besides the weights and the step's state (see _load_state).
        self._resumed: dict[str, Any] | None = None
        self._changed_options: list[str] = []
        resumed = self._resume()
        self.tokenizer = run_tokenizer(
            config, self.model, runtime, self.data, self._resumed.get("tokenizer") if self._resumed else None
        )
        self.log = RunLog(
            config.output, config.steps, self.step, enabled=runtime.is_main,
            tensorboard=config.tensorboard, progress=not config.no_progress,
        )  # fmt: skip
        if resumed is not None:
            self.log.message(f"resumed from {resumed} at step {self.step}")
            self.log.record(self.step, "resume", {"checkpoint": str(resumed)})
        if config.check_data:
            self.data.check_files(self.log, self.step)
        self.batches = self.data.start(self.tokenizer, self.step)
        if self._resumed is not None and resumed is not None and not self._changed_options:
            # Checkpoints written before the sizes were stored have none.
            sizes = self._resumed.get("data_sizes", {})
            stored = {**self._resumed["data"], **{f"{name}_length": size for name, size in sizes.items()}}
            self.data.check_position(resumed, stored, self.step)
        self.held_out = None
        if config.eval_folder is not None:
            self.held_out = HeldOut(config.eval_folder, config.eval_classnames, self.model, runtime)
        if runtime.distributed:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_step.network = DistributedDataParallel(self.model, device_ids=device_ids)

    @property
    def shares(self) -> dict[str, int]:
        """Samples of each source (``"labelled"``, ``"captioned"``) in every batch."""
        return self.data.shares

    # --- checkpoints ---------------------------------------------------------------------------------------------

    def _resume(self) -> Path | None:
        """Load the checkpoint ``--resume`` names (rank 0 picks it, every rank reads it); returns its path."""
        found = find_checkpoint(self.config, self.checkpoints, self.runtime)
        if found is None:
            return None
        path, state = found
        try:
            self._load_state(state)
        except TrainingError as error:
            raise TrainingError(f"--resume {self.config.resume}: {path}: {error}") from None
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            # load_state_dict lists every mismatched tensor over many lines: one line, cut to a readable length.
            details = " ".join(str(error).split())
            raise TrainingError(
                f"--resume {self.config.resume}: {path} cannot be resumed from: {type(error).__name__}: {details[:400]}"
            ) from None
        return path

    def _load_state(self, state: dict[str, Any]) -> None:
        check_resumable(state, self.config)
        self._changed_options = changed_options(state, self.config, self.runtime.world_size)
        if self._changed_options and self.runtime.is_main:
            warnings.warn(
                f"resuming with changed options ({', '.join(self._changed_options)}): the run goes on, but it will "
                "not equal an uninterrupted run",
                stacklevel=2,
            )
        self.model.load_state_dict(state["model"])
        self.train_step.load_state_dict(state)
        self.step = int(state["step"])
        ranks = state["random"]
        self._resumed = {
            "random": ranks[self.runtime.rank % len(ranks)],
            "tokenizer": state.get("tokenizer"),  # checkpoints before the tokenizer was stored have none
            "data": state["data"],
            "data_sizes": state.get("data_sizes", {}),
        }

    def save_checkpoint(self) -> None:
        """Write the checkpoint of the current step (a collective: every rank calls it)."""
        self.train_step.check_finite(self.runtime)
        states = self.runtime.gather(random_states(self.device))
        if not self.runtime.is_main:
            return
        path = self.checkpoints.save(
            self.step,
            {
                "format": CHECKPOINT_FORMAT,
                "step": self.step,
                "model": self.model.state_dict(),
                **self.train_step.state_dict(),
                "random": states,
                "world_size": self.runtime.world_size,
                "data": self.data.position(self.step),
                "data_sizes": self.data.sizes(),
                "config": run_configuration(self.config),
                "tokenizer": self.tokenizer.to_state(),
            },
        )
        self.log.record(self.step, "checkpoint", {"path": str(path)})

    # --- the loop ------------------------------------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        """Zero-shot accuracy on ``--eval-folder``, every rank scoring its share (a collective).

        Raises:
            TrainingError: a run without ``eval_folder``, or one that diverged.
        """
        if self.held_out is None:
            raise TrainingError("evaluate needs an --eval-folder")
        self.train_step.check_finite(self.runtime)
        results = self.held_out.evaluate(
            self.model, self.tokenizer, batch_size=self.config.eval_batch_size, workers=self.config.workers,
            device=self.device, precision=self.train_step.precision,
        )  # fmt: skip
        self.log.record(self.step, "eval", results)
        return results

    def run(self) -> Path | None:
        """Train to ``--steps`` (or ``--stop-after``); returns ``OUTPUT/final`` when the run is complete."""
        config = self.config
        if self._resumed is not None:
            restore_random_states(self._resumed["random"], self.device)
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
            return write_final(config, self.model, self.tokenizer, self.step, self.log, self.runtime)
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
                losses.append(self.train_step(next(self.batches), self.step + 1))
            except (ValueError, RuntimeError):
                # Non-finite weights from an earlier step make a later one fail its input checks: say why.
                self.train_step.explain_failure()
                raise
            self.step += 1
            self.log.advance()
            if self.step % config.log_every == 0 or self.step == end:
                self._report(losses, time.perf_counter() - started, self.step - started_step)
                losses, started, started_step = [], time.perf_counter(), self.step
            saved = (config.save_every and self.step % config.save_every == 0) or self.step == config.steps
            if saved:
                self.save_checkpoint()
            if self.held_out is not None and (
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
        self.train_step.check_finite(self.runtime)
        epochs = {name: value for name, value in self.data.position(self.step).items() if name.endswith("_epoch")}
        skipped = self._all_skipped()
        bias = self.model.logit_bias
        rates, logits = self.train_step.scheduler.get_last_lr(), self.train_step.logit_group
        record = train_record(
            losses, lr=rates[0], logit_scale=float(self.model.clamped_logit_scale().detach()),
            samples=steps * self.config.batch_size * self.runtime.world_size, seconds=seconds, runtime=self.runtime,
            **({"logit_bias": float(bias.detach())} if bias is not None else {}),
            **({"logit_lr": rates[logits]} if logits is not None else {}),
            **epochs, **({"unreadable_skipped": skipped} if skipped is not None else {}),
        )  # fmt: skip
        self.log.record(self.step, "train", record)

    def _all_skipped(self) -> int | None:
        """Reads of unreadable images every rank skipped so far, or ``None`` without ``--skip-unreadable`` (a
        collective)."""
        if not self.config.skip_unreadable:
            return None
        return int(self.runtime.sum([float(self.data.unreadable_skipped())])[0])


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
