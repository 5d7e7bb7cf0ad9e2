"""Data order and randomness as pure functions of the seed and the training step.

A training run that is stopped and resumed must see exactly the samples, augmentations and prompts the
uninterrupted run would have seen. Two things make that hold whatever the number of data-loading workers:

* `StepBatchSampler` addresses batches by step: the batch of step ``t`` on rank ``r`` holds the positions
  ``[t·B, (t+1)·B)`` of that rank's endless stream, each an ``(epoch, index)`` key from a permutation seeded by
  ``(seed, epoch)``, so resuming at step ``t`` is starting the sampler there;
* `KeyedSamples` computes each sample inside `seeded_sample`, with Python's, NumPy's and torch's CPU
  generators seeded from ``(seed, key)`` (the generators the transforms of torchvision and timm draw from: timm's
  RandAugment picks its operations with NumPy) and the class prompt drawn from a generator of the same key, so a
  sample does not depend on what was drawn before it, nor on the data-loading worker that computes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import random
from collections.abc import Hashable, Iterator
from typing import Any

import numpy
import torch
from torch.utils.data import Dataset, Sampler

from unicl._checks import check_positive_int
from unicl.data.batches import SizedDataset
from unicl.text.prompts import LabelToPrompt

#: A sample's address in a run: ``(epoch, index into its dataset)``.
SampleKey = tuple[int, int]


def derive_seed(*parts: Hashable) -> int:
    """A 63-bit seed from ``parts``: stable across processes and Python versions (unlike ``hash``)."""
    digest = hashlib.blake2b(repr(parts).encode("utf-8"), digest_size=8, person=b"unicl-seed")
    return int.from_bytes(digest.digest(), "little") >> 1


@contextlib.contextmanager
def seeded_sample(*key: Hashable) -> Iterator[random.Random]:
    """Seed Python's ``random``, NumPy's global generator and torch's CPU generator from ``key`` for the body, then
    restore all three.

    Yields:
        A ``random.Random`` seeded from ``key`` too, for draws the body makes explicitly (a class prompt).
    """
    seed = derive_seed("sample", *key)
    python_state, numpy_state = random.getstate(), numpy.random.get_state()
    # fork_rng restores the CPU generator afterwards; devices=[] leaves CUDA generators alone (never touched here).
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        random.seed(seed)
        numpy.random.seed(seed % 2**32)
        try:
            yield random.Random(seed ^ 0x5DEECE66D)
        finally:
            random.setstate(python_state)
            numpy.random.set_state(numpy_state)


class KeyedSamples(Dataset):
    """A dataset read by `SampleKey`, every sample a pure function of ``(seed, key)``.

    ``source[index]`` runs inside `seeded_sample`; a labelled sample ``(image, class_id)`` becomes
    ``(image, prompt, class_id)`` with the prompt drawn from the key's generator (see
    `unicl.data.batches.UnifiedCollate`); an ``(image, caption)`` sample, or any other tuple (a caption group of
    `unicl.data.datasets.CaptionGroups`), passes through.

    Args:
        source: a map-style dataset of ``(image, class_id)``, ``(image, caption)`` or caption groups.
        seed: the run's seed.
        prompts: draws the prompts of labelled samples (needed when ``source`` has any).
    """

    def __init__(self, source: SizedDataset, seed: int, prompts: LabelToPrompt | None = None) -> None:
        self.source = source
        self.seed = seed
        self.prompts = prompts

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: SampleKey) -> tuple[Any, ...]:
        epoch, index = key
        with seeded_sample(self.seed, epoch, index) as draws:
            sample = self.source[index]
            if len(sample) != 2:
                return tuple(sample)
            image, target = sample
            if isinstance(target, str):
                return image, target
            if self.prompts is None:
                raise ValueError(f"sample {index} has a class id but no prompts were given to draw its text from")
            return image, self.prompts.draw(target, draws), target


class StepBatchSampler(Sampler[list[SampleKey]]):
    """Endless batches of `SampleKey`: batch ``t`` of rank ``rank`` is a pure function of ``t``.

    Each epoch is one permutation of the dataset (seeded by ``(seed, epoch)``) dealt to the ranks round-robin, the
    way ``DistributedSampler`` does, padded by wrapping around so every rank gets ``⌈length / world_size⌉``
    positions; a rank's positions run on through the epochs without a break.

    Args:
        length: the dataset's size.
        batch_size: samples per batch on this rank.
        rank: this rank.
        world_size: number of ranks.
        seed: the run's seed.
        start_step: the first batch to yield (the step a run resumes at).
    """

    def __init__(
        self, length: int, batch_size: int, rank: int, world_size: int, seed: int, start_step: int = 0
    ) -> None:
        self.length = check_positive_int("length", length)
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.world_size = check_positive_int("world_size", world_size)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}); got {rank}")
        self.rank, self.seed = rank, seed
        self.start_step = check_positive_int("start_step", start_step, minimum=0)
        self.per_rank = math.ceil(self.length / self.world_size)
        self._order: tuple[int, torch.Tensor] | None = None

    def epoch_at(self, step: int) -> float:
        """How many passes over its share this rank has made before ``step`` (fractional)."""
        return step * self.batch_size / self.per_rank

    def key(self, position: int) -> SampleKey:
        """The sample at ``position`` of this rank's stream."""
        epoch, offset = divmod(position, self.per_rank)
        if self._order is None or self._order[0] != epoch:
            generator = torch.Generator().manual_seed(derive_seed("order", self.seed, epoch))
            self._order = (epoch, torch.randperm(self.length, generator=generator))
        return epoch, int(self._order[1][(offset * self.world_size + self.rank) % self.length])

    def batch(self, step: int) -> list[SampleKey]:
        """The keys of batch ``step``."""
        start = step * self.batch_size
        return [self.key(position) for position in range(start, start + self.batch_size)]

    def __iter__(self) -> Iterator[list[SampleKey]]:
        step = self.start_step
        while True:
            yield self.batch(step)
            step += 1
