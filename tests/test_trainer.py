"""The trainer: tiny end-to-end runs of every method, learning, resume, failures and checkpoints."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import multimix.engine.trainer as trainer_module
from multimix.cli import main
from multimix.engine import CheckpointError, NonFiniteLossError, Trainer, TrainConfig, load_checkpoint, train
from multimix.experiments.bench import DEFAULT_ENTRIES


@pytest.mark.parametrize("entry", DEFAULT_ENTRIES, ids=[e.label for e in DEFAULT_ENTRIES])
def test_every_method_end_to_end_on_mnist1d(tmp_path, tiny, entry):
    args = dict(entry.method_args, n=64) if "n" in entry.method_args else dict(entry.method_args)
    summary = train(tiny(tmp_path, method=entry.method, method_args=args, distill=entry.distill, epochs=2))
    assert summary["status"] == "completed" and summary["epochs_completed"] == 2
    assert 0 <= summary["final"]["test_accuracy"] <= 100
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("entry", DEFAULT_ENTRIES, ids=[e.label for e in DEFAULT_ENTRIES])
def test_every_method_end_to_end_on_image_folder(tmp_path, tiny, image_folder, entry):
    args = dict(entry.method_args, n=32) if "n" in entry.method_args else dict(entry.method_args)
    config = tiny(tmp_path, dataset="imagefolder", data_dir=str(image_folder), image_size=16,
                  model="preact_resnet_small", width=4, batch_size=12, num_train=None, num_test=None, val_size=6,
                  method=entry.method, method_args=args, distill=entry.distill)
    summary = train(config)
    assert summary["status"] == "completed"
    assert {"val_accuracy", "test_accuracy"} <= set(summary["final"])


def test_learning_happens(tmp_path, tiny):
    """A short ERM run on MNIST-1D beats chance (10%) by a wide margin."""
    summary = train(tiny(tmp_path, num_train=2000, num_test=500, width=16, epochs=4))
    assert summary["final"]["test_accuracy"] > 40


def test_resume_is_bit_identical(tmp_path, tiny):
    common = dict(method="multimix", method_args={"n": 64, "alpha": 0.5},
                  distill={"momentum": 0.9, "temperature": 1.0, "weight": 0.5}, epochs=3, schedule="cosine")
    train(tiny(tmp_path, out_dir=str(tmp_path / "full"), **common))
    first = train(tiny(tmp_path, out_dir=str(tmp_path / "split"), stop_after_epochs=1, **common))
    assert first["status"] == "stopped"
    resumed = train(tiny(tmp_path, out_dir=str(tmp_path / "split"), resume=True, **common))
    assert resumed["status"] == "completed" and resumed["epochs_completed"] == 3
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "split" / "last.pt")
    for key, sa, sb in (("model", a["model"], b["model"]), ("method", a["method"], b["method"])):
        for name, value in sa.items():
            assert torch.equal(value, sb[name]) if torch.is_tensor(value) else value == sb[name], \
                f"{key}.{name} differs after resume"
    assert any(name.startswith("distill.teacher.") for name in a["method"])  # the teacher is the method's state
    assert a["method"]["distill._extra_state"]["updates"] == b["method"]["distill._extra_state"]["updates"] == 9
    assert a["history"][-1]["test_accuracy"] == b["history"][-1]["test_accuracy"]


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path, tiny, monkeypatch):
    config = tiny(tmp_path, epochs=3)
    train(dataclasses.replace(config, stop_after_epochs=1))
    good = load_checkpoint(tmp_path / "run" / "last.pt")
    real = trainer_module.create_method

    class Poisoned:  # the real method, with a loss that turns NaN
        def __init__(self, method):
            self.method = method

        def __getattr__(self, name):
            return getattr(self.method, name)

        def __call__(self, model, x, y):
            return self.method(model, x, y) * float("nan")

    def poisoned(*args, **kwargs):
        return Poisoned(real(*args, **kwargs))

    monkeypatch.setattr(trainer_module, "create_method", poisoned)
    with pytest.raises(NonFiniteLossError, match="nan"):
        train(dataclasses.replace(config, resume=True))
    kept = load_checkpoint(tmp_path / "run" / "last.pt")
    assert kept["epoch"] == 1
    assert all(torch.equal(v, kept["model"][k]) for k, v in good["model"].items())


def test_ctrl_c_saves_and_exits_cleanly(tmp_path):
    out = tmp_path / "interrupted"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    proc = subprocess.Popen([sys.executable, "-m", "multimix", "train", "--num-train", "4000", "--num-test", "128",
                             "--width", "8", "--epochs", "200", "--batch-size", "32", "--out-dir", str(out)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    assert (out / "last.pt").exists(), proc.communicate(timeout=5)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "--resume" in stdout and "Traceback" not in stderr
    assert load_checkpoint(out / "last.pt")["epoch"] >= 1
    assert (out / "interrupted.pt").exists()
    assert json.loads((out / "summary.json").read_text())["status"] == "interrupted"


def test_corrupted_and_mismatched_checkpoints(tmp_path, tiny, capsys):
    out = tmp_path / "run"
    train(tiny(tmp_path, epochs=2, stop_after_epochs=1))
    resume = ["train", "--num-train", "192", "--num-test", "128", "--epochs", "2", "--batch-size", "64",
              "--out-dir", str(out), "--resume", "--no-progress"]
    # a run with a different width is another run: refused before any weights are loaded, naming the difference
    assert main(resume + ["--width", "16"]) == 2
    err = capsys.readouterr().err
    assert "from another run" in err and "width: 8 → 16" in err and "Traceback" not in err
    # weights that do not fit this run's model (same recorded settings) cannot be loaded
    state = load_checkpoint(out / "last.pt")
    wider = train(tiny(tmp_path, width=16, out_dir=str(tmp_path / "wide")))
    assert wider["status"] == "completed"
    state["model"] = load_checkpoint(tmp_path / "wide" / "last.pt")["model"]
    torch.save(state, out / "last.pt")
    assert main(resume + ["--width", "8"]) == 2
    assert "does not match this run's model" in capsys.readouterr().err
    (out / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupted"):
        load_checkpoint(out / "last.pt")
    assert main(resume + ["--width", "8"]) == 2
    assert "corrupted" in capsys.readouterr().err


def test_existing_run_is_not_overwritten(tmp_path, tiny, capsys):
    train(tiny(tmp_path))
    assert main(["train", "--out-dir", str(tmp_path / "run"), "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_vit_at_32_pixels_with_dense_multimix(tmp_path, image_folder):
    """timm's ViTs are built for the data's image size: patch tokens become Dense MultiMix's positions."""
    pytest.importorskip("timm")
    config = TrainConfig(dataset="imagefolder", data_dir=str(image_folder), image_size=32,
                         model="timm:vit_tiny_patch16_224", method="dense_multimix", method_args={"n": 16},
                         epochs=1, batch_size=12, lr=0.01, progress=False, out_dir=str(tmp_path / "vit"))
    trainer = Trainer(config)
    summary = trainer.run()
    assert summary["status"] == "completed" and 0 <= summary["final"]["test_accuracy"] <= 100
    features = trainer.model.encode(torch.zeros(2, 3, 32, 32))
    assert features.shape == (2, 192, 5)  # 2×2 patches of 16 px and the class token, as (m, d, positions)
