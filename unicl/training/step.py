"""One optimiser step of a run: mixed precision, gradient caching, clipping, and the watch for non-finite steps.

`TrainStep` owns what a step changes (the optimiser, the learning-rate schedule, the gradient scaler) and remembers,
on the device and without a host sync, the first step whose loss or gradient norm was not finite; `check_finite`
turns that into a `TrainingError` on every rank at the next checkpoint, log record or evaluation, so no checkpoint of
diverged weights is ever written.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, nullcontext

import torch

from unicl.loss.functional import SIGMOID_LOGIT_BIAS
from unicl.models import UniCLModel
from unicl.training.config import TrainingConfig
from unicl.training.errors import TrainingError
from unicl.training.gradient_cache import cached_backward
from unicl.training.runtime import Runtime
from unicl.training.schedule import warmup_cosine
from unicl.training.towers import TOWERS, freeze_towers, hold_frozen_in_eval, optimizer_groups


def diverged(step: int) -> str:
    """The message of a run whose loss or gradient norm was first not finite at ``step``."""
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


def logit_learning_rate(config: TrainingConfig) -> float | None:
    """The peak learning rate of the model's logit scale and bias, or ``None`` where they take ``config.lr``.

    ``config.logit_lr`` when given. Otherwise ``None`` for the softmax objective, and for the sigmoid objective the
    larger of ``config.lr`` and ``|b₀| / Σₜ m(t)``, with ``b₀ = SIGMOID_LOGIT_BIAS`` (SigLIP's initial bias, -10)
    and ``m`` the run's learning-rate multipliers (`unicl.training.schedule.warmup_cosine`) over its steps. AdamW
    moves a scalar by at most about its learning rate per step, so ``lr · Σₜ m(t)`` bounds how far the bias can
    travel in the run: at ``5e-4`` over a 400-step cosine, 0.1, and the bias stays at its prior of -10 while the
    features learn. The rule lets it cover its initial distance from zero within the run (SigLIP's runs of some
    100,000 steps have that reach at their own learning rate, where the rule gives ``config.lr`` itself).

    Examples:
        >>> from unicl.training.config import TrainingConfig
        >>> run = TrainingConfig(model="unicl_tiny", batch_size=64, steps=400, output="run", loss="sigmoid")
        >>> round(logit_learning_rate(run), 4)
        0.0499
    """
    if config.logit_lr is not None:
        return config.logit_lr
    if config.loss != "sigmoid":
        return None
    floor = config.min_lr / config.lr if config.lr > 0 else 0.0
    multiplier = warmup_cosine(config.steps, config.warmup, floor)
    reach = sum(multiplier(step) for step in range(config.steps))
    return max(config.lr, abs(SIGMOID_LOGIT_BIAS) / reach) if reach > 0 else config.lr


def run_precision(precision: str, device: torch.device) -> str:
    """The precision a run computes in: ``precision`` with ``"auto"`` decided (bf16 on CUDA, fp32 elsewhere).

    Raises:
        TrainingError: fp16 off CUDA (its gradient scaler needs CUDA).
    """
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp16" and device.type != "cuda":
        raise TrainingError("--precision fp16 needs CUDA (its gradient scaler); use bf16 or fp32 on the CPU")
    return precision


class TrainStep:
    """The optimiser step of a run: AdamW over ``model.param_groups`` (less the frozen towers; the towers at their
    own learning rate with ``tower_lr``, see `unicl.training.towers`), the warm-up and cosine schedule, the fp16
    gradient scaler, and the forward and backward pass of ``network`` through ``loss_fn``.

    Args:
        config: the run's options (``lr``, ``tower_lr``, ``logit_lr`` (see `logit_learning_rate`), ``min_lr``,
            ``warmup``, ``steps``, AdamW's, ``grad_clip``, ``micro_batch``, ``precision``, ``freeze_image``,
            ``freeze_text``).
        model: the model whose parameters are trained.
        loss_fn: the loss, called as ``loss_fn(**network(images, input_ids, attention_mask), labels=labels)``.
        device: where the batches go.

    Attributes:
        logit_group: the index of the optimiser's group of the logit scale and bias when they train at a rate of
            their own (`logit_learning_rate`), else ``None``.
        network: what computes the forward pass: ``model``, until the run wraps it for distributed data parallelism
            (once the weights are loaded, since the wrapper sends rank 0's to the others).
        frozen_modules: the outermost modules of the frozen towers, held in evaluation mode.

    Raises:
        TrainingError: fp16 off CUDA.
        ValueError: a tower to freeze that the model has none of.
    """

    def __init__(
        self, config: TrainingConfig, model: UniCLModel, loss_fn: torch.nn.Module, device: torch.device
    ) -> None:
        self.model, self.loss_fn, self.device = model, loss_fn, device
        self.network: torch.nn.Module = model
        self.micro_batch, self.grad_clip = config.micro_batch, config.grad_clip
        self.precision = run_precision(config.precision, device)
        # Frozen towers (--freeze-image, --freeze-text) stay out of the optimiser, and their modules in evaluation
        # mode at every step (the run and its held-out evaluations put the model in training mode).
        frozen = [tower for tower in TOWERS if getattr(config, f"freeze_{tower}")]
        self.frozen_modules = freeze_towers(model, frozen) if frozen else []
        logit_lr = logit_learning_rate(config)
        groups = optimizer_groups(model, config.weight_decay, config.tower_lr, logit_lr)
        # The group of the logit scale (and bias) when it has a rate of its own; its rate is logged.
        self.logit_group = next(
            (index for index, group in enumerate(groups) if any(p is model.logit_scale for p in group["params"])), None
        ) if logit_lr is not None else None  # fmt: skip
        self.optimizer = torch.optim.AdamW(
            groups,
            lr=config.lr,
            betas=(config.beta1, config.beta2),
            eps=config.eps,
        )
        floor = config.min_lr / config.lr if config.lr > 0 else 0.0
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, warmup_cosine(config.steps, config.warmup, floor)
        )
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.precision == "fp16")
        # -1, or the first step whose loss or gradient norm was not finite (see note_nonfinite).
        self.first_nonfinite = torch.full((), -1, dtype=torch.long, device=device)

    def autocast(self) -> AbstractContextManager:
        """Mixed precision for the forward pass (nothing in fp32)."""
        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def __call__(self, batch: dict[str, torch.Tensor], step: int) -> torch.Tensor:
        """One optimiser step on ``batch`` (``images: [B, 3, H, W]``, ``input_ids`` and ``attention_mask: [M, L]``,
        ``labels: [B]``, and where ``M`` may differ from ``B`` ``text_labels: [M]``), the run's step ``step`` (counted
        from 1); returns this rank's loss (detached)."""
        moved = {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}
        hold_frozen_in_eval(self.frozen_modules)
        if self.micro_batch is not None:
            texts = {"input_ids": moved["input_ids"], "attention_mask": moved["attention_mask"]}
            with self.autocast():
                loss = cached_backward(
                    self.network, moved["images"], texts, moved["labels"], loss_fn=self.loss_fn,
                    micro_batch=self.micro_batch, scaler=self.scaler if self.scaler.is_enabled() else None,
                    text_labels=moved.get("text_labels"),
                )  # fmt: skip
        else:
            # Batches of other texts than one per image carry text_labels (unicl.data.batches.UnifiedCollate).
            shape = {"text_labels": moved["text_labels"]} if "text_labels" in moved else {}
            with self.autocast():
                outputs = self.network(moved["images"], moved["input_ids"], moved["attention_mask"])
                loss = self.loss_fn(**outputs, labels=moved["labels"], **shape)
            self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        if self.grad_clip > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        else:
            norm = gradient_norm(self.model.parameters())
        self.note_nonfinite(loss.detach(), norm, step)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.model.bound_logit_scale_()
        return loss.detach()

    def note_nonfinite(self, loss: torch.Tensor, grad_norm: torch.Tensor, step: int) -> None:
        """Remember, on the device and without a sync, ``step`` if it is the first whose loss or gradient norm is
        not finite.

        Under fp16 a non-finite gradient is the gradient scaler's business (it skips that update and lowers its
        scale, leaving the weights as they were), so there only the loss counts.
        """
        finite = torch.isfinite(loss.float())
        if not self.scaler.is_enabled():
            finite = finite & torch.isfinite(grad_norm)
        marked = torch.full_like(self.first_nonfinite, step)
        self.first_nonfinite = torch.where(~finite & (self.first_nonfinite < 0), marked, self.first_nonfinite)

    def check_finite(self, runtime: Runtime) -> None:
        """Stop, on every rank, when any rank saw a non-finite loss or gradient norm (a collective and a sync).

        Raises:
            TrainingError: naming the first non-finite step.
        """
        first = runtime.max(int(self.first_nonfinite))
        if first >= 0:
            raise TrainingError(diverged(first))

    def explain_failure(self) -> None:
        """After a step failed with an error: when an earlier step was not finite (its weights then fail a later
        step's input checks), raise the `TrainingError` that says so. No collective (the other ranks may be in
        another one); nothing is raised when the flag cannot be read (a device that failed), so the original error
        stays."""
        try:
            first = int(self.first_nonfinite)
        except RuntimeError:
            return
        if first >= 0:
            raise TrainingError(diverged(first)) from None

    def state_dict(self) -> dict[str, dict]:
        """What a checkpoint stores of the step: the optimiser's, the schedule's and the gradient scaler's states."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, dict]) -> None:
        """Undo `state_dict` (``state`` may hold more keys: a whole checkpoint)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
