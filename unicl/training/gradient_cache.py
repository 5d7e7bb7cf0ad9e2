"""Gradient caching: the gradients of a large contrastive batch in the memory of a micro-batch.

Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup". A contrastive loss
couples every sample with every other one, so ordinary gradient accumulation cannot split its batch. But the loss
itself is cheap next to the towers: `cached_backward` computes all features without a graph (pass 1), the loss
and its gradient with respect to the features and the logit scale on the full batch, then re-runs each micro-batch
with a graph and back-propagates the cached feature gradients through it (pass 2). The parameter gradients are those
of the full-batch step; activation memory is that of one micro-batch; the towers run twice (about 4/3 the compute
of a plain step, as with activation checkpointing).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

__all__ = ["cached_backward"]

#: Outputs with one row per sample: computed per micro-batch and concatenated. Every other tensor output
#: (``logit_scale``, ``logit_bias``) depends on the parameters alone and is taken once.
_PER_SAMPLE = ("image_features", "text_features")
#: Names of a tuple output's entries, in the order open_clip's ``CLIP.forward`` returns them.
_TUPLE_NAMES = ("image_features", "text_features", "logit_scale", "logit_bias")


def _check_micro_batch(micro_batch: object) -> int:
    if isinstance(micro_batch, bool) or not isinstance(micro_batch, int) or micro_batch < 1:
        raise ValueError(f"micro_batch must be a positive int; got {type(micro_batch).__name__} {micro_batch!r}")
    return micro_batch


def _as_dict(outputs: Any) -> dict[str, Any]:
    """The model's outputs by the loss's argument names (a mapping as is; a tuple by open_clip's order)."""
    if isinstance(outputs, Mapping):
        result = dict(outputs)
    elif isinstance(outputs, (tuple, list)) and 3 <= len(outputs) <= len(_TUPLE_NAMES):
        result = dict(zip(_TUPLE_NAMES, outputs))
    else:
        raise TypeError(
            "the model must return a mapping with image_features, text_features and logit_scale (unicl's models, "
            "open_clip's with output_dict=True) or open_clip's (image_features, text_features, logit_scale"
            f"[, logit_bias]) tuple; got {type(outputs).__name__}"
        )
    missing = [name for name in _PER_SAMPLE if not isinstance(result.get(name), torch.Tensor)]
    if missing:
        raise TypeError(f"the model's outputs lack the feature tensor(s) {missing}; got keys {sorted(result)}")
    return result


def _slices(batch_size: int, micro_batch: int) -> list[slice]:
    return [slice(start, min(start + micro_batch, batch_size)) for start in range(0, batch_size, micro_batch)]


def _even_slices(size: int, parts: int) -> list[slice]:
    """``parts`` consecutive slices of ``range(size)`` whose lengths differ by at most one (empty when
    ``size < parts``)."""
    return [slice(part * size // parts, (part + 1) * size // parts) for part in range(parts)]


def _micro_batches(num_images: int, num_texts: int, micro_batch: int) -> list[tuple[slice, slice]]:
    """``(image rows, text rows)`` of each micro-batch: both sides split into as many parts as the larger side needs
    for at most ``micro_batch`` rows a part, evenly, so that no part of either side has more."""
    if num_images == num_texts:
        return [(rows, rows) for rows in _slices(num_images, micro_batch)]
    parts = max(-(-num_images // micro_batch), -(-num_texts // micro_batch), 1)
    return list(zip(_even_slices(num_images, parts), _even_slices(num_texts, parts), strict=True))


def _text_rows(texts: torch.Tensor | Mapping[str, torch.Tensor], rows: slice) -> Any:
    if isinstance(texts, Mapping):
        return {name: value[rows] for name, value in texts.items()}
    return texts[rows]


def _text_count(
    images: torch.Tensor, texts: torch.Tensor | Mapping[str, torch.Tensor], text_labels: torch.Tensor | None
) -> int:
    """The number of texts: ``B``, the images', or with ``text_labels`` the ``M`` rows every text tensor has."""
    tensors = list(texts.values()) if isinstance(texts, Mapping) else [texts]
    size = images.shape[0]
    if text_labels is not None and tensors and isinstance(tensors[0], torch.Tensor) and tensors[0].dim() > 0:
        size = tensors[0].shape[0]
    for value in tensors:
        if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != size:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            if text_labels is None:
                raise ValueError(f"texts must be [B, ...] tensors with B = {size} rows like images; got {shape}")
            raise ValueError(f"texts must be [M, ...] tensors with the same M = {size} rows each; got {shape}")
    return size


def _call(model: nn.Module, images: torch.Tensor, texts: Any) -> dict[str, Any]:
    if isinstance(texts, Mapping):
        return _as_dict(model(images, **texts))
    return _as_dict(model(images, texts))


def _cuda_devices(*tensors: torch.Tensor) -> list[torch.device]:
    return sorted({t.device for t in tensors if t.device.type == "cuda"}, key=lambda d: d.index or 0)


def _random_state(devices: list[torch.device]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    return torch.get_rng_state(), [torch.cuda.get_rng_state(device) for device in devices]


@contextlib.contextmanager
def _replayed_random_state(
    state: tuple[torch.Tensor, list[torch.Tensor]], devices: list[torch.device]
) -> Iterator[None]:
    """Run with the generators as they were in pass 1; restore the current state afterwards."""
    with torch.random.fork_rng(devices=devices):
        torch.set_rng_state(state[0])
        for device, cuda_state in zip(devices, state[1]):
            torch.cuda.set_rng_state(cuda_state, device)
        yield


@contextlib.contextmanager
def _frozen_batch_norm_statistics(model: nn.Module) -> Iterator[None]:
    """Put every BatchNorm's running statistics back as they were, so pass 1 leaves no trace in them."""
    saved = []
    for module in model.modules():
        if isinstance(module, _BatchNorm) and module.track_running_stats:
            buffers = (module.running_mean, module.running_var, module.num_batches_tracked)
            saved.append((buffers, [None if b is None else b.clone() for b in buffers]))
    try:
        yield
    finally:
        with torch.no_grad():
            for buffers, copies in saved:
                for buffer, copy in zip(buffers, copies):
                    if buffer is not None and copy is not None:
                        buffer.copy_(copy)


def cached_backward(
    model: nn.Module,
    images: torch.Tensor,
    texts: torch.Tensor | Mapping[str, torch.Tensor],
    labels: torch.Tensor | None = None,
    *,
    loss_fn: Callable[..., torch.Tensor],
    micro_batch: int,
    scaler: torch.amp.GradScaler | None = None,
    text_labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """Back-propagate ``loss_fn(**model(images, texts), labels=labels)`` micro-batch by micro-batch.

    After the call every parameter's ``.grad`` holds (accumulated onto what was there, as ``backward`` does) what
    the plain ``loss_fn(**model(images, **texts), labels=labels).backward()`` leaves, up to float rounding, while
    only one micro-batch's activations are alive at a time. The loss is computed once, on the features of the whole
    batch, so a distributed loss (``UniCLLoss(gather_distributed=True)``) gathers every rank's features once.

    1. Pass 1, without a graph: ``model(images[i:j], texts[i:j])`` for each micro-batch of ``micro_batch`` rows
       (the last may be shorter); the features are concatenated.
    2. The loss of the whole batch on detached copies of the features and the logit scale (and ``logit_bias``, if
       the model has one); its ``backward`` caches their gradients.
    3. Pass 2: each micro-batch again, with a graph, and ``torch.autograd.backward`` of its features with their
       slice of the cached gradients; the last one also back-propagates the scale's gradient through the scale's
       own graph (``exp`` and clamp in the model's forward).

    The model's own forward is called in both passes, so its outputs are exactly those of the plain step: unicl's
    models and open_clip's ``CLIP`` (``output_dict=True``, or its ``(image_features, text_features, logit_scale
    [, logit_bias])`` tuple) both work, as does any model whose forward returns ``image_features``,
    ``text_features`` and the scale under those names.

    Args:
        model: the model, or its `torch.nn.parallel.DistributedDataParallel` wrapper. Under DDP every
            micro-batch but the last runs in ``model.no_sync()``, so the gradients are all-reduced once, by the
            last micro-batch's backward (DDP's forward is called in pass 2, so its hooks fire). Ranks may run
            different numbers of micro-batches (with ``text_labels`` a rank's text count sets its number): each
            rank all-reduces once, in its last backward, and DDP broadcasts buffers at a step's first forward.
        images: ``[B, C, H, W]`` images.
        texts: ``[B, L]`` token ids, passed to the forward positionally, or a mapping of ``[B, ...]`` tensors
            (``{"input_ids": ..., "attention_mask": ...}``) passed as keyword arguments; ``M`` rows instead of ``B``
            with ``text_labels``.
        labels: ``[B]`` labels for the loss, or ``None``; it sees the whole batch's.
        loss_fn: called as ``loss_fn(**outputs, labels=labels)`` on the whole batch's outputs, e.g.
            `unicl.UniCLLoss`.
        micro_batch: rows per micro-batch, a positive int; ``B`` need not be a multiple of it.
        text_labels: ``[M]`` labels of ``M`` texts (``texts`` then has ``M`` rows, any number): passed on as
            ``loss_fn(..., text_labels=text_labels)``. Images and texts are split into the same number of
            micro-batches, as many as the larger side needs, each side evenly; a side with fewer rows than there are
            micro-batches gives the model zero rows of it in some (unicl's models and open_clip's take them).
        scaler: a gradient scaler for fp16 autocast (``torch.amp.GradScaler`` or ``torch.cuda.amp.GradScaler``):
            pass 1's loss backward is ``scaler.scale(loss).backward()``, so the cached feature gradients and hence
            the parameter gradients are scaled exactly as in the plain ``scaler.scale(loss).backward()``; then call
            ``scaler.step(optimizer)`` and ``scaler.update()`` as usual. A feature gradient that overflows gives
            non-finite parameter gradients, which the scaler's step detects and skips, as in the plain step.

    Returns:
        The loss (detached, unscaled).

    Raises:
        ValueError: ``micro_batch`` is not a positive int, or ``texts`` does not have ``B`` rows (without
            ``text_labels``) or a common number of rows (with them).
        TypeError: the model's forward returns neither form above.

    Notes:
        * Random state: each micro-batch's generator state (the CPU's, and that of every CUDA device the inputs are
          on) is recorded before its pass-1 forward and replayed for its pass-2 forward, so dropout and drop-path
          masks are the same in both passes. The generators end as pass 1 left them. Masks differ from those of a
          single full-batch forward (the random stream is drawn per micro-batch), which is as harmless as any reseed.
        * BatchNorm: batch statistics are those of each micro-batch (as in any micro-batched step, they cannot be
          the full batch's); the running statistics are saved before pass 1 and restored after it, so only pass 2
          updates them: once per micro-batch. Other state a forward mutates is updated in both passes.
        * Autocast: call this inside ``torch.autocast``; both passes and the loss run under it, as in the plain
          step, and the cached gradients have the features' dtype. Each micro-batch's backward adds its weight
          gradient into the float32 ``.grad`` separately, whereas a plain step forms each weight's gradient over the
          whole batch in the autocast dtype (the gradient of autocast's one low-precision copy of the weight) before
          it reaches ``.grad``, so the two differ by that dtype's rounding, cached being the more accurate.
        * Gradient checkpointing inside the towers works unchanged (pass 1 has no graph to checkpoint).
        * Pass 1 runs under ``torch.no_grad``, so any ``loss_fn`` that differentiates through the model inside
          itself is not supported; functions of the features and the scale (every UniCL/CLIP loss) are.

    Examples:
        >>> import torch, unicl
        >>> from unicl.training import cached_backward
        >>> model = unicl.create_model("unicl_tiny")
        >>> images, ids = torch.randn(6, 3, 32, 32), torch.randint(0, 1000, (6, 16))
        >>> loss = cached_backward(model, images, ids, torch.tensor([0, 0, 1, -1, -1, 2]),
        ...                        loss_fn=unicl.UniCLLoss(), micro_batch=4)
        >>> loss.requires_grad, model.logit_scale.grad is not None
        (False, True)
    """
    micro_batch = _check_micro_batch(micro_batch)
    parts = _micro_batches(images.shape[0], _text_count(images, texts, text_labels), micro_batch)
    tensors = [images, *(texts.values() if isinstance(texts, Mapping) else [texts])]
    devices = _cuda_devices(*tensors)
    is_ddp = isinstance(model, DistributedDataParallel)

    # Pass 1: every micro-batch's features, no graph; the random state before each, for pass 2.
    states = []
    features: dict[str, list[torch.Tensor]] = {name: [] for name in _PER_SAMPLE}
    shared: dict[str, Any] = {}
    with _frozen_batch_norm_statistics(model), torch.no_grad():
        for rows, text_rows in parts:
            states.append(_random_state(devices))
            outputs = _call(model, images[rows], _text_rows(texts, text_rows))
            for name in _PER_SAMPLE:
                features[name].append(outputs.pop(name))
            if not shared:
                shared = outputs

    # The loss of the whole batch; its gradients with respect to the features and the shared outputs.
    leaves: dict[str, torch.Tensor] = {
        name: torch.cat(chunks).detach().requires_grad_(True) for name, chunks in features.items()
    }
    inputs: dict[str, Any] = dict(leaves)
    for name, value in shared.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            leaves[name] = value.detach().requires_grad_(True)
            inputs[name] = leaves[name]
        else:
            inputs[name] = value
    del features
    with torch.enable_grad():
        loss = loss_fn(**inputs, labels=labels, **({} if text_labels is None else {"text_labels": text_labels}))
        (scaler.scale(loss) if scaler is not None else loss).backward()
    grads = {name: leaf.grad for name, leaf in leaves.items()}
    del leaves, inputs

    # Pass 2: each micro-batch with a graph, back-propagating its slice of the cached gradients.
    for index, ((rows, text_rows), state) in enumerate(zip(parts, states)):
        last = index == len(parts) - 1
        sync = model.no_sync() if is_ddp and not last else contextlib.nullcontext()  # type: ignore[operator]
        with sync, _replayed_random_state(state, devices), torch.enable_grad():
            outputs = _call(model, images[rows], _text_rows(texts, text_rows))
            roots: list[torch.Tensor] = []
            root_grads: list[torch.Tensor] = []
            for name, name_rows in zip(_PER_SAMPLE, (rows, text_rows), strict=True):
                grad = grads[name]
                if grad is not None and outputs[name].requires_grad:
                    roots.append(outputs[name])
                    root_grads.append(grad[name_rows])
            if last:
                for name, value in outputs.items():
                    grad = grads.get(name) if name not in _PER_SAMPLE else None
                    if grad is not None and isinstance(value, torch.Tensor) and value.requires_grad:
                        roots.append(value)
                        root_grads.append(grad)
            if roots:
                torch.autograd.backward(roots, root_grads)
        del outputs, roots, root_grads
    return loss.detach()
