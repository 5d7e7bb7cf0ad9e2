"""The released microsoft/UniCL checkpoints: reading their files and renaming their tensors to unicl's.

A release file is a ``torch.save`` of ``{"model": state_dict, ...}`` or of a bare state dict. Its tensor names use
one of the prefixes of the official and derived code: ``image_encoder.`` or ``visual.`` (the original Swin
Transformer), ``text_encoder.``, ``lang_encoder.`` or ``text.`` (a CLIP-style text transformer on
``nn.MultiheadAttention``), ``image_projection`` or ``vision_projection``, ``text_projection`` and ``logit_scale``;
``module.`` from a DistributedDataParallel wrapper may precede them all. The conversion:

* the Swin tower goes through timm's own converter for the original Swin layout (each stage's patch merging moves
  to the start of the next stage; the ``relative_position_index`` and ``attn_mask`` buffers, which timm rebuilds,
  are dropped);
* the text tower is renamed block by block: ``attn.in_proj_*`` (queries, keys and values packed in that order, as
  unicl's ``qkv`` is) to ``qkv``, ``attn.out_proj`` to ``out``, ``ln_1``/``ln_2`` to ``norm_attention``/``norm_mlp``,
  ``mlp.c_fc``/``mlp.c_proj`` to ``mlp.0``/``mlp.2``, ``ln_final`` to ``norm_final``;
* the projections, stored as ``[in, out]`` matrices applied as ``x @ W``, become the transposed weights of
  bias-free ``nn.Linear`` layers; ``logit_scale`` stays in log space.

Only tensors are read (``torch.load(weights_only=True)``): a file that pickles other objects is refused with a
message, never unpickled.
"""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path

import timm.models.swin_transformer as timm_swin
import torch
from torch import nn

from unicl._checks import first_line

#: The official prefixes of each part, first match wins.
IMAGE_PREFIXES = ("image_encoder.", "visual.")
TEXT_PREFIXES = ("text_encoder.", "lang_encoder.", "text.")
PROJECTIONS = {"image_projection": "image_projection", "vision_projection": "image_projection"}
#: Text-tower names: official (after ``resblocks.{i}.``) to unicl (after ``blocks.{i}.``).
TEXT_BLOCK_NAMES = {
    "attn.in_proj_weight": "qkv.weight",
    "attn.in_proj_bias": "qkv.bias",
    "attn.out_proj.weight": "out.weight",
    "attn.out_proj.bias": "out.bias",
    "ln_1.weight": "norm_attention.weight",
    "ln_1.bias": "norm_attention.bias",
    "ln_2.weight": "norm_mlp.weight",
    "ln_2.bias": "norm_mlp.bias",
    "mlp.c_fc.weight": "mlp.0.weight",
    "mlp.c_fc.bias": "mlp.0.bias",
    "mlp.c_proj.weight": "mlp.2.weight",
    "mlp.c_proj.bias": "mlp.2.bias",
}
TEXT_TOP_NAMES = {
    "token_embedding.weight": "token_embedding.weight",
    "positional_embedding": "positional_embedding",
    "ln_final.weight": "norm_final.weight",
    "ln_final.bias": "norm_final.bias",
}


def read_official_checkpoint(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The state dict inside a release file (``{"model": state_dict, ...}`` or a bare state dict).

    Raises:
        FileNotFoundError: no such file.
        ValueError: a truncated or foreign file, one that pickles objects other than tensors, or one without a
            state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    # A file that is not a pickle at all fails inside the legacy unpickler with a KeyError (an unknown opcode).
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError, KeyError) as error:
        raise ValueError(
            f"{path} is not a readable PyTorch checkpoint of tensors: it is truncated, corrupt, in another format, "
            f"or pickles other objects, which unicl does not unpickle ({first_line(error)}). "
            "If you trust the file, re-save its tensors: torch.save(torch.load(path, weights_only=False)['model'], "
            "new_path)"
        ) from error
    state = saved.get("model", saved) if isinstance(saved, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} holds no state dict of tensors (expected {{'model': state_dict}} or a state dict)")
    return state


def convert_official_state_dict(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Rename the tensors of a release state dict to those of a `unicl.UniCLModel` (see the module
    docstring). Names that belong to no known part are kept as they are, so strict loading reports them.

    Args:
        state: the release state dict, in any of the prefix layouts.
        model: the model it is for (its Swin tower tells timm's converter the layout).
    """
    image: dict[str, torch.Tensor] = {}
    converted: dict[str, torch.Tensor] = {}
    for raw_name, tensor in state.items():
        name = raw_name.removeprefix("module.")
        image_prefix = next((p for p in IMAGE_PREFIXES if name.startswith(p)), None)
        text_prefix = next((p for p in TEXT_PREFIXES if name.startswith(p)), None)
        if image_prefix is not None:
            image[name[len(image_prefix) :]] = tensor
        elif text_prefix is not None:
            converted["text_encoder." + _text_name(name[len(text_prefix) :])] = tensor
        elif name in PROJECTIONS or name == "text_projection":
            converted[f"{PROJECTIONS.get(name, name)}.weight"] = tensor.t().contiguous()
        else:
            converted[name] = tensor
    backbone = model.get_submodule("image_encoder.backbone")
    if image:
        if isinstance(backbone, timm_swin.SwinTransformer):
            image = timm_swin.checkpoint_filter_fn(image, backbone)
        converted.update({f"image_encoder.backbone.{name}": tensor for name, tensor in image.items()})
    return converted


def _text_name(name: str) -> str:
    block = re.fullmatch(r"(?:transformer\.)?resblocks\.(\d+)\.(.+)", name)
    if block is not None and block.group(2) in TEXT_BLOCK_NAMES:
        return f"blocks.{block.group(1)}.{TEXT_BLOCK_NAMES[block.group(2)]}"
    return TEXT_TOP_NAMES.get(name, name)
