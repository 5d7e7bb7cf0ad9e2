"""Released microsoft/UniCL checkpoints: files in the official layout load into the presets and reproduce the
official encoders.

The official code is not a dependency, so the reference here is written from its documented architecture: a
CLIP-style text transformer on ``nn.MultiheadAttention`` (QuickGELU, LayerNorm epsilon 1e-12, causal, read out at
the largest id) and the original Swin Transformer, which timm's Swin reproduces exactly; its weights are saved under
the original Swin names (patch merging at the end of each stage, the ``relative_position_index`` and ``attn_mask``
buffers present). Every parameter, norms included, is random.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
from collections import OrderedDict
from pathlib import Path

import open_clip
import pytest
import timm
import torch
from torch import nn

import unicl
from unicl.text.tokenizer import Tokenizer

CLIP_MERGES = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
SWIN = {"unicl_swin_tiny": "swin_tiny_patch4_window7_224", "unicl_swin_base": "swin_base_patch4_window7_224"}


class _QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class _Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width, eps=1e-12)
        self.mlp = nn.Sequential(
            OrderedDict(c_fc=nn.Linear(width, 4 * width), gelu=_QuickGELU(), c_proj=nn.Linear(4 * width, width))
        )
        self.ln_2 = nn.LayerNorm(width, eps=1e-12)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        x = x + self.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
        return x + self.mlp(self.ln_2(x))


class _OfficialText(nn.Module):
    """The released text tower, sequence-first as nn.MultiheadAttention takes it."""

    def __init__(self, vocab: int = 49408, context: int = 77, width: int = 512, layers: int = 12, heads: int = 8):
        super().__init__()
        self.token_embedding = nn.Embedding(vocab, width)
        self.positional_embedding = nn.Parameter(torch.empty(context, width))
        self.resblocks = nn.ModuleList(_Block(width, heads) for _ in range(layers))
        self.ln_final = nn.LayerNorm(width, eps=1e-12)
        self.register_buffer("mask", torch.full((context, context), float("-inf")).triu_(1), persistent=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = (self.token_embedding(ids) + self.positional_embedding).permute(1, 0, 2)
        for block in self.resblocks:
            x = block(x, self.mask)
        x = self.ln_final(x.permute(1, 0, 2))
        return x[torch.arange(x.shape[0]), ids.argmax(dim=-1)]


def _randomise(module: nn.Module, generator: torch.Generator) -> None:
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05 + (parameter == 1) * 1.0)


def _original_swin_names(timm_state: dict[str, torch.Tensor], depths: list[int]) -> dict[str, torch.Tensor]:
    """timm's Swin names back to the original code's: patch merging at the end of the previous stage, plus the
    buffers the original saves."""
    original = {}
    for name, tensor in timm_state.items():
        merging = re.match(r"layers\.(\d+)\.downsample\.(.+)", name)
        if merging is not None:
            name = f"layers.{int(merging.group(1)) - 1}.downsample.{merging.group(2)}"
        original[name] = tensor
    for stage, depth in enumerate(depths):
        for block in range(depth):
            original[f"layers.{stage}.blocks.{block}.attn.relative_position_index"] = torch.zeros(49, 49).long()
            if block % 2:
                original[f"layers.{stage}.blocks.{block}.attn_mask"] = torch.zeros(4, 49, 49)
    return original


def _official(preset: str, seed: int = 0):
    """An official-layout state dict and the reference encoders it defines."""
    generator = torch.Generator().manual_seed(seed)
    swin = timm.create_model(SWIN[preset], pretrained=False, num_classes=0).eval()
    text = _OfficialText().eval()
    _randomise(swin, generator)
    _randomise(text, generator)
    image_projection = torch.randn(swin.num_features, 512, generator=generator) * 0.05
    text_projection = torch.randn(512, 512, generator=generator) * 0.05
    depths = [len(stage.blocks) for stage in swin.layers]
    state = {f"image_encoder.{k}": v for k, v in _original_swin_names(swin.state_dict(), depths).items()}
    state.update({f"text_encoder.{k}": v for k, v in text.state_dict().items()})
    state.update(
        image_projection=image_projection, text_projection=text_projection, logit_scale=torch.tensor(math.log(50.0))
    )

    def encode_image(images):
        return nn.functional.normalize(swin(images) @ image_projection, dim=-1)

    def encode_text(ids):
        return nn.functional.normalize(text(ids) @ text_projection, dim=-1)

    return state, encode_image, encode_text


def _relayout(state: dict[str, torch.Tensor], image: str, text: str, projection: str, ddp: bool):
    renamed = {}
    for name, tensor in state.items():
        name = name.replace("image_encoder.", image, 1).replace("text_encoder.", text, 1)
        name = projection if name == "image_projection" else name
        renamed[("module." if ddp else "") + name] = tensor
    return renamed


@torch.no_grad()
def _assert_encoders_match(model, encode_image, encode_text, images, tokens) -> None:
    """unicl's encoders equal the reference ones to 1e-4 in float32."""
    torch.testing.assert_close(model.encode_image(images), encode_image(images), rtol=1e-4, atol=1e-4)
    got_text = model.encode_text(tokens["input_ids"], tokens["attention_mask"])
    torch.testing.assert_close(got_text, encode_text(tokens["input_ids"]), rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def tiny_official():
    return _official("unicl_swin_tiny")


@pytest.fixture(scope="module")
def tokens():
    tokenizer = Tokenizer.from_clip_bpe(CLIP_MERGES, context_length=77)
    return tokenizer(["a photo of a dog.", "an image of a small red car parked by the road", "x"])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("image", "text", "projection", "ddp", "wrapped"),
    [
        ("image_encoder.", "text_encoder.", "image_projection", False, True),
        ("visual.", "text.", "vision_projection", False, False),
        ("image_encoder.", "lang_encoder.", "image_projection", True, True),
    ],
)
def test_official_layouts_load_and_reproduce_the_official_encoders(
    tmp_path, tiny_official, tokens, image, text, projection, ddp, wrapped
):
    state, encode_image, encode_text = tiny_official
    saved = _relayout(state, image, text, projection, ddp)
    path = tmp_path / "in21k_yfcc14m.pth"
    torch.save({"model": saved, "epoch": 31} if wrapped else saved, path)
    model = unicl.create_model("unicl_swin_tiny", pretrained=path).eval()
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    _assert_encoders_match(model, encode_image, encode_text, images, tokens)
    with torch.no_grad():
        output = model(images, tokens["input_ids"], tokens["attention_mask"])
    torch.testing.assert_close(output["logit_scale"], torch.tensor(50.0))


@pytest.mark.slow
def test_swin_base_loads_and_reproduces_the_official_encoders(tmp_path, tokens):
    state, encode_image, encode_text = _official("unicl_swin_base", seed=3)
    path = tmp_path / "yfcc14m_swin_base.pth"
    torch.save({"model": state}, path)
    model = unicl.create_model("unicl_swin_base", pretrained=path).eval()
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    _assert_encoders_match(model, encode_image, encode_text, images, tokens)


@pytest.mark.slow
def test_loading_is_strict_and_names_the_problem(tmp_path, tiny_official):
    state = dict(tiny_official[0])
    del state["text_encoder.ln_final.bias"]
    state["text_encoder.extra.weight"] = torch.zeros(3)
    path = tmp_path / "broken.pth"
    torch.save({"model": state}, path)
    with pytest.raises(ValueError, match=r"1 missing: \['text_encoder.norm_final.bias'\].*1 unexpected"):
        unicl.create_model("unicl_swin_tiny", pretrained=path)
    whole = tmp_path / "whole.pth"
    torch.save({"model": tiny_official[0]}, whole)
    with pytest.raises(ValueError, match=r"of the wrong shape: \['image_projection.weight"):
        unicl.create_model("unicl_swin_tiny", pretrained=whole, embed_dim=256)


@pytest.mark.slow
def test_foreign_truncated_and_pickled_files_are_refused(tmp_path, tiny_official):
    path = tmp_path / "checkpoint.pth"
    torch.save({"model": {"w": torch.zeros(2)}, "config": {"lr": 0.1}}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated, corrupt, in another format"):
        unicl.create_model("unicl_swin_tiny", pretrained=path)
    torch.save({"model": {"w": torch.zeros(2)}, "config": nn.Identity()}, path)  # an object, not a tensor
    with pytest.raises(ValueError, match="pickles other objects, which unicl does not unpickle"):
        unicl.create_model("unicl_swin_tiny", pretrained=path)
    torch.save({"model": {"w": [1, 2]}}, path)
    with pytest.raises(ValueError, match="holds no state dict of tensors"):
        unicl.create_model("unicl_swin_tiny", pretrained=path)


# --- list_pretrained and pretrained=TAG --------------------------------------------------------------------------

#: The 13 releases as docs/pretrained.md listed them before list_pretrained existed (the authors' README figures):
#: preset, file, training data, supervised IN-1K top-1, zero-shot IN-1K top-1, zero-shot 14 datasets.
RELEASES = [
    ("unicl_swin_tiny", "in1k.pth", "IN-1K", 79.9, None, 30.2),
    ("unicl_swin_tiny", "in1k_gcc3m.pth", "IN-1K + GCC-3M", 80.2, None, 39.0),
    ("unicl_swin_tiny", "in1k_yfcc14m.pth", "IN-1K + YFCC-14M", 81.1, None, 40.0),
    ("unicl_swin_tiny", "in1k_gcc15m.pth", "IN-1K + GCC-15M", 81.8, None, 45.1),
    ("unicl_swin_tiny", "yfcc14m.pth", "YFCC-14M", None, 30.1, 36.3),
    ("unicl_swin_tiny", "in21k.pth", "IN-21K", None, 28.5, 37.8),
    ("unicl_swin_tiny", "in21k_yfcc14m_half.pth", "IN-21K (half) + YFCC-14M (half)", None, 36.4, 45.5),
    ("unicl_swin_tiny", "in21k_yfcc14m.pth", "IN-21K + YFCC-14M", None, 40.5, 49.1),
    ("unicl_swin_base", "yfcc14m_swin_base.pth", "YFCC-14M", None, 37.8, None),
    ("unicl_swin_base", "in21k_swin_base.pth", "IN-21K", None, 29.9, 42.4),
    ("unicl_swin_base", "in21k_yfcc14m_half_swin_base.pth", "IN-21K (half) + YFCC-14M (half)", None, 41.1, 48.5),
    ("unicl_swin_base", "in21k_yfcc14m_swin_base.pth", "IN-21K + YFCC-14M", None, 44.3, 52.2),
    ("unicl_swin_base", "in21k_yfcc14m_gcc15m_swin_base.pth", "IN-21K + YFCC-14M + GCC-15M", None, 57.9, None),
]


def test_list_pretrained_holds_the_13_releases_with_the_authors_figures():
    from unicl.models.pretrained import PretrainedCheckpoint

    entries = unicl.list_pretrained()
    assert all(isinstance(entry, PretrainedCheckpoint) for entry in entries)
    got = [
        (e.model, e.file_name, e.training_data, e.imagenet_top1, e.zero_shot_imagenet_top1, e.zero_shot_14_datasets)
        for e in entries
    ]
    assert got == RELEASES
    for entry in entries:
        assert entry.url == "https://projects4jw.blob.core.windows.net/unicl/release/" + entry.file_name
        assert entry.model in unicl.list_models()
        assert entry.size is None or entry.size > 0
        assert entry.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", entry.sha256)
    # A tag names one file per preset, and the file name is unique across presets.
    assert len({(e.model, e.tag) for e in entries}) == len({e.file_name for e in entries}) == 13
    assert [e.tag for e in unicl.list_pretrained("unicl_swin_base")] == [
        "yfcc14m", "in21k", "in21k_yfcc14m_half", "in21k_yfcc14m", "in21k_yfcc14m_gcc15m",
    ]  # fmt: skip
    assert unicl.list_pretrained("unicl_tiny") == []
    with pytest.raises(dataclasses.FrozenInstanceError):
        entries[0].sha256 = "0" * 64  # type: ignore[misc]


def test_the_checkpoint_directory_follows_unicl_home_then_xdg_cache_home(monkeypatch, tmp_path):
    from unicl.models.pretrained import checkpoint_dir

    monkeypatch.delenv("UNICL_HOME", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert checkpoint_dir() == Path.home() / ".cache" / "unicl" / "checkpoints"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert checkpoint_dir() == tmp_path / "cache" / "unicl" / "checkpoints"
    monkeypatch.setenv("UNICL_HOME", str(tmp_path / "home"))
    assert checkpoint_dir() == tmp_path / "home" / "checkpoints"
    assert unicl.list_pretrained()[0].local_path() == tmp_path / "home" / "checkpoints" / "in1k.pth"


def test_a_missing_tag_file_names_the_tag_the_path_and_the_url(monkeypatch, tmp_path):
    monkeypatch.setenv("UNICL_HOME", str(tmp_path))
    expected = tmp_path / "checkpoints" / "in21k_yfcc14m_swin_base.pth"
    with pytest.raises(FileNotFoundError) as caught:
        unicl.create_model("unicl_swin_base", pretrained="in21k_yfcc14m")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("pretrained='in21k_yfcc14m' of unicl_swin_base: ")
    assert f"{expected} does not exist" in message
    assert "fetch https://projects4jw.blob.core.windows.net/unicl/release/in21k_yfcc14m_swin_base.pth into " in message


def test_tags_of_another_preset_and_unknown_names_list_the_tags(monkeypatch, tmp_path):
    monkeypatch.setenv("UNICL_HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"'in1k' is not a released checkpoint of unicl_swin_base: its tags are "
                       r"yfcc14m, in21k, .*\('in1k' is a checkpoint of unicl_swin_tiny\)"):  # fmt: skip
        unicl.create_model("unicl_swin_base", pretrained="in1k")
    with pytest.raises(ValueError, match=r"of unicl_tiny: it has no released checkpoints \('in21k' is a checkpoint "
                       r"of unicl_swin_base and unicl_swin_tiny\)"):  # fmt: skip
        unicl.create_model("unicl_tiny", pretrained="in21k")
    with pytest.raises(FileNotFoundError, match=r"pretrained='in22k' does not exist, and is not a released checkpoint "
                       r"of unicl_swin_tiny: its tags are in1k, in1k_gcc3m"):  # fmt: skip
        unicl.create_model("unicl_swin_tiny", pretrained="in22k")


def _with_checks(monkeypatch, tag: str, model: str, path: Path, **changes) -> None:
    """Give the release ``tag`` of ``model`` the size and SHA-256 of ``path`` (or ``changes``)."""
    from unicl.models import pretrained

    known = {"size": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), **changes}
    table = tuple(
        dataclasses.replace(e, **known) if (e.model, e.tag) == (model, tag) else e for e in pretrained._CHECKPOINTS
    )
    monkeypatch.setattr(pretrained, "_CHECKPOINTS", table)


@pytest.mark.slow
def test_a_tag_loads_its_file_from_unicl_home_checked_by_size_and_sha256(monkeypatch, tmp_path, tiny_official, tokens):
    state, encode_image, encode_text = tiny_official
    monkeypatch.setenv("UNICL_HOME", str(tmp_path / "home"))
    path = tmp_path / "home" / "checkpoints" / "in21k_yfcc14m.pth"
    path.parent.mkdir(parents=True)
    torch.save({"model": state}, path)
    _with_checks(monkeypatch, "in21k_yfcc14m", "unicl_swin_tiny", path)
    model = unicl.create_model("unicl_swin_tiny", pretrained="in21k_yfcc14m").eval()
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    _assert_encoders_match(model, encode_image, encode_text, images, tokens)
    # The release's tokenizer is CLIP's BPE, found from the tag as from the file.
    assert unicl.models.model_tokenizer("unicl_swin_tiny", "in21k_yfcc14m").vocab_size == 49408

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    _with_checks(monkeypatch, "in21k_yfcc14m", "unicl_swin_tiny", path, sha256="0" * 64)
    with pytest.raises(ValueError) as caught:
        unicl.create_model("unicl_swin_tiny", pretrained="in21k_yfcc14m")
    assert str(caught.value) == (
        f"pretrained='in21k_yfcc14m' of unicl_swin_tiny: {path} has SHA-256 {digest}, not the release's {'0' * 64}: "
        "the download is incomplete or another file; fetch "
        "https://projects4jw.blob.core.windows.net/unicl/release/in21k_yfcc14m.pth again (a file you trust loads "
        "unchecked as pretrained=PATH)"
    )
    _with_checks(monkeypatch, "in21k_yfcc14m", "unicl_swin_tiny", path, size=path.stat().st_size + 1)
    with pytest.raises(ValueError, match=rf"has {path.stat().st_size} bytes, not the release's "
                       rf"{path.stat().st_size + 1}: the download is incomplete"):  # fmt: skip
        unicl.create_model("unicl_swin_tiny", pretrained="in21k_yfcc14m")


def test_the_published_sha256_refuses_another_file_before_building_the_model(monkeypatch, tmp_path):
    monkeypatch.setenv("UNICL_HOME", str(tmp_path))
    path = tmp_path / "checkpoints" / "in21k_yfcc14m_gcc15m_swin_base.pth"
    path.parent.mkdir()
    path.write_bytes(b"not the release")
    with pytest.raises(ValueError, match=r"has SHA-256 [0-9a-f]{64}, not the release's e4bde31bbce5"):
        unicl.create_model("unicl_swin_base", pretrained="in21k_yfcc14m_gcc15m")


def _table_row(entry) -> str:
    def number(value: float | None) -> str:
        return "—" if value is None else f"{value:.1f}"

    size = "unknown" if entry.size is None else f"{entry.size:,} bytes"
    sha256 = "unknown" if entry.sha256 is None else f"`{entry.sha256}`"
    return (
        f"| `{entry.model}` | `{entry.tag}` | {entry.training_data} | {number(entry.zero_shot_imagenet_top1)} | "
        f"{number(entry.imagenet_top1)} | {number(entry.zero_shot_14_datasets)} | `{entry.file_name}` | {size} | "
        f"{sha256} |"
    )


def test_the_pretrained_page_table_is_list_pretrained():
    page = (Path(__file__).resolve().parents[1] / "docs" / "pretrained.md").read_text().splitlines()
    header = "| preset | tag | training data | ZS IN-1K | IN-1K top-1 | ZS 14 datasets | file | size | SHA-256 |"
    start = page.index(header) + 2  # after the header and its rule
    expected = [_table_row(entry) for entry in unicl.list_pretrained()]
    rows = page[start : start + len(expected) + 1]
    assert rows == [*expected, ""], "docs/pretrained.md's table should be:\n" + "\n".join(expected)


def test_a_release_file_name_is_found_in_unicl_home(monkeypatch, tmp_path):
    # The README's example: --pretrained in21k_yfcc14m_swin_base.pth, the file in $UNICL_HOME/checkpoints.
    from unicl.models.pretrained import resolve_pretrained

    monkeypatch.setenv("UNICL_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    stored = tmp_path / "home" / "checkpoints" / "in21k_yfcc14m_swin_base.pth"
    stored.parent.mkdir(parents=True)
    stored.write_bytes(b"weights")
    assert resolve_pretrained("unicl_swin_base", "in21k_yfcc14m_swin_base.pth") == stored
    # A file of that name in the working directory is the one meant.
    (tmp_path / "in21k_yfcc14m_swin_base.pth").write_bytes(b"local")
    assert resolve_pretrained("unicl_swin_base", "in21k_yfcc14m_swin_base.pth").resolve() == (
        tmp_path / "in21k_yfcc14m_swin_base.pth"
    )


def test_a_missing_release_file_name_says_where_it_looked(monkeypatch, tmp_path):
    monkeypatch.setenv("UNICL_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError) as caught:
        unicl.create_model("unicl_swin_base", pretrained="in21k_yfcc14m_swin_base.pth")
    message = str(caught.value)
    assert "\n" not in message
    assert str(tmp_path / "in21k_yfcc14m_swin_base.pth") in message
    assert str(tmp_path / "home" / "checkpoints" / "in21k_yfcc14m_swin_base.pth") in message


def test_a_release_file_that_is_not_a_checkpoint_is_one_line(tmp_path):
    from unicl.models.official import read_official_checkpoint

    (tmp_path / "junk.pth").write_bytes(b"junk\n")
    with pytest.raises(ValueError, match=r"junk\.pth is not a readable PyTorch checkpoint of tensors"):
        read_official_checkpoint(tmp_path / "junk.pth")
