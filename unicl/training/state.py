"""What a run's checkpoint holds beyond the weights, and how a run finds the one to resume from.

A checkpoint (`unicl.training.trainer.Trainer.save_checkpoint`) holds the weights, the optimiser, the schedule and
the gradient scaler (`unicl.training.step.TrainStep.state_dict`), every rank's random generators (`random_states`),
where the data are (`unicl.training.run_data.RunData.position`), the options (`run_configuration`) and the
tokenizer. Resuming from the checkpoint of step ``t`` with the same options continues exactly where the run was;
`changed_options` names the options whose change makes it differ from an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import random
from pathlib import Path
from typing import Any

import torch

from unicl.training.checkpoints import CheckpointDirectory, DamagedCheckpoint, UnusableCheckpoint, read_checkpoint
from unicl.training.config import TrainingConfig, flag
from unicl.training.errors import TrainingError
from unicl.training.runtime import Runtime

#: Bumped when the checkpoint's layout changes.
CHECKPOINT_FORMAT = 1
#: Options that change what an uninterrupted run would compute; a resumed run warns when one differs.
REPRODUCIBILITY_OPTIONS = (
    "model", "pretrained", "tokenizer", "image_folder", "classnames", "captions", "webdataset", "ratio",
    "hash_captions", "no_augmentation", "batch_size", "steps", "lr", "warmup", "min_lr", "weight_decay", "beta1",
    "beta2", "eps", "grad_clip", "loss_backend", "local_loss", "precision", "grad_checkpointing", "seed",
    "micro_batch", "skip_unreadable", "loss", "freeze_image", "freeze_text", "tower_lr", "logit_lr", "class_bank",
    "captions_per_image", "hard_negatives",
)  # fmt: skip


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


def find_checkpoint(
    config: TrainingConfig, checkpoints: CheckpointDirectory, runtime: Runtime
) -> tuple[Path, dict[str, Any]] | None:
    """The checkpoint ``config.resume`` names and its state (rank 0 picks it under ``"auto"``, every rank reads
    it), or ``None`` when the run starts afresh.

    Raises:
        TrainingError: on every rank: checkpoints in the directory of a run not asked to resume, the newest of them
            unusable under ``"auto"``, or a named file that is not a checkpoint this run can use.
    """
    if config.resume is None:
        # Every rank looks (they share the directory), so all of them stop rather than one leaving the others
        # waiting in a collective.
        if checkpoints.paths():
            raise TrainingError(
                f"{checkpoints.directory} already holds checkpoints: pass --resume auto to continue that run, or "
                "choose another --output"
            )
        return None
    choice: str | None = config.resume
    state: dict[str, Any] | None = None
    if config.resume == "auto":
        choice, problem = None, None
        if runtime.is_main:
            try:
                found = checkpoints.load_latest()
            except UnusableCheckpoint as error:
                problem = f"--resume auto: {error}; resume from an older one with --resume PATH, or fix the file"
            else:
                if found is not None:
                    choice, state = str(found[0]), found[1]
        # Every rank learns of the problem, so all of them stop rather than wait in the broadcast below.
        choice, problem = runtime.broadcast((choice, problem))
        if problem is not None:
            raise TrainingError(problem)
    if choice is None:
        if runtime.is_main:
            print(f"no checkpoint in {checkpoints.directory}; starting at step 0", flush=True)
        return None
    path = Path(choice)
    try:
        if state is None:
            state = read_checkpoint(path)
    except (DamagedCheckpoint, UnusableCheckpoint) as error:
        raise TrainingError(f"--resume {choice}: not a checkpoint this run can use: {error}") from None
    return path, state


def check_resumable(state: dict[str, Any], config: TrainingConfig) -> None:
    """Stop unless ``state`` is a checkpoint of this format training ``config.model``.

    Raises:
        TrainingError: another format, another preset, or other frozen towers or learning-rate groups.
    """
    if state.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(
            f"the checkpoint has format {state.get('format')!r}; this version of unicl.train reads format "
            f"{CHECKPOINT_FORMAT}"
        )
    stored = state["config"]
    if stored.get("model") != config.model:
        raise TrainingError(f"the checkpoint trains {stored.get('model')!r}, not --model {config.model!r}")
    then, now = _optimizer_layout(stored), _optimizer_layout(run_configuration(config))
    if then != now:
        raise TrainingError(
            f"the checkpoint's run had {then}, this one {now}: resume with the checkpoint's (they decide the "
            "optimiser's parameter groups)"
        )


def _optimizer_layout(options: dict[str, Any]) -> str:
    """What of a run's options decides its optimiser's parameter groups, as the command line spells it (an option
    newer than a checkpoint had its default)."""
    frozen = [flag(name) for name in ("freeze_image", "freeze_text") if options.get(name, False)]
    tower_lr = "--tower-lr" if options.get("tower_lr") is not None else "no --tower-lr"
    return " ".join(frozen or ["no frozen tower"]) + f" and {tower_lr}"


def changed_options(state: dict[str, Any], config: TrainingConfig, world_size: int) -> list[str]:
    """The options (and the number of ranks) that differ between the run of the checkpoint ``state`` and this one
    and make the resumed run differ from an uninterrupted one."""
    stored, current = state["config"], run_configuration(config)
    # An option newer than the checkpoint had, when it ran, its default.
    defaults = {
        item.name: item.default if item.default_factory is dataclasses.MISSING else item.default_factory()
        for item in dataclasses.fields(TrainingConfig)
    }
    changed = [name for name in REPRODUCIBILITY_OPTIONS if stored.get(name, defaults[name]) != current.get(name)]
    # WebDataset streams are dealt to the data-loading workers, so there the number of workers orders the data.
    # (0 and 1 workers both read one stream.)
    streams = max(int(stored.get("workers") or 0), 1), max(config.workers, 1)
    if (config.webdataset or stored.get("webdataset")) and streams[0] != streams[1]:
        changed.append("workers")
    if state["world_size"] != world_size:
        changed.append(f"ranks ({state['world_size']} then, {world_size} now)")
    return changed
