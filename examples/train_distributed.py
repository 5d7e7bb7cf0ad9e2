"""Train a small image and text encoder on the UniCL loss of the global batch, one process per GPU (NCCL), or
CPU processes (gloo) where there is no GPU:

    torchrun --nproc-per-node 2 examples/train_distributed.py
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import unicl


class TwoTowers(torch.nn.Module):
    """Stand-ins for an image and a text encoder, returning what `unicl.UniCLLoss` takes by name."""

    def __init__(self) -> None:
        super().__init__()
        self.image = torch.nn.Linear(64, 32)
        self.text = torch.nn.Linear(48, 32)
        self.log_scale = torch.nn.Parameter(torch.tensor(2.659))  # log(1 / 0.07), CLIP's initial temperature

    def forward(self, images: torch.Tensor, texts: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "image_features": self.image(images),
            "text_features": self.text(texts),
            "logit_scale": self.log_scale.exp().clamp(max=100),
        }


def main() -> None:
    use_cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    rank = dist.get_rank()
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    torch.manual_seed(0)  # the same initial weights on every rank
    model = DistributedDataParallel(TwoTowers().to(device), device_ids=[device.index] if use_cuda else None)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    # The loss of the global batch; every rank computes its own rows and columns (local_loss) and, since every
    # rank's batch has the same size, no sizes are exchanged (equal_batches).
    loss_fn = unicl.UniCLLoss(gather_distributed=True, local_loss=True, equal_batches=True)
    # Ten classes whose images and texts are noisy copies of one prototype each, shared by every rank.
    prototypes = torch.Generator().manual_seed(1)
    image_prototypes = torch.randn(10, 64, generator=prototypes)
    text_prototypes = torch.randn(10, 48, generator=prototypes)
    for step in range(30):
        batch = torch.Generator().manual_seed(1000 * step + rank)  # each rank draws its own samples
        labels = torch.randint(0, 10, (32,), generator=batch)
        images = image_prototypes[labels] + 0.5 * torch.randn(32, 64, generator=batch)
        texts = text_prototypes[labels] + 0.5 * torch.randn(32, 48, generator=batch)
        loss = loss_fn(**model(images.to(device), texts.to(device)), labels=labels.to(device))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if rank == 0 and step % 10 == 0:
            print(f"step {step}: loss {loss.item():.3f}")
    if rank == 0:
        print(f"final loss {loss.item():.3f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
