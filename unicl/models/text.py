"""A pre-LayerNorm text transformer pooled at the end-of-text token."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from unicl._checks import check_choice


@dataclass
class TextConfig:
    """A text tower.

    Attributes:
        vocab_size: number of token ids.
        context_length: the longest sequence ``L``.
        width: model width.
        layers: transformer blocks.
        heads: attention heads (``width`` must be divisible by it).
        causal: causal attention (CLIP's choice) or bidirectional.
        mlp_ratio: hidden width of the MLP over ``width``.
        grad_checkpointing: recompute blocks in backward to save memory.
        activation: the MLP's activation, ``"gelu"`` or ``"quick_gelu"`` (``x·σ(1.702·x)``, CLIP's and UniCL's).
        norm_eps: the LayerNorms' epsilon (UniCL's released models: 1e-12).
        pool: where a sequence is read out: ``"mask"`` (the last position the attention mask covers) or
            ``"argmax"`` (the largest id, CLIP BPE's end-of-text token, as the released UniCL models do).
    """

    vocab_size: int = 49408
    context_length: int = 77
    width: int = 512
    layers: int = 12
    heads: int = 8
    causal: bool = True
    mlp_ratio: float = 4.0
    grad_checkpointing: bool = False
    activation: str = "gelu"
    norm_eps: float = 1e-5
    pool: str = "mask"


ACTIVATIONS = ("gelu", "quick_gelu")
POOLINGS = ("mask", "argmax")


class QuickGELU(nn.Module):
    """``x·σ(1.702·x)``, the sigmoid approximation of GELU that CLIP and UniCL were trained with."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Float32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype, returned in the input dtype (half-precision
    activations keep full-precision statistics)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = None if self.weight is None else self.weight.float()
        bias = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps).to(x.dtype)


class TransformerBlock(nn.Module):
    """Pre-LN block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(
        self, width: int, heads: int, mlp_ratio: float, activation: str = "gelu", norm_eps: float = 1e-5
    ) -> None:
        super().__init__()
        self.heads = heads
        self.norm_attention = Float32LayerNorm(width, eps=norm_eps)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.norm_mlp = Float32LayerNorm(width, eps=norm_eps)
        hidden = int(width * mlp_ratio)
        nonlinearity = QuickGELU() if activation == "quick_gelu" else nn.GELU()
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nonlinearity, nn.Linear(hidden, width))

    def forward(self, x: torch.Tensor, attention_bias: torch.Tensor) -> torch.Tensor:
        """``x [B, L, W]``, ``attention_bias [B, 1, L, L]`` boolean (True: may attend)."""
        q, k, v = rearrange(self.qkv(self.norm_attention(x)), "b l (three h d) -> three b h l d", three=3, h=self.heads)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=attention_bias)
        x = x + self.out(rearrange(attended, "b h l d -> b l (h d)"))
        return x + self.mlp(self.norm_mlp(x))


class TextTransformer(nn.Module):
    """Token and position embeddings, pre-LN blocks, a final LayerNorm, pooled at the end-of-text token.

    With ``pool="mask"`` the end-of-text token is the last position the attention mask covers, and padded
    positions are masked out of attention, so padding never changes the output; with ``pool="argmax"`` it is the
    largest id (CLIP BPE's ``<|endoftext|>``), as in the released UniCL models.

    Args:
        config: the `TextConfig`.

    Raises:
        ValueError: ``width`` not divisible by ``heads``, an unknown ``activation`` or ``pool``.
    """

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        if config.width % config.heads:
            raise ValueError(f"width must be divisible by heads; got width={config.width}, heads={config.heads}")
        check_choice("activation", config.activation, ACTIVATIONS)
        check_choice("pool", config.pool, POOLINGS)
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.width)
        self.positional_embedding = nn.Parameter(torch.empty(config.context_length, config.width))
        self.blocks = nn.ModuleList(
            TransformerBlock(config.width, config.heads, config.mlp_ratio, config.activation, config.norm_eps)
            for _ in range(config.layers)
        )
        self.norm_final = Float32LayerNorm(config.width, eps=config.norm_eps)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)

    @property
    def num_features(self) -> int:
        return self.config.width

    def check_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        """Raise ``ValueError`` on ids that are not ``[B, L <= context_length]`` or a mask of another shape."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError(f"input_ids must be a [B, L] tensor; got {getattr(input_ids, 'shape', input_ids)!r}")
        if input_ids.shape[1] > self.config.context_length:
            raise ValueError(
                f"input_ids are {input_ids.shape[1]} tokens long; the context length is {self.config.context_length}"
            )
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask must have the shape of input_ids {tuple(input_ids.shape)}; "
                f"got {tuple(attention_mask.shape)}"
            )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``input_ids [B, L]`` and ``attention_mask [B, L]`` (1 on start..end, 0 on padding; ``None``: no
        padding) to ``[B, width]`` features at each row's end-of-text token."""
        self.check_inputs(input_ids, attention_mask)
        length = input_ids.shape[1]
        keep = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        allowed = keep[:, None, None, :]
        if self.config.causal:
            allowed = allowed & torch.ones(length, length, dtype=torch.bool, device=input_ids.device).tril()
        x = self.token_embedding(input_ids) + self.positional_embedding[:length]
        for block in self.blocks:
            if self.config.grad_checkpointing and self.training:
                x = torch.utils.checkpoint.checkpoint(block, x, allowed, use_reentrant=False)
            else:
                x = block(x, allowed)
        x = self.norm_final(x)
        by_mask = keep.long().sum(1).clamp(min=1) - 1
        end_of_text = input_ids.argmax(dim=1) if self.config.pool == "argmax" else by_mask
        return x[torch.arange(x.shape[0], device=x.device), end_of_text]
