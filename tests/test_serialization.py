"""unicl's safetensors checkpoint format: bit-exact round trips, strict loading, clear errors for bad files."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

import unicl
from unicl.models.serialization import CONFIG_NAME, WEIGHTS_NAME


def _model(seed: int = 0, **overrides) -> unicl.UniCLModel:
    torch.manual_seed(seed)
    return unicl.create_model("unicl_tiny", **overrides).eval()


def _assert_same_tensors(a: torch.nn.Module, b: torch.nn.Module) -> None:
    first, second = a.state_dict(), b.state_dict()
    assert list(first) == list(second)
    for name in first:
        assert first[name].dtype == second[name].dtype, name
        assert torch.equal(first[name], second[name]), name


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_round_trip_is_bit_exact_and_keeps_the_dtype(tmp_path, dtype):
    model = _model(embed_dim=32, text={"layers": 1}).to(dtype)
    model.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]  # no temporaries left
    again = unicl.load_model(tmp_path)
    _assert_same_tensors(model, again)
    assert again.config == model.config
    images, ids = torch.randn(2, 3, 32, 32, dtype=dtype), torch.randint(0, 1000, (2, 16))
    with torch.no_grad():
        for key, value in model(images, ids).items():
            assert torch.equal(value, again.eval()(images, ids)[key]), key


def test_create_model_loads_a_directory_or_a_safetensors_file(tmp_path):
    model = _model(seed=1)
    model.save_pretrained(tmp_path)
    _assert_same_tensors(model, unicl.create_model("unicl_tiny", pretrained=tmp_path))
    _assert_same_tensors(model, unicl.create_model("unicl_tiny", pretrained=str(tmp_path / WEIGHTS_NAME)))


def test_the_weights_file_holds_no_pickle(tmp_path):
    _model().save_pretrained(tmp_path)
    data = (tmp_path / WEIGHTS_NAME).read_bytes()
    header_length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + header_length])
    assert header["__metadata__"] == {"format": "pt"}
    assert b"\x80\x04" not in data[:16]  # a pickle protocol mark would open a torch.save file


def test_equal_weights_give_equal_files(tmp_path):
    model = _model()
    for attempt in range(5):
        model.save_pretrained(tmp_path / str(attempt))
    files = {(tmp_path / str(attempt) / WEIGHTS_NAME).read_bytes() for attempt in range(5)}
    assert len(files) == 1


def test_weights_of_another_shape_name_every_problem(tmp_path):
    _model().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"does not fit this model: .*of the wrong shape: \['image_projection.weight"):
        unicl.create_model("unicl_tiny", pretrained=tmp_path, embed_dim=48)
    with pytest.raises(ValueError, match=r"\d+ missing: \[.*text_encoder.blocks.2"):
        unicl.create_model("unicl_tiny", pretrained=tmp_path, text={"layers": 3})
    with pytest.raises(ValueError, match=r"\d+ unexpected: \[.*text_encoder.blocks.1"):
        unicl.create_model("unicl_tiny", pretrained=tmp_path, text={"layers": 1})


def test_truncated_corrupt_and_foreign_files_say_so(tmp_path):
    folder = tmp_path / "saved"
    _model().save_pretrained(folder)
    weights = folder / WEIGHTS_NAME
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated, corrupt or in another format"):
        unicl.load_model(folder)
    weights.write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="truncated, corrupt or in another format"):
        unicl.load_model(folder)
    foreign = tmp_path / "official.safetensors"
    foreign.write_bytes(pickle.dumps({"model": {"w": [1, 2]}}))
    with pytest.raises(ValueError, match="truncated, corrupt or in another format"):
        unicl.create_model("unicl_tiny", pretrained=foreign)
    other = tmp_path / "checkpoint.ckpt"
    other.write_bytes(pickle.dumps({}))
    with pytest.raises(ValueError, match=r"expected a directory written by save_pretrained, a \.safetensors file"):
        unicl.create_model("unicl_tiny", pretrained=other)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        unicl.create_model("unicl_tiny", pretrained=tmp_path / "nothing-here")


def test_bad_configuration_files_name_the_problem(tmp_path):
    _model().save_pretrained(tmp_path)
    config = tmp_path / CONFIG_NAME
    saved = json.loads(config.read_text())
    config.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        unicl.load_model(tmp_path)
    config.write_text(json.dumps({**saved, "format_version": 99}))
    with pytest.raises(ValueError, match=r"format version 1 .*format_version=99"):
        unicl.load_model(tmp_path)
    saved["model"]["text"]["depth"] = 3
    config.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"model.text has unknown field\(s\) \['depth'\]"):
        unicl.load_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="expected a directory written by save_pretrained"):
        unicl.load_model(tmp_path / "elsewhere")


def test_save_pretrained_refuses_other_modules(tmp_path):
    from unicl.models import save_pretrained

    with pytest.raises(TypeError, match=r"model must be a unicl\.UniCLModel"):
        save_pretrained(torch.nn.Linear(2, 2), tmp_path)
