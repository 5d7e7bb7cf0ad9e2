"""The UniCL model: two towers, two projections, a learnable temperature and, for the sigmoid objective, a learnable
logit bias."""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from unicl.models.files import write_model_directory
from unicl.models.heads import projection_head
from unicl.models.image import ImageConfig, ImageEncoder
from unicl.models.text import TextConfig, TextTransformer
from unicl.text.tokenizer import Tokenizer


@dataclass
class UniCLConfig:
    """A whole model.

    Attributes:
        image: the image tower.
        text: the text tower.
        embed_dim: width of the shared embedding space.
        projection: ``"linear"`` (bias-free, as in UniCL) or ``"mlp"``.
        init_temperature: initial temperature; the logit scale starts at ``1 / init_temperature``.
        max_logit_scale: the exponent of ``logit_scale`` is clamped here in forward.
        logit_bias: the initial value of a learnable logit bias ``b``, for a model trained with the sigmoid objective
            (`unicl.UniCLSigmoidLoss`: SigLIP's ``σ(s · cos + b)``; SigLIP starts at ``b = −10`` with the scale at
            10, ``init_temperature=0.1``); ``None``: no bias (the softmax objective, `unicl.UniCLLoss`).
    """

    image: ImageConfig = field(default_factory=ImageConfig)
    text: TextConfig = field(default_factory=TextConfig)
    embed_dim: int = 512
    projection: str = "linear"
    init_temperature: float = 0.07
    max_logit_scale: float = 100.0
    logit_bias: float | None = None


class UniCLModel(nn.Module):
    """Image and text towers projected into one space, with a learnable temperature.

    ``forward`` returns ``{"image_features", "text_features", "logit_scale"}``, the argument names of
    `unicl.UniCLLoss`, so a training step is ``loss_fn(**model(images, ids, mask), labels=y)``. A model with a
    logit bias (``config.logit_bias``, for the sigmoid objective) also returns ``"logit_bias"``, the last argument of
    `unicl.UniCLSigmoidLoss`, so the same line trains it.

    Args:
        config: the `UniCLConfig`.

    Examples:
        >>> import torch, unicl
        >>> model = unicl.create_model("unicl_tiny")
        >>> out = model(torch.randn(2, 3, 32, 32), torch.randint(0, 1000, (2, 16)))
        >>> out["image_features"].shape, float(out["logit_scale"].detach()) > 14
        (torch.Size([2, 64]), True)
    """

    def __init__(self, config: UniCLConfig) -> None:
        super().__init__()
        self.config = config
        self.image_encoder = ImageEncoder(config.image)
        self.text_encoder = TextTransformer(config.text)
        self.image_projection = projection_head(self.image_encoder.num_features, config.embed_dim, config.projection)
        self.text_projection = projection_head(self.text_encoder.num_features, config.embed_dim, config.projection)
        # Stored in log space, as in CLIP: the optimiser then moves the temperature multiplicatively.
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / config.init_temperature)))
        # Registered as None without a bias, so a softmax model's state dict (and every model saved before the bias
        # existed) has no such tensor.
        self.logit_bias: nn.Parameter | None
        if config.logit_bias is None:
            self.register_parameter("logit_bias", None)
        else:
            self.logit_bias = nn.Parameter(torch.tensor(float(config.logit_bias)))

    def encode_image(self, images: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        """``[B, C, H, W]`` images to ``[B, embed_dim]`` embeddings (unit rows when ``normalize``)."""
        features = self.image_projection(self.image_encoder(images))
        return F.normalize(features, dim=-1) if normalize else features

    def encode_text(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, normalize: bool = True
    ) -> torch.Tensor:
        """``[B, L]`` ids (and mask) to ``[B, embed_dim]`` embeddings (unit rows when ``normalize``)."""
        features = self.text_projection(self.text_encoder(input_ids, attention_mask))
        return F.normalize(features, dim=-1) if normalize else features

    def forward(
        self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Both embeddings (``[B, embed_dim]``, unit rows), the current logit scale ``exp(logit_scale)`` clamped at
        ``max_logit_scale`` (0-dim) and, for a model with a bias, the logit bias (0-dim)."""
        outputs = {
            "image_features": self.encode_image(images),
            "text_features": self.encode_text(input_ids, attention_mask),
            "logit_scale": self.clamped_logit_scale(),
        }
        if self.logit_bias is not None:
            outputs["logit_bias"] = self.logit_bias
        return outputs

    def clamped_logit_scale(self) -> torch.Tensor:
        """The 0-dim logit scale ``exp(logit_scale)``, clamped at ``max_logit_scale`` (CLIP's bound of 100).

        Training, the zero-shot heads and the probes all take the scale from here. Above the bound the clamp passes
        no gradient, so a training loop also calls `bound_logit_scale_` after each optimiser step.
        """
        return self.logit_scale.exp().clamp(max=self.config.max_logit_scale)

    @torch.no_grad()
    def bound_logit_scale_(self) -> None:
        """Keep the stored parameter in ``[0, log max_logit_scale]`` (the scale in ``[1, max_logit_scale]``), in place.

        CLIP's clamp after each optimiser step. With `clamped_logit_scale` alone, a parameter that crossed the bound
        would get no gradient and stay there; projected here, to the largest value whose ``exp`` does not exceed the
        bound in the parameter's dtype (``exp(float32(log 100))`` is one ulp above 100), the scale keeps its gradient
        at the bound and can come back down.
        """
        upper = torch.tensor(math.log(self.config.max_logit_scale), dtype=self.logit_scale.dtype)
        if upper.exp() > self.config.max_logit_scale:
            upper = torch.nextafter(upper, torch.zeros_like(upper))
        self.logit_scale.clamp_(0, float(upper))

    def save_pretrained(self, directory: str | os.PathLike[str], tokenizer: Tokenizer | None = None) -> Path:
        """Write this model (and its tokenizer, if given) to ``directory`` as safetensors weights and a JSON config
        (`unicl.models.files.write_model_directory`); `unicl.load_model` restores it bit for bit and
        ``unicl.get_tokenizer(directory)`` its tokenizer.

        Raises:
            TypeError: ``tokenizer`` is not a ``Tokenizer``.
        """
        return write_model_directory(directory, self.state_dict(), asdict(self.config), tokenizer)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Optimiser groups: weight decay on matrices, none on norms, biases, embeddings and the temperature.

        Examples:
            >>> import torch, unicl
            >>> model = unicl.create_model("unicl_tiny")
            >>> optimizer = torch.optim.AdamW(model.param_groups(weight_decay=0.1), lr=1e-3)
        """
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        embeddings = {id(self.text_encoder.token_embedding.weight), id(self.text_encoder.positional_embedding)}
        for name, parameter in self.named_parameters():
            if not parameter.requires_grad:
                continue
            exempt = parameter.dim() < 2 or id(parameter) in embeddings or "pos_embed" in name or "cls_token" in name
            (no_decay if exempt else decay).append(parameter)
        return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
