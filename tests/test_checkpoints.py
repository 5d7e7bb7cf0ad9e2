"""Fault-tolerant checkpoints: atomic writes, newest valid first, damaged files skipped with a warning."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from unicl.training import CheckpointDirectory, DamagedCheckpoint, UnusableCheckpoint, read_checkpoint


def _state(step: int) -> dict:
    generator = torch.Generator().manual_seed(step)
    return {
        "step": step,
        "model": {"weight": torch.randn(3, 4, generator=generator)},
        "rng": torch.get_rng_state(),
        "data": {"epoch": 1, "batch": step % 7},
    }


def test_round_trip_and_newest_first(tmp_path):
    checkpoints = CheckpointDirectory(tmp_path / "run")
    for step in (3, 12, 7):
        checkpoints.save(step, _state(step))
    assert [path.name for path in checkpoints.paths()] == [
        "step-000000012.pt",
        "step-000000007.pt",
        "step-000000003.pt",
    ]
    path, state = checkpoints.load_latest()
    assert path.name == "step-000000012.pt" and state["step"] == 12
    assert torch.equal(state["model"]["weight"], _state(12)["model"]["weight"])
    assert torch.equal(state["rng"], _state(12)["rng"]) and state["data"] == {"epoch": 1, "batch": 5}


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "flipped"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_with_a_warning(tmp_path, damage):
    checkpoints = CheckpointDirectory(tmp_path)
    checkpoints.save(1, _state(1))
    newest = checkpoints.save(2, _state(2))
    data = newest.read_bytes()
    if damage == "truncated":
        newest.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        newest.write_bytes(os.urandom(256))
    elif damage == "empty":
        newest.write_bytes(b"")
    else:  # one byte changed on disk: torch.load would read the tensor without noticing; its CRC-32 does not match
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0xFF
        newest.write_bytes(bytes(flipped))
    with pytest.warns(UserWarning, match=r"skipping checkpoint .*step-000000002\.pt"):
        path, state = checkpoints.load_latest()
    assert path.name == "step-000000001.pt" and state["step"] == 1


@pytest.mark.parametrize(
    ("content", "words"),
    [([1, 2, 3], "holds a list, not a checkpoint's dictionary"),
     ({"options": os.environ.__class__}, "reads back whole but cannot be loaded by this version")],
)  # fmt: skip
def test_a_whole_checkpoint_that_cannot_be_used_is_not_skipped(tmp_path, content, words):
    """Skipping it would silently resume from an older step; the error names the file and the problem."""
    checkpoints = CheckpointDirectory(tmp_path)
    checkpoints.save(1, _state(1))
    torch.save(content, checkpoints.path_for(2))
    with pytest.raises(UnusableCheckpoint, match=words) as raised:
        checkpoints.load_latest()
    assert "step-000000002.pt" in str(raised.value) and "\n" not in str(raised.value)


def test_read_checkpoint_tells_damage_from_absence(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(DamagedCheckpoint, match=r"truncated or not a torch\.save archive"):
        read_checkpoint(tmp_path / "text.pt")


def test_nothing_to_resume_from(tmp_path):
    checkpoints = CheckpointDirectory(tmp_path)
    assert checkpoints.load_latest() is None
    checkpoints.save(5, _state(5))
    checkpoints.path_for(5).write_bytes(b"\0" * 10)
    with pytest.warns(UserWarning):
        assert checkpoints.load_latest() is None


def test_temporary_and_foreign_files_are_never_taken_for_checkpoints(tmp_path):
    checkpoints = CheckpointDirectory(tmp_path)
    checkpoints.save(4, _state(4))
    (tmp_path / ".step-000000009.pt.abc.tmp").write_bytes(b"half written")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "step-9.pt").write_bytes(b"wrong name")
    assert [path.name for path in checkpoints.paths()] == ["step-000000004.pt"]
    assert checkpoints.load_latest()[1]["step"] == 4


def test_a_failed_save_leaves_no_file_behind(tmp_path):
    checkpoints = CheckpointDirectory(tmp_path)
    checkpoints.save(1, _state(1))

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("cannot pickle this")

    with pytest.raises(RuntimeError, match="cannot pickle this"):
        checkpoints.save(2, {"bad": Unpicklable()})
    assert sorted(path.name for path in tmp_path.iterdir()) == ["step-000000001.pt"]


def test_keep_prunes_the_oldest_and_bad_arguments_are_named(tmp_path):
    checkpoints = CheckpointDirectory(tmp_path, keep=2)
    for step in range(5):
        checkpoints.save(step, {"step": step})
    assert [path.name for path in checkpoints.paths()] == ["step-000000004.pt", "step-000000003.pt"]
    with pytest.raises(ValueError, match="keep must be an int >= 1"):
        CheckpointDirectory(tmp_path, keep=0)
    with pytest.raises(ValueError, match="step must be an int >= 0"):
        checkpoints.path_for(-1)


def test_a_checkpoint_that_cannot_be_opened_is_not_taken_for_damage(tmp_path, monkeypatch):
    """Permission or network-mount errors say nothing about the file's bytes: no fallback to an older step."""
    checkpoints = CheckpointDirectory(tmp_path)
    checkpoints.save(1, _state(1))
    newest = checkpoints.save(2, _state(2))
    original_open = Path.open

    def refusing_open(self, *args, **kwargs):
        if self == newest:
            raise PermissionError(13, "Permission denied", str(self))
        return original_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refusing_open)
    with pytest.raises(UnusableCheckpoint, match=r"step-000000002\.pt cannot be opened: Permission denied"):
        checkpoints.load_latest()


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_saved_files_get_the_users_umask(tmp_path, umask):
    """Checkpoints, saved models and feature caches are written atomically, with the mode any file of the user gets."""
    import unicl
    from unicl.evaluation.features import _write_cache

    previous = os.umask(umask)
    try:
        checkpoint = CheckpointDirectory(tmp_path / "checkpoints").save(1, _state(1))
        model = unicl.create_model("unicl_tiny", embed_dim=8, text={"layers": 1, "width": 8, "heads": 1})
        saved = model.save_pretrained(tmp_path / "model")
        _write_cache(tmp_path / "cache" / "features.safetensors", "0", torch.zeros(2, 3), torch.zeros(2))
    finally:
        os.umask(previous)
    cache = tmp_path / "cache" / "features.safetensors"
    files = [checkpoint, saved / "model.safetensors", saved / "config.json", cache]
    assert {path.name: path.stat().st_mode & 0o777 for path in files} == {path.name: 0o666 & ~umask for path in files}
    assert sorted(path.name for path in (tmp_path / "checkpoints").iterdir()) == ["step-000000001.pt"]
