"""Fault injection: signals at several points, SIGKILL mid-write, a full disk, a corrupted checkpoint.

Each fault runs the real command line (in a subprocess where a signal is involved, see fault_driver.py) and
asserts the exit status, that ``last.pt`` loads, that ``--resume`` reaches exactly the parameters of an
uninterrupted run, and that no temporary file or duplicate metric row is left.
"""

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import multimix.engine.checkpoint as checkpoint_module
from multimix.cli import main
from multimix.engine import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).with_name("fault_driver.py")
EPOCHS = 3


def argv(out_dir, *extra):
    return ["train", "--num-train", "512", "--num-test", "128", "--width", "8", "--batch-size", "64",
            "--epochs", str(EPOCHS), "--method", "multimix", "--num-mix", "64", "--no-progress",
            "--out-dir", str(out_dir), *extra]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The parameters of an uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    assert main(argv(out)) == 0
    return load_checkpoint(out / "last.pt")["model"]


def run_with_fault(fault, out_dir):
    # The same number of threads as this process: resuming here must reproduce the subprocess's numbers.
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS=str(torch.get_num_threads()))
    return subprocess.run([sys.executable, str(DRIVER), fault, *argv(out_dir)], env=env, capture_output=True,
                          text=True, timeout=300)


def assert_consistent(out_dir):
    """No temporary file; one metrics row per epoch of last.pt; a summary that describes last.pt."""
    assert not [p.name for p in out_dir.iterdir() if p.name.startswith(".")], "a temporary file was left"
    state = load_checkpoint(out_dir / "last.pt")
    rows = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(1, state["epoch"] + 1))
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["epochs_completed"] == state["epoch"]
    return state, summary


def assert_resumes_to(reference, out_dir):
    assert main(argv(out_dir, "--resume")) == 0
    state, summary = assert_consistent(out_dir)
    assert summary["status"] == "completed" and state["epoch"] == EPOCHS
    assert not (out_dir / "interrupted.pt").exists()  # stale once the run went on
    for key, value in reference.items():
        assert torch.equal(state["model"][key], value), f"{key} differs from the uninterrupted run"


SIGNAL_FAULTS = [
    ("SIGINT@step:10", 130, 1),          # mid-epoch 2 (8 steps per epoch)
    ("SIGTERM@step:10", 143, 1),
    ("SIGINT@save:2", 130, 2),           # half-way through writing epoch 2's checkpoint
    ("SIGTERM@save:2", 143, 2),
    ("SIGTERM@after-save:1", 143, 1),    # right after epoch 1's checkpoint
    ("ignored-SIGINT@step:10", 130, 1),  # started with SIGINT ignored (a job launched with &)
]


@pytest.mark.parametrize("fault,status,saved_epoch", SIGNAL_FAULTS, ids=[f[0] for f in SIGNAL_FAULTS])
def test_signal_saves_stops_and_resumes_exactly(fault, status, saved_epoch, reference, tmp_path):
    out = tmp_path / "run"
    proc = run_with_fault(fault, out)
    assert proc.returncode == status, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    state, summary = assert_consistent(out)
    assert state["epoch"] == saved_epoch
    assert summary["status"] == "interrupted" and summary["signal"] == fault.split("@")[0].replace("ignored-", "")
    assert load_checkpoint(out / "interrupted.pt")["interrupted"] is True
    assert_resumes_to(reference, out)


def test_sigkill_mid_write_keeps_the_previous_checkpoint(reference, tmp_path):
    out = tmp_path / "run"
    proc = run_with_fault("SIGKILL@save:2", out)
    assert proc.returncode == -9
    assert load_checkpoint(out / "last.pt")["epoch"] == 1  # epoch 2's write never replaced it
    assert [p for p in out.iterdir() if p.name.startswith(".")], "expected the killed write's temporary file"
    assert_resumes_to(reference, out)  # the next run removes the orphan and continues exactly


def test_full_disk_fails_in_one_line_and_keeps_the_last_good_state(reference, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    real_save, calls = torch.save, {"n": 0}

    def save(obj, f):
        if "last.pt" in str(getattr(f, "name", "")):
            calls["n"] += 1
            if calls["n"] == 2:
                f.write(b"partial")
                raise OSError(errno.ENOSPC, "No space left on device", str(f.name))
        return real_save(obj, f)

    monkeypatch.setattr(checkpoint_module.torch, "save", save)
    assert main(argv(out)) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and len(err.strip().splitlines()) == 1
    state, summary = assert_consistent(out)
    assert state["epoch"] == 1 and summary["status"] == "failed" and "No space left" in summary["error"]
    monkeypatch.undo()
    assert_resumes_to(reference, out)


def test_corrupted_checkpoint_is_refused_in_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(argv(out, "--epochs", "1")) == 0
    (out / "last.pt").write_bytes((out / "last.pt").read_bytes()[:100])  # truncated
    assert main(argv(out, "--resume")) == 2
    err = capsys.readouterr().err
    assert "corrupted" in err and "last.pt" in err and len(err.strip().splitlines()) == 1
