"""Trust boundaries of a run's files and folder: checkpoints that cannot run code, one writer per output folder,
signals to the whole process group, interrupts during set-up, one training per process.

Real processes, real signals and real files: a second ``multimix train`` competes for the folder of a paused
first one (fault_driver.py ``pause@step:K``).
"""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from multimix.cli import main
from multimix.engine import CheckpointError, TrainConfig, Trainer, load_checkpoint
from multimix.engine.checkpoint import save_atomic
from multimix.engine.folder import FolderBusyError, FolderLock

ROOT = Path(__file__).resolve().parents[1]
DRIVER = Path(__file__).with_name("fault_driver.py")


def argv(out_dir, *extra):
    return ["train", "--num-train", "256", "--num-test", "64", "--width", "8", "--batch-size", "64", "--epochs", "2",
            "--method", "multimix", "--num-mix", "64", "--no-progress", "--out-dir", str(out_dir), *extra]


def start(fault, args, tmp_path, **popen):
    """``multimix ARGS`` with FAULT injected, in its own process group (a group signal must not reach pytest)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1",
               FAULT_PAUSED=str(tmp_path / "paused"), FAULT_GO=str(tmp_path / "go"))
    return subprocess.Popen([sys.executable, str(DRIVER), fault, *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, **popen)


def wait_for(path, *procs, seconds=120):
    """Wait until ``path`` exists; fail if every process in ``procs`` ended first."""
    deadline = time.time() + seconds
    while not Path(path).exists():
        if all(p.poll() is not None for p in procs):
            raise AssertionError(f"processes ended first ({[p.returncode for p in procs]}): "
                                 f"{[p.stderr.read() for p in procs]}")
        if time.time() > deadline:
            for p in procs:
                p.kill()
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.05)


# ------------------------------------------------------------------ checkpoints cannot run code

class Payload:
    """Pickles to a call of os.system that writes a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def poisoned_checkpoint(tmp_path, run):
    """A real run's last.pt with a code payload inside its history."""
    assert main(argv(run, "--epochs", "1")) == 0
    state = torch.load(run / "last.pt", weights_only=True)
    marker = tmp_path / "payload-ran"
    state["history"][0]["note"] = Payload(marker)
    torch.save(state, run / "last.pt")
    return marker


@pytest.mark.parametrize("command", ["eval", "resume"])
def test_a_checkpoint_with_a_code_payload_is_refused_and_never_runs(command, tmp_path, capsys):
    run = tmp_path / "run"
    marker = poisoned_checkpoint(tmp_path, run)
    capsys.readouterr()
    args = ["eval", str(run / "last.pt"), "--out-dir", str(tmp_path / "eval")] if command == "eval" else \
        argv(run, "--resume")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a safe multimix checkpoint" in err and "last.pt" in err
    assert not marker.exists(), "the payload ran"


def test_load_checkpoint_refuses_any_object_beyond_tensors_and_containers(tmp_path):
    path = tmp_path / "odd.pt"
    save_atomic({"model": {}, "epoch": 1, "extra": Path("x")}, path)  # harmless, but not a plain type
    with pytest.raises(CheckpointError, match="not a safe multimix checkpoint"):
        load_checkpoint(path)


# ------------------------------------------------------------------ one writer per output folder

def test_a_second_run_into_a_busy_folder_is_refused_and_leaves_the_first_intact(tmp_path):
    run = tmp_path / "run"
    first = start("pause@step:2", argv(run), tmp_path)
    wait_for(tmp_path / "paused", first)
    (run / ".last.pt.tmp999999").write_bytes(b"a write in progress")  # what a killed or a live writer leaves
    second = subprocess.run([sys.executable, "-m", "multimix", *argv(run)], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(ROOT / "src")), timeout=120)
    assert second.returncode == 2
    err = second.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert f"in use by a run (pid {first.pid} on host {socket.gethostname()})" in err
    assert (run / ".last.pt.tmp999999").exists(), "the refused run deleted the holder's temporary file"
    (tmp_path / "go").touch()
    assert first.wait(timeout=120) == 0, first.stderr.read()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and load_checkpoint(run / "last.pt")["epoch"] == 2
    assert not (run / ".lock").exists(), "the lock file outlived its run"


def test_two_runs_started_together_one_trains_and_the_other_is_refused(tmp_path):
    run = tmp_path / "run"
    procs = [start("pause@step:1", argv(run, "--seed", str(seed)), tmp_path) for seed in (0, 1)]
    wait_for(tmp_path / "paused", *procs)
    time.sleep(0.5)
    (tmp_path / "go").touch()
    codes = sorted(p.wait(timeout=120) for p in procs)
    assert codes == [0, 2]
    winner = [p for p in procs if p.returncode == 0][0]
    seed = 0 if winner is procs[0] else 1
    assert json.loads((run / "config.json").read_text())["seed"] == seed
    assert json.loads((run / "summary.json").read_text())["config"]["seed"] == seed
    assert load_checkpoint(run / "last.pt")["config"]["seed"] == seed


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path):
    run = tmp_path / "run"
    first = start("pause@step:6", argv(run), tmp_path)  # epoch 2 (4 steps an epoch), after epoch 1's checkpoint
    wait_for(tmp_path / "paused", first)
    first.kill()
    first.wait()
    assert (run / ".lock").exists() and f"pid {first.pid}" in (run / ".lock").read_text()
    assert main(argv(run, "--resume")) == 0
    assert load_checkpoint(run / "last.pt")["epoch"] == 2 and not (run / ".lock").exists()


def test_folder_lock_in_process(tmp_path):
    with FolderLock(tmp_path / "out", "sweep") as held:
        assert held.held
        with pytest.raises(FolderBusyError, match=f"in use by a sweep \\(pid {os.getpid()} on host"):
            FolderLock(tmp_path / "out", "run").acquire()
    with FolderLock(tmp_path / "out"):  # released: free again
        pass


def test_a_bench_into_a_busy_folder_is_refused_in_one_line(tmp_path, capsys):
    with FolderLock(tmp_path / "bench", "bench"):
        assert main(["bench", "--out-dir", str(tmp_path / "bench"), "--seeds", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"in use by a bench (pid {os.getpid()}" in err


# ------------------------------------------------------------------ signals and interrupts

def test_sigterm_to_the_process_group_with_loader_workers_ends_like_sigterm(tmp_path, image_folder):
    """``timeout``/``scancel`` signal every process of the group; the data-loader workers must not die first."""
    run = tmp_path / "run"
    args = ["train", "--dataset", "imagefolder", "--data-dir", str(image_folder), "--image-size", "16", "--model",
            "preact_resnet_small", "--width", "4", "--batch-size", "6", "--epochs", "2", "--workers", "2",
            "--method", "mixup", "--no-progress", "--out-dir", str(run)]
    proc = start("pause@step:3", args, tmp_path)
    wait_for(tmp_path / "paused", proc)
    os.killpg(proc.pid, signal.SIGTERM)  # the main process and both workers
    time.sleep(1.0)  # let a worker that does not ignore it die
    (tmp_path / "go").touch()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, out + err
    assert "Traceback" not in err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["signal"] == "SIGTERM"
    assert load_checkpoint(run / "interrupted.pt")["interrupted"] is True


def test_sigint_during_set_up_is_not_dropped(tmp_path):
    run = tmp_path / "run"
    proc = start("SIGINT@setup:1", argv(run), tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err and err.strip() == "multimix train: stopped by SIGINT"
    assert not (run / "last.pt").exists() and not (run / ".lock").exists()


def test_an_interrupt_in_the_first_epoch_does_not_advise_resume(tmp_path):
    run = tmp_path / "run"
    proc = start("SIGINT@step:2", argv(run), tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "nothing to resume" in out and "--resume" not in out
    assert main(argv(run)) == 0  # and the same command starts over


# ------------------------------------------------------------------ one training per process

def test_a_second_concurrent_trainer_in_the_process_is_refused(tiny, tmp_path):
    first = Trainer(tiny(tmp_path / "a"))
    training, go = threading.Event(), threading.Event()
    real = first.train_epoch

    def train_epoch(epoch):  # hold the first run inside its training
        training.set()
        go.wait(60)
        return real(epoch)

    first.train_epoch = train_epoch
    results = []
    thread = threading.Thread(target=lambda: results.append(first.run()))
    thread.start()
    assert training.wait(60)
    with pytest.raises(RuntimeError, match="one run at a time"):
        Trainer(tiny(tmp_path / "b")).prepare()
    go.set()
    thread.join()
    assert results[0]["status"] == "completed"
    assert Trainer(tiny(tmp_path / "b")).run()["status"] == "completed"  # free again once the first ended


def test_a_prepared_trainer_does_not_block_the_next_one(tiny, tmp_path):
    Trainer(tiny(tmp_path / "a")).prepare()  # prepared, never run (inspected, say)
    assert Trainer(tiny(tmp_path / "b")).run()["status"] == "completed"


def test_batch_norm_with_one_example_per_batch_is_refused_before_training(tiny, tmp_path):
    with pytest.raises(ValueError, match="batch_size 1: model 'cnn1d' has batch normalisation"):
        Trainer(tiny(tmp_path, batch_size=1)).prepare()
    assert not (tmp_path / "run" / "last.pt").exists() and not (tmp_path / "run" / ".lock").exists()


# ------------------------------------------------------------------ every kind of run's checkpoint is safe to load

def write_fsdd(root):
    """``root/recordings``: 2 speakers × 2 digits × 4 takes of 8 kHz tones whose pitch is the digit."""
    from scipy.io import wavfile

    folder = root / "recordings"
    folder.mkdir(parents=True)
    for s, speaker in enumerate(("alice", "bob")):
        for digit in (0, 1):
            for take in range(4):
                t = np.arange(2400 + 400 * take) / 8000
                tone = 0.5 * np.sin(2 * np.pi * (300 + 200 * digit + 20 * s) * t)
                wavfile.write(folder / f"{digit}_{speaker}_{take}.wav", 8000, (tone * 30000).astype(np.int16))
    return root


def kind_config(kind, tmp_path, image_folder):
    base = dict(epochs=1, progress=False, out_dir=str(tmp_path / "run"), device="cpu")
    mnist = dict(dataset="mnist1d", num_train=128, num_test=64, width=8, batch_size=32)
    if kind == "plain":
        return TrainConfig(**base, **mnist, method="multimix", method_args={"n": 32})
    if kind == "distill":
        return TrainConfig(**base, **mnist, method="multimix", distill={"warmup_steps": 1})
    if kind == "best_val":
        return TrainConfig(**base, **mnist, val_size=32, select="best_val")
    if kind == "images":
        return TrainConfig(**base, dataset="imagefolder", data_dir=str(image_folder), image_size=16,
                           model="preact_resnet_small", width=4, batch_size=6, method="cutmix")
    if kind == "adult":
        from test_tabular import write_adult
        return TrainConfig(**base, dataset="adult", data_dir=str(write_adult(tmp_path / "adult")), model="mlp",
                           batch_size=4, method="multimix")
    if kind == "audio":
        return TrainConfig(**base, dataset="fsdd:loso=bob", data_dir=str(write_fsdd(tmp_path / "fsdd")),
                           model="speech_cnn", width=4, batch_size=4, method="dense_multimix", method_args={"n": 8})
    if kind == "graph":
        from test_graph import write_planetoid
        write_planetoid(tmp_path / "planetoid" / "Cora" / "raw")
        return TrainConfig(**base, dataset="planetoid:Cora", data_dir=str(tmp_path / "planetoid"), model="gcn",
                           batch_size=None, optimizer="adam", lr=0.01, val_size=50, select="best_val",
                           distill={"warmup_steps": 1}, unlabelled_batch=16)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["plain", "distill", "best_val", "images", "adult", "audio", "graph"])
def test_every_kind_of_run_writes_a_checkpoint_that_loads_safely_and_resumes(kind, tmp_path, image_folder,
                                                                              monkeypatch):
    monkeypatch.setenv("MULTIMIX_CACHE", str(tmp_path / "cache"))
    config = kind_config(kind, tmp_path, image_folder)
    assert Trainer(config).run()["status"] == "completed"
    state = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=True)  # raises if not plain
    assert state["epoch"] == 1
    resumed = Trainer(dataclasses.replace(config, epochs=2, resume=True)).run()
    assert resumed["status"] == "completed" and resumed["epochs_completed"] == 2


def test_resume_with_other_data_is_refused(tmp_path, capsys):
    """The same settings over other files (another --data-dir, or a changed file) must not continue the run."""
    from test_graph import write_planetoid

    for seed, root in enumerate(("a", "b")):
        write_planetoid(tmp_path / root / "Cora" / "raw", seed=seed)
    args = ["train", "--config", "cora_gcn", "--val-size", "50", "--epochs", "2", "--no-progress", "--out-dir",
            str(tmp_path / "run")]
    assert main([*args, "--data-dir", str(tmp_path / "a"), "--stop-after-epochs", "1"]) == 0
    capsys.readouterr()
    assert main([*args, "--data-dir", str(tmp_path / "b"), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "was trained on other data (fingerprint" in err
    assert main([*args, "--data-dir", str(tmp_path / "a"), "--resume"]) == 0


# ------------------------------------------------------------------ files stay valid; messages say what is true

def test_non_finite_numbers_are_written_as_null_and_every_file_stays_valid_json(tmp_path):
    from multimix.engine.checkpoint import write_json_atomic
    from multimix.engine.logging import MetricsLogger

    write_json_atomic({"test_loss": float("nan"), "rows": [float("inf"), 1.5]}, tmp_path / "summary.json")
    assert json.loads((tmp_path / "summary.json").read_text(), parse_constant=pytest.fail) == \
        {"test_loss": None, "rows": [None, 1.5]}
    logger = MetricsLogger(tmp_path, enabled=True)
    logger.write([{"epoch": 1, "test_loss": float("nan")}])
    logger.close()
    line = (tmp_path / "metrics.jsonl").read_text().strip()
    assert json.loads(line, parse_constant=pytest.fail) == {"epoch": 1, "test_loss": None}


def test_a_non_finite_loss_in_the_first_epoch_does_not_claim_a_checkpoint(tiny, tmp_path, monkeypatch):
    import multimix.engine.trainer as trainer_module
    from multimix.engine import NonFiniteLossError

    real = trainer_module.create_method

    def poisoned(*args, **kwargs):
        method = real(*args, **kwargs)
        loss = method.__call__
        method.__class__ = type("Poisoned", (type(method),), {"__call__": lambda self, *a: loss(*a) * float("nan")})
        return method

    monkeypatch.setattr(trainer_module, "create_method", poisoned)
    with pytest.raises(NonFiniteLossError, match="at epoch 1, step 1; stopped. No checkpoint was written."):
        Trainer(tiny(tmp_path)).run()
