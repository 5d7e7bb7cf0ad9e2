"""Image-text pairs streamed from WebDataset tar shards, resumable at any step.

A shard is a tar file whose members sharing a name up to the first dot form one sample: an image (``.jpg``,
``.jpeg``, ``.png`` or ``.webp``) and its caption (``.txt``). Shards are opened by ``webdataset``'s ``gopen``, so a
URL may be a local path, ``http(s)://...`` or ``pipe:COMMAND`` (``pipe:aws s3 cp s3://bucket/shard-0001.tar -``);
``{0000..0099}`` expands to a list and ``::`` joins lists.

Each epoch shuffles the shard list with a seed of ``(seed, epoch)`` and deals it to the ranks, then to each rank's
data-loading workers. The data loader takes the workers' batches in turn, so the batch of step ``t`` comes from
stream ``t mod workers``; a run resumed at step ``t`` has each worker skip the samples of its stream's batches
before ``t`` without decoding them, and every sample's augmentation is seeded by its shard and name
(`unicl.training.sampling.seeded_sample`), so the resumed stream is the uninterrupted one.
"""

from __future__ import annotations

import io
import math
import random
from collections.abc import Callable, Iterator, Sequence
from itertools import count
from typing import Any

from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from unicl._checks import check_positive_int
from unicl.training.sampling import derive_seed, seeded_sample

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
TEXT_EXTENSIONS = ("txt",)


def _webdataset() -> Any:
    try:
        import webdataset
    except ImportError:
        raise ImportError("WebDataset shards need the webdataset package: pip install webdataset") from None
    return webdataset


def expand_shard_urls(urls: str | Sequence[str]) -> list[str]:
    """Every shard URL: brace ranges expanded, ``::`` lists split (a sequence is expanded item by item)."""
    expand_urls = _webdataset().shardlists.expand_urls
    items = [urls] if isinstance(urls, str) else list(urls)
    return [shard for item in items for shard in expand_urls(item)]


def read_captions(urls: str | Sequence[str], limit: int) -> list[str]:
    """The captions of the first ``limit`` samples of the shards, in their listed order (images not decoded).

    Raises:
        ImportError: webdataset is not installed.
    """
    tarfile_samples = _webdataset().tariterators.tarfile_samples
    captions: list[str] = []
    for sample in tarfile_samples([{"url": url} for url in expand_shard_urls(urls)]):
        text_key = next((key for key in TEXT_EXTENSIONS if key in sample), None)
        if text_key is not None:
            captions.append(sample[text_key].decode("utf-8").strip())
        if len(captions) >= limit:
            break
    return captions


class ShardedCaptions(IterableDataset):
    """An endless stream of ``(image, caption)`` samples from WebDataset shards, for one rank (see the module
    docstring for the order and the resumption).

    The stream of a rank is split into ``max(workers, 1)`` interleaved streams, one per worker, each reading its own
    shards; the batch of step ``t`` is batch ``⌊t / streams⌋`` of stream ``t mod streams``.

    Args:
        urls: shard URLs (see the module docstring).
        transform: turns the PIL image into a tensor.
        batch_size: samples per batch on this rank (the data loader's batch size).
        seed: the run's seed.
        rank: this rank.
        world_size: number of ranks.
        workers: the data loader's ``num_workers`` (the same number must be used there).
        start_step: the step the stream starts at.

    Raises:
        ImportError: webdataset is not installed.
        ValueError: fewer shards than ``world_size × max(workers, 1)`` (a rank or worker would have none).
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        transform: Callable[[Image.Image], Any],
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        workers: int = 0,
        start_step: int = 0,
    ) -> None:
        self.shards = expand_shard_urls(urls)
        self.transform = transform
        self.batch_size = check_positive_int("batch_size", batch_size)
        self.world_size = check_positive_int("world_size", world_size)
        self.streams = check_positive_int("workers", workers, minimum=0) or 1
        self.start_step = check_positive_int("start_step", start_step, minimum=0)
        self.seed, self.rank = seed, rank
        if len(self.shards) < self.world_size * self.streams:
            raise ValueError(
                f"--webdataset has {len(self.shards)} shard(s) for {self.world_size} rank(s) × {self.streams} "
                "worker(s); every worker of every rank needs at least one shard (use more shards or fewer workers)"
            )

    def shards_of(self, epoch: int, stream: int) -> list[str]:
        """The shards stream ``stream`` (of ``max(workers, 1)``) of this rank reads in ``epoch``, in order."""
        shards = list(self.shards)
        random.Random(derive_seed("shards", self.seed, epoch)).shuffle(shards)
        return shards[self.rank :: self.world_size][stream :: self.streams]

    def __iter__(self) -> Iterator[tuple[Any, str]]:
        tarfile_samples = _webdataset().tariterators.tarfile_samples
        info = get_worker_info()
        worker = 0 if info is None else info.id
        # The loader takes batch i from worker i mod streams, starting at worker 0 whatever the step, so worker w
        # serves the steps t ≡ w + start_step (mod streams): it reads that stream and skips the batches before
        # start_step that belong to it.
        stream = (worker + self.start_step) % self.streams
        skip = max(0, math.ceil((self.start_step - stream) / self.streams)) * self.batch_size
        for epoch in count():
            shards = self.shards_of(epoch, stream)
            seen = 0
            for sample in tarfile_samples([{"url": url} for url in shards]):
                seen += 1
                if skip > 0:
                    skip -= 1
                    continue
                yield self._decode(sample, epoch)
            if seen == 0:
                raise ValueError(f"the WebDataset shards {shards} hold no samples")

    def _decode(self, sample: dict[str, Any], epoch: int) -> tuple[Any, str]:
        image_key = next((key for key in IMAGE_EXTENSIONS if key in sample), None)
        text_key = next((key for key in TEXT_EXTENSIONS if key in sample), None)
        if image_key is None or text_key is None:
            parts = sorted(key for key in sample if not key.startswith("__"))
            raise ValueError(
                f"WebDataset sample {sample['__key__']!r} in {sample['__url__']!r} needs an image "
                f"{IMAGE_EXTENSIONS} and a caption {TEXT_EXTENSIONS}; it has {parts}"
            )
        caption = sample[text_key].decode("utf-8").strip()
        key = (self.seed, "shard", epoch, sample["__url__"], sample["__key__"])
        with seeded_sample(*key), Image.open(io.BytesIO(sample[image_key])) as image:
            return self.transform(image.convert("RGB")), caption
