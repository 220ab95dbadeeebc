"""Checkpoints: atomic writes that leave the previous file intact on failure, and reads with clear errors."""

import errno
import json

import pytest
import torch

import multimix.engine.checkpoint as checkpoint_module
from multimix.engine.checkpoint import (CheckpointError, load_checkpoint, load_into, save_atomic, write_json_atomic,
                                        write_text_atomic)


def state(epoch):
    g = torch.Generator().manual_seed(epoch)
    return {"epoch": epoch, "model": {"w": torch.randn(3, 4, generator=g), "b": torch.arange(4)},
            "history": [{"epoch": epoch, "loss": 0.5}]}


def assert_same(a, b):
    assert a["epoch"] == b["epoch"] and a["history"] == b["history"]
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_save_then_load_round_trips(tmp_path):
    path = tmp_path / "last.pt"
    save_atomic(state(1), path)
    assert_same(load_checkpoint(path), state(1))
    save_atomic(state(2), path)  # replaces the previous one
    assert_same(load_checkpoint(path), state(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_a_full_disk_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_atomic(state(1), path)
    before = path.read_bytes()

    def full_disk(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_module.torch, "save", full_disk)
    with pytest.raises(OSError) as err:
        save_atomic(state(2), path)
    assert err.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert_same(load_checkpoint(path), state(1))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]


def test_an_interrupt_mid_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    def interrupted(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module.torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_atomic(state(1), tmp_path / "last.pt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", [b"not a checkpoint", b"", b"PK\x03\x04 truncated zip"])
def test_garbage_is_corrupted(tmp_path, content):
    path = tmp_path / "last.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="corrupted") as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


def test_truncated_checkpoint_is_corrupted(tmp_path):
    path = tmp_path / "last.pt"
    save_atomic(state(1), path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(path)


def test_missing_and_foreign_checkpoints(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="missing model/epoch"):
        load_checkpoint(tmp_path / "other.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(CheckpointError, match="not a multimix checkpoint"):
        load_checkpoint(tmp_path / "list.pt")


def test_load_into_names_what_does_not_match(tmp_path):
    model = torch.nn.Linear(3, 2)
    with pytest.raises(CheckpointError, match="does not match this run's model") as err:
        load_into(model, torch.nn.Linear(4, 2).state_dict(), "model", tmp_path / "last.pt")
    assert str(tmp_path / "last.pt") in str(err.value)
    other = torch.nn.Linear(3, 2)
    load_into(model, other.state_dict(), "model", tmp_path / "last.pt")
    assert torch.equal(model.weight, other.weight)


def test_write_json_and_text_atomic(tmp_path):
    data = {"status": "completed", "final": {"test_accuracy": 97.5}, "epochs": [1, 2], "note": "Δ ünïcode"}
    path = tmp_path / "summary.json"
    write_json_atomic(data, path)
    assert json.loads(path.read_text()) == data
    write_json_atomic({"status": "running"}, path)
    assert json.loads(path.read_text()) == {"status": "running"}
    write_text_atomic("a,b\n1,2\n", tmp_path / "metrics.csv")
    assert (tmp_path / "metrics.csv").read_text() == "a,b\n1,2\n"
    with pytest.raises(TypeError):
        write_json_atomic({"tensor": torch.zeros(1)}, path)  # not JSON: the previous file stays
    assert json.loads(path.read_text()) == {"status": "running"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv", "summary.json"]
