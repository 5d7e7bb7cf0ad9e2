"""Tiny models of other libraries, built on this machine for the adapter tests (``open_clip:ARCH``, ``hf:DIR``):
nothing is downloaded.

An open_clip ViT registered from a config dict as `ARCH` and saved as a state dict file; a transformers ``CLIPModel``
(with CLIP's real BPE, from open_clip's merges file) and a ``SiglipModel`` (with a fast tokenizer trained here) saved
with ``save_pretrained``; and image-label folders of the classes `NAMES`. open_clip and transformers are imported by
the builders, so a test module skips them first (``pytest.importorskip``).
"""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import torch
from PIL import Image

from unicl.text.tokenizer import CLIP_NUM_MERGES, bytes_to_unicode, find_clip_merges

#: The open_clip architecture `build_open_clip_file` registers.
ARCH = "unicl-test-tiny-vit"
NAMES = ["cat", "dog", "small bird"]
TEMPLATES = ["a photo of a {}.", "a drawing of the {}"]
TEXTS = ["a photo of a cat", "Hello World! &amp; a very long caption " * 4, "ÜNICODE  spaces"]


def sample_images(count: int, size: int = 40) -> list[Image.Image]:
    """``count`` RGB images of random pixels (seeded: the same every call)."""
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (count, size, size, 3), generator=generator, dtype=torch.uint8)
    return [Image.fromarray(p.numpy()) for p in pixels]


def build_open_clip_file(folder: Path) -> Path:
    """A tiny open_clip ViT registered as `ARCH`, its random weights saved as a state dict file in ``folder``."""
    import open_clip

    config = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "patch_size": 8, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
    }
    (folder / "configs").mkdir()
    (folder / "configs" / f"{ARCH}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder / "configs")
    torch.manual_seed(0)
    model = open_clip.create_model(ARCH)
    with torch.no_grad():
        model.logit_scale.fill_(2.5)  # not the initial value, so loading it is checked
    torch.save(model.state_dict(), folder / "open_clip.pt")
    return folder / "open_clip.pt"


def clip_tokenizer():
    """transformers' CLIPTokenizer on CLIP's real BPE (the merges file open_clip ships)."""
    import transformers

    with gzip.open(find_clip_merges(), "rt", encoding="utf-8") as handle:
        merges = [tuple(line.split()) for line in handle.read().split("\n")[1 : CLIP_NUM_MERGES + 1]]
    characters = list(bytes_to_unicode().values())
    tokens = characters + [c + "</w>" for c in characters] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return transformers.CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=merges)


def build_clip_dir(folder: Path) -> Path:
    """A tiny transformers ``CLIPModel`` directory (model, CLIP's tokenizer, image processor) in ``folder``."""
    import transformers

    torch.manual_seed(1)
    config = transformers.CLIPConfig(
        text_config={"vocab_size": 49408, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 16, "bos_token_id": 49406,
                     "eos_token_id": 49407, "pad_token_id": 49407},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
        projection_dim=16,
    )  # fmt: skip
    directory = folder / "clip"
    transformers.CLIPModel(config).save_pretrained(directory)
    clip_tokenizer().save_pretrained(directory)
    processor = transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(directory)
    return directory


def build_siglip_dir(folder: Path) -> Path:
    """A tiny transformers ``SiglipModel`` directory in ``folder``, with a fast tokenizer trained here (text, then
    ``</s>``, padded with ``<pad>``) and a logit bias of -3."""
    import transformers
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, normalizers, pre_tokenizers, processors, trainers

    torch.manual_seed(2)
    base = HFTokenizer(models.BPE(unk_token="<unk>"))
    base.normalizer = normalizers.Lowercase()
    base.pre_tokenizer = pre_tokenizers.Metaspace()
    corpus = [template.format(name) for template in TEMPLATES for name in NAMES] + TEXTS
    base.train_from_iterator(corpus * 5, trainers.BpeTrainer(vocab_size=120, special_tokens=["<pad>", "</s>", "<unk>"]))
    base.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=base, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", model_max_length=16
    )
    config = transformers.SiglipConfig(
        text_config={"vocab_size": 120, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "max_position_embeddings": 16},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 8},
    )  # fmt: skip
    directory = folder / "siglip"
    model = transformers.SiglipModel(config)
    with torch.no_grad():
        # A trained SigLIP's scale exceeds CLIP's bound of 100 (its training has no clamp): the adapter must keep it.
        model.logit_scale.fill_(math.log(117.0))
        model.logit_bias.fill_(-3.0)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    transformers.SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(directory)
    return directory


def image_folder(root: Path, count: int) -> Path:
    """An ImageFolder at ``root``: ``count`` 32×32 images per class of `NAMES`, each with a class-coloured corner."""
    for index, name in enumerate(NAMES):
        (root / name).mkdir(parents=True)
        for number, image in enumerate(sample_images(count, size=32)):
            # A class-coloured corner, so the classes differ.
            image.paste((80 * index, 255 - 80 * index, 0), (0, 0, 8, 8))
            image.save(root / name / f"{number}.png")
    return root
